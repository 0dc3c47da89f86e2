/**
 * Which TEE a guest runs in, for `--attester auto`. I/O edge. In order:
 *   1. configfs-tsm (Linux ≥ 6.7): a report directory's provider, sev_guest → snp, tdx_guest → tdx;
 *   2. /dev/sev-guest → snp; /dev/tdx_guest (or /dev/tdx-guest) → tdx;
 *   3. a vTPM holding Azure's HCL report (NV index 0x01400001) → az-snp-vtpm or az-tdx-vtpm, by the
 *      report's type (Azure confidential VMs behind a paravisor have no guest device of their own).
 */
import { access } from "node:fs/promises";
import { TSM_REPORT_ROOT, tsmProvider } from "./tsm-report.js";

export type AttesterTee = "snp" | "tdx" | "az-snp-vtpm" | "az-tdx-vtpm";

export interface DetectedTee {
	tee: AttesterTee;
	/** How it was found: "configfs-tsm", a device path, or "vtpm". */
	via: string;
}

export interface DetectOptions {
	tsmRoot?: string;
	/** Device nodes to probe (default /dev/sev-guest, /dev/tdx_guest, /dev/tdx-guest). */
	devices?: { tee: "snp" | "tdx"; path: string }[];
	/** Probe for an Azure vTPM; undefined when there is none. */
	azure?: () => Promise<"az-snp-vtpm" | "az-tdx-vtpm" | undefined>;
}

export const GUEST_DEVICES: { tee: "snp" | "tdx"; path: string }[] = [
	{ tee: "snp", path: "/dev/sev-guest" },
	{ tee: "tdx", path: "/dev/tdx_guest" },
	{ tee: "tdx", path: "/dev/tdx-guest" },
];

export async function detectTee(
	o: DetectOptions = {},
): Promise<DetectedTee | undefined> {
	try {
		const p = await tsmProvider(o.tsmRoot ?? TSM_REPORT_ROOT, 1000);
		if (p)
			return { tee: p === "sev_guest" ? "snp" : "tdx", via: "configfs-tsm" };
	} catch {
		// configfs-tsm present but unusable (unknown provider, no permission): probe on
	}
	for (const d of o.devices ?? GUEST_DEVICES) {
		try {
			await access(d.path);
			return { tee: d.tee, via: d.path };
		} catch {
			// not this one
		}
	}
	const az = await o.azure?.().catch(() => undefined);
	if (az) return { tee: az, via: "vtpm" };
	return undefined;
}
