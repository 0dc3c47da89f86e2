/** Guest side: producing evidence that binds a report_data digest. I/O at the edge (device probing). */
import { DadiError } from "../errors.js";
import type { TeeType } from "./claims.js";
import { detectTee } from "./detect.js";
import { sampleEvidence } from "./sample.js";

export interface Attester {
	readonly tee: TeeType;
	/** Evidence whose report_data is `reportData` (and whose init-data binding is `initData`). */
	evidence(reportData: Buffer, initData?: Buffer): Promise<unknown>;
}

/** DEVELOPMENT ONLY: evidence anyone can forge; brokers accept it only with --insecure-dev. */
export const sampleAttester: Attester = {
	tee: "sample",
	evidence: async (reportData, initData) =>
		sampleEvidence(reportData, initData),
};

export type AttesterKind = "sample" | "auto";

export async function chooseAttester(kind: string): Promise<Attester> {
	if (kind === "sample") return sampleAttester;
	if (kind !== "auto")
		throw new DadiError(
			"USAGE",
			`--attester "${kind}": expected sample or auto`,
		);
	const found = await detectTee();
	if (!found)
		throw new DadiError(
			"USAGE",
			"no TEE found in this machine (no /dev/sev-guest or /dev/tdx_guest); for development, use --attester sample against a broker started with --insecure-dev",
		);
	throw new DadiError(
		"FORMAT_UNSUPPORTED",
		`this guest runs in ${found.tee} (${found.via}), but this build cannot produce ${found.tee} evidence yet (the SNP/TDX attesters come with the real verifiers); use --attester sample against a development broker`,
	);
}
