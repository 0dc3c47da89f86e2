/**
 * Azure confidential VMs (SEV-SNP or TDX behind Microsoft's paravisor): evidence through the vTPM,
 * as guest-components' az-snp-vtpm / az-tdx-vtpm attesters make it (az-cvm-vtpm crate):
 *   1. write the KBS report_data digest to NV index 0x01400002; the paravisor then refreshes the
 *      HCL report (its user-data carries it) — wait `settleMs` (3 s, as az-cvm-vtpm does);
 *   2. read the HCL report from NV index 0x01400001;
 *   3. quote SHA-256 PCRs 0–23 with the AK at 0x81000003, qualifying data = the digest;
 *   4. SEV-SNP: the VCEK from IMDS; TDX: the TD quote of the HCL report's TD report from IMDS.
 * Evidence shape: az-evidence.ts.
 */
import { access } from "node:fs/promises";
import { DadiError } from "../errors.js";
import type { Attester } from "./attester.js";
import {
	azSnpVtpmEvidence,
	azTdxVtpmEvidence,
	azTpmQuote,
} from "./az-evidence.js";
import { AZURE_IMDS, azureTdQuote, azureVcek } from "./azure-imds.js";
import { type HclReportType, parseHclReport } from "./hcl-report.js";
import {
	nvRead,
	nvSize,
	nvWrite,
	type TpmOptions,
	tpmQuote,
} from "./tpm2-tools.js";

export const HCL_REPORT_NV_INDEX = 0x01400001;
export const REPORT_DATA_NV_INDEX = 0x01400002;
export const AK_HANDLE = 0x81000003;

export interface AzureOptions extends TpmOptions {
	/** IMDS base URL (default http://169.254.169.254; $DADI_AZURE_IMDS). */
	imds?: string;
	/** How long the paravisor gets to refresh the HCL report (default 3000 ms). */
	settleMs?: number;
}

async function vtpmParts(digest: Buffer, want: HclReportType, o: AzureOptions) {
	await nvWrite(REPORT_DATA_NV_INDEX, digest, o);
	await new Promise((r) => setTimeout(r, o.settleMs ?? 3000));
	const hclReport = await nvRead(HCL_REPORT_NV_INDEX, o);
	const hcl = parseHclReport(hclReport);
	if (hcl.type !== want)
		throw new DadiError(
			"USAGE",
			`this Azure CVM's HCL report is from ${hcl.type}, not ${want}`,
		);
	const quote = azTpmQuote(await tpmQuote(AK_HANDLE, digest, o), digest);
	return { hclReport, hcl, quote };
}

export function azSnpVtpmAttester(o: AzureOptions = {}): Attester {
	return {
		// The KBS protocol's name (Trustee's Tee enum); --attester calls it az-snp-vtpm.
		tee: "azsnpvtpm",
		async evidence(digest) {
			const { hclReport, quote } = await vtpmParts(digest, "snp", o);
			const vcek = await azureVcek(o.imds ?? AZURE_IMDS);
			return azSnpVtpmEvidence({ quote, hclReport, vcek });
		},
	};
}

export function azTdxVtpmAttester(o: AzureOptions = {}): Attester {
	return {
		tee: "aztdxvtpm",
		async evidence(digest) {
			const { hclReport, hcl, quote } = await vtpmParts(digest, "tdx", o);
			const tdQuote = await azureTdQuote(hcl.hwReport, o.imds ?? AZURE_IMDS);
			return azTdxVtpmEvidence({ quote, hclReport, tdQuote });
		},
	};
}

/** az-snp-vtpm / az-tdx-vtpm when a vTPM holds an HCL report; undefined otherwise. */
export async function detectAzure(
	o: AzureOptions = {},
): Promise<"az-snp-vtpm" | "az-tdx-vtpm" | undefined> {
	if (!o.tcti && !process.env.TPM2TOOLS_TCTI) {
		try {
			await access("/dev/tpmrm0");
		} catch {
			return undefined;
		}
	}
	if ((await nvSize(HCL_REPORT_NV_INDEX, o)) === undefined) return undefined;
	const hcl = parseHclReport(await nvRead(HCL_REPORT_NV_INDEX, o));
	return hcl.type === "snp" ? "az-snp-vtpm" : "az-tdx-vtpm";
}
