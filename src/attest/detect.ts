/** Which TEE a guest runs in, from the device nodes its kernel exposes. I/O edge. */
import { access } from "node:fs/promises";

export interface DetectedTee {
	tee: "snp" | "tdx";
	/** The device or configfs path that revealed it. */
	via: string;
}

const PROBES: DetectedTee[] = [
	{ tee: "snp", via: "/dev/sev-guest" },
	{ tee: "tdx", via: "/dev/tdx_guest" },
	{ tee: "tdx", via: "/dev/tdx-guest" },
];

export async function detectTee(): Promise<DetectedTee | undefined> {
	for (const p of PROBES) {
		try {
			await access(p.via);
			return p;
		} catch {
			// not this one
		}
	}
	return undefined;
}
