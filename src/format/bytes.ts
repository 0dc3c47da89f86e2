/** Little-endian helpers with bounds made explicit; every format codec goes through these. */
import { DadiError } from "../errors.js";

export function readU64(buf: Buffer, offset: number, what: string): number {
	const v = buf.readBigUInt64LE(offset);
	if (v > BigInt(Number.MAX_SAFE_INTEGER))
		throw new DadiError("FORMAT_INVALID", `${what}: value ${v} is too large`);
	return Number(v);
}

export function writeU64(buf: Buffer, offset: number, value: number): void {
	buf.writeBigUInt64LE(BigInt(value), offset);
}

export function isZero(buf: Buffer, start = 0, end = buf.length): boolean {
	for (let i = start; i < end; i++) if (buf[i] !== 0) return false;
	return true;
}

const ZEROES = Buffer.alloc(1 << 20);

/** True when the whole buffer is zero; uses memcmp against a shared zero page. */
export function isAllZero(buf: Buffer): boolean {
	let off = 0;
	while (off < buf.length) {
		const n = Math.min(ZEROES.length, buf.length - off);
		if (!buf.subarray(off, off + n).equals(ZEROES.subarray(0, n))) return false;
		off += n;
	}
	return true;
}
