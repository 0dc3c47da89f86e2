/** Guest side: producing evidence that binds a report_data digest, and choosing how (`--attester`). */
import { DadiError } from "../errors.js";
import {
	type AzureOptions,
	azSnpVtpmAttester,
	azTdxVtpmAttester,
	detectAzure,
} from "./az-attester.js";
import type { TeeType } from "./claims.js";
import { type AttesterTee, detectTee } from "./detect.js";
import { sampleEvidence } from "./sample.js";
import { snpDeviceAttester, snpTsmAttester } from "./snp-attester.js";
import { tdxTsmAttester } from "./tdx-attester.js";
import { TSM_REPORT_ROOT, tsmAvailable } from "./tsm-report.js";

export interface Attester {
	/** The KBS protocol's tee name sent in the auth request. */
	readonly tee: TeeType | AttesterTee;
	/** Evidence whose report_data is `reportData` (and whose init-data binding is `initData`). */
	evidence(reportData: Buffer, initData?: Buffer): Promise<unknown>;
}

/** DEVELOPMENT ONLY: evidence anyone can forge; brokers accept it only with --insecure-dev. */
export const sampleAttester: Attester = {
	tee: "sample",
	evidence: async (reportData, initData) =>
		sampleEvidence(reportData, initData),
};

export const ATTESTER_KINDS = [
	"auto",
	"snp",
	"tdx",
	"az-snp-vtpm",
	"az-tdx-vtpm",
	"sample",
] as const;
export type AttesterKind = (typeof ATTESTER_KINDS)[number];

export interface AttesterOptions {
	/** configfs-tsm's report root (default /sys/kernel/config/tsm/report; --tsm-root, DADI_TSM_ROOT). */
	tsmRoot?: string;
	/** Device nodes for auto-detection (tests). */
	devices?: { tee: "snp" | "tdx"; path: string }[];
	/** The vTPM and IMDS for the Azure attesters (default: the device, 169.254.169.254 or $DADI_AZURE_IMDS). */
	azure?: AzureOptions;
}

/** --tsm-root, else $DADI_TSM_ROOT, else the kernel's path. */
export function tsmRootFrom(flag: string | undefined): string {
	return flag || process.env.DADI_TSM_ROOT || TSM_REPORT_ROOT;
}

export async function chooseAttester(
	kind: string,
	o: AttesterOptions = {},
): Promise<Attester> {
	const root = o.tsmRoot ?? TSM_REPORT_ROOT;
	const azure: AzureOptions = {
		...(process.env.DADI_AZURE_IMDS
			? { imds: process.env.DADI_AZURE_IMDS }
			: {}),
		...o.azure,
	};
	switch (kind) {
		case "sample":
			return sampleAttester;
		case "snp":
			return (await tsmAvailable(root))
				? snpTsmAttester(root)
				: snpDeviceAttester();
		case "tdx":
			if (!(await tsmAvailable(root)))
				throw new DadiError(
					"USAGE",
					`--attester tdx needs configfs-tsm (${root}; Linux 6.7 or later); the legacy /dev/tdx_guest quote path is not supported`,
				);
			return tdxTsmAttester(root);
		case "az-snp-vtpm":
			return azSnpVtpmAttester(azure);
		case "az-tdx-vtpm":
			return azTdxVtpmAttester(azure);
		case "auto":
			break;
		default:
			throw new DadiError(
				"USAGE",
				`--attester "${kind}": expected one of ${ATTESTER_KINDS.join(", ")}`,
			);
	}
	const found = await detectTee({
		tsmRoot: root,
		devices: o.devices,
		azure: () => detectAzure(azure),
	});
	if (!found)
		throw new DadiError(
			"USAGE",
			"no TEE found in this machine (no configfs-tsm report provider, /dev/sev-guest, /dev/tdx_guest or Azure vTPM HCL report); for development, use --attester sample against a broker started with --insecure-dev",
		);
	if (found.tee === "snp")
		return found.via === "configfs-tsm"
			? snpTsmAttester(root)
			: snpDeviceAttester(found.via);
	if (found.tee === "tdx" && found.via === "configfs-tsm")
		return tdxTsmAttester(root);
	if (found.tee === "az-snp-vtpm") return azSnpVtpmAttester(azure);
	if (found.tee === "az-tdx-vtpm") return azTdxVtpmAttester(azure);
	throw new DadiError(
		"FORMAT_UNSUPPORTED",
		`this guest runs in ${found.tee} (${found.via}), but this build cannot produce evidence there: TDX quotes need configfs-tsm (Linux 6.7 or later)`,
	);
}
