/**
 * The KBS report_data digest (src/kbs/report-data.ts) as a TEE's 64-byte REPORT_DATA field: the
 * digest at the start, zero-padded — what Trustee's attesters send for SEV-SNP and TDX, and what
 * `reportDataMatches` checks on the broker. Pure.
 */
import { DadiError } from "../errors.js";

export const REPORT_DATA_SIZE = 64;

export function reportDataField(
	digest: Buffer,
	size: number = REPORT_DATA_SIZE,
): Buffer {
	if (digest.length === 0 || digest.length > size)
		throw new DadiError(
			"INTERNAL",
			`report data: a ${digest.length}-byte digest does not fit a ${size}-byte field`,
		);
	const field = Buffer.alloc(size);
	digest.copy(field);
	return field;
}
