/**
 * Length hiding for the encrypted records of a sealed config (the original image config, the seal
 * parameters). An image config's exact length is close to a fingerprint of the image (a public
 * base image's config has its own length), so a record is padded before encryption:
 *
 *   padded = u32 LE length || bytes || zeros,  total = padme(max(4 + length, 512))
 *
 * Padmé (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and Communication with
 * PURBs", PETS 2019) rounds a length L to a multiple of 2^(⌊log2 L⌋ − ⌊log2 ⌊log2 L⌋⌋ − 1): at most
 * 12 % more bytes, and the padded length says only O(log log L) bits about L.
 */
import { DadiError } from "../errors.js";

export const MIN_PADDED = 512;

export function padme(length: number): number {
	if (!Number.isSafeInteger(length) || length < 0 || length > 2 ** 40)
		throw new RangeError("padme: length out of range");
	if (length < 2) return length;
	const e = Math.floor(Math.log2(length));
	const s = Math.floor(Math.log2(e)) + 1;
	const step = 2 ** (e - s);
	return Math.ceil(length / step) * step;
}

export function paddedLength(length: number): number {
	return padme(Math.max(4 + length, MIN_PADDED));
}

export function pad(bytes: Buffer): Buffer {
	const out = Buffer.alloc(paddedLength(bytes.length));
	out.writeUInt32LE(bytes.length, 0);
	bytes.copy(out, 4);
	return out;
}

/** The bytes inside a padded record; FORMAT_INVALID unless the padding is exactly right. */
export function unpad(padded: Buffer, what: string): Buffer {
	const bad = () =>
		new DadiError(
			"FORMAT_INVALID",
			`${what}: the record's padding is malformed`,
		);
	if (padded.length < 4) throw bad();
	const n = padded.readUInt32LE(0);
	if (n > padded.length - 4 || padded.length !== paddedLength(n)) throw bad();
	for (let i = 4 + n; i < padded.length; i++) if (padded[i] !== 0) throw bad();
	return padded.subarray(4, 4 + n);
}
