/**
 * The 512-byte tar header block and PAX extended-header records: field layout, numbers (octal and
 * GNU base-256), checksums. Pure functions over bytes; every failure is a DadiError
 * (INPUT_INVALID) naming the entry.
 */
import { DadiError } from "../errors.js";
import { displayName, quote } from "./tar-path.js";

export const BLOCK = 512;
const ZERO_BLOCK = Buffer.alloc(BLOCK);

/** Bytes of padding after `size` bytes of content, up to the next block boundary. */
export function paddingOf(size: number): number {
	const r = size % BLOCK;
	return r === 0 ? 0 : BLOCK - r;
}

export function isZeroBlock(block: Buffer): boolean {
	return block.equals(ZERO_BLOCK);
}

/** The bytes of a NUL-terminated (or full-width) string field. */
function field(block: Buffer, start: number, length: number): Buffer {
	const f = block.subarray(start, start + length);
	const nul = f.indexOf(0);
	return nul < 0 ? f : f.subarray(0, nul);
}

/**
 * A numeric field: octal digits, optionally surrounded by spaces and NULs (everything after the
 * first NUL that follows the digits is ignored; empty is 0), or GNU base-256 when the first
 * byte's high bit is set (two's complement, so negative numbers are possible). Returns null if
 * the field is neither, and ±Infinity for base-256 values beyond the safe integer range.
 */
export function parseNumeric(f: Buffer): number | null {
	if (f.length === 0) return 0;
	const first = f[0] as number;
	if (first & 0x80) {
		const negative = (first & 0x40) !== 0;
		const inv = negative ? 0xff : 0;
		let x = 0n;
		for (let i = 0; i < f.length; i++) {
			let c = (f[i] as number) ^ inv;
			if (i === 0) c &= 0x7f;
			x = (x << 8n) | BigInt(c);
		}
		// -a-1 == ~a: the inverted bytes hold a; the value is -(a+1).
		if (negative) x = -x - 1n;
		if (x > BigInt(Number.MAX_SAFE_INTEGER)) return Number.POSITIVE_INFINITY;
		if (x < BigInt(-Number.MAX_SAFE_INTEGER)) return Number.NEGATIVE_INFINITY;
		return Number(x);
	}
	return parseOctal(f);
}

function parseOctal(f: Buffer): number | null {
	let i = 0;
	while (i < f.length && (f[i] === 0x20 || f[i] === 0)) i++;
	let v = 0;
	const digits = i;
	while (i < f.length) {
		const c = f[i] as number;
		if (c < 0x30 || c > 0x37) break;
		v = v * 8 + (c - 0x30);
		i++;
	}
	// Only spaces may follow the digits, up to a NUL (after which anything goes) or the end.
	for (; i < f.length; i++) {
		const c = f[i] as number;
		if (c === 0) break;
		if (c !== 0x20) return null;
	}
	return i === digits ? 0 : v;
}

/**
 * Whether the stored checksum (an octal number) equals the sum of the header's bytes with the
 * checksum field counted as spaces, summed as unsigned bytes (POSIX) or as signed ones (some
 * historic writers).
 */
export function checksumOk(block: Buffer): boolean {
	const f = block.subarray(148, 156);
	if ((f[0] as number) & 0x80) return false;
	const stored = parseOctal(f);
	if (stored === null) return false;
	let unsigned = 0;
	let signed = 0;
	for (let i = 0; i < BLOCK; i++) {
		const c = i >= 148 && i < 156 ? 0x20 : (block[i] as number);
		unsigned += c;
		signed += c >= 0x80 ? c - 0x100 : c;
	}
	return stored === unsigned || stored === signed;
}

export type HeaderFormat = "v7" | "ustar" | "gnu" | "star";

/** A header block's fields, before PAX and GNU long-name overrides. Names are raw bytes. */
export interface RawHeader {
	format: HeaderFormat;
	typeflag: number;
	/** The name (ustar: prefix "/" name), bytes up to the first NUL. */
	name: Buffer;
	linkname: Buffer;
	mode: number;
	uid: number;
	gid: number;
	size: number;
	mtime: number;
	/** Only parsed for character and block devices (0 otherwise). */
	devmajor: number;
	devminor: number;
}

const MAX_ID = 0xffffffff;

/** Decodes a non-zero header block read at byte `offset` of the archive. */
export function decodeHeader(block: Buffer, offset: number): RawHeader {
	const magic = block.toString("latin1", 257, 263);
	const version = block.toString("latin1", 263, 265);
	let format: HeaderFormat = "v7";
	if (magic === "ustar " && version === " \0") format = "gnu";
	else if (magic === "ustar\0")
		format = block.toString("latin1", 508, 512) === "tar\0" ? "star" : "ustar";

	let name = field(block, 0, 100);
	if (format === "ustar" || format === "star") {
		const prefix = field(block, 345, format === "star" ? 131 : 155);
		if (prefix.length > 0)
			name = Buffer.concat([prefix, Buffer.from("/"), name]);
	}
	const shown = displayName(name);
	const where = `tar entry ${quote(shown)} (header at byte ${offset})`;
	if (!checksumOk(block))
		throw new DadiError(
			"INPUT_INVALID",
			`${where}: header checksum mismatch (a corrupt archive, or not a tar archive)`,
		);

	const typeflag = block[156] as number;
	const num = (
		label: string,
		start: number,
		length: number,
		min: number,
		max: number,
	): number => {
		const v = parseNumeric(block.subarray(start, start + length));
		if (v === null)
			throw new DadiError(
				"INPUT_INVALID",
				`${where}: the ${label} field is not a number`,
			);
		if (v < min || v > max)
			throw new DadiError(
				"INPUT_INVALID",
				`${where}: ${label} ${Number.isFinite(v) ? v : "beyond 2^53"} is out of range`,
			);
		return v;
	};
	const isDevice = typeflag === 0x33 || typeflag === 0x34;
	const hasDev = isDevice && format !== "v7";
	return {
		format,
		typeflag,
		name,
		linkname: field(block, 157, 100),
		mode: num("mode", 100, 8, 0, Number.MAX_SAFE_INTEGER),
		uid: num("uid", 108, 8, 0, MAX_ID),
		gid: num("gid", 116, 8, 0, MAX_ID),
		size: num("size", 124, 12, 0, Number.MAX_SAFE_INTEGER),
		mtime: num(
			"mtime",
			136,
			12,
			-Number.MAX_SAFE_INTEGER,
			Number.MAX_SAFE_INTEGER,
		),
		devmajor: hasDev ? num("devmajor", 329, 8, 0, MAX_ID) : 0,
		devminor: hasDev ? num("devminor", 337, 8, 0, MAX_ID) : 0,
	};
}

/**
 * The records of a PAX extended header body: `<length> <key>=<value>\n`, where length is the
 * decimal byte count of the whole record. Values are raw bytes (xattr values are binary). Trailing
 * NUL padding is tolerated. Throws `malformed(detail)` on anything else.
 */
export function parsePaxRecords(
	body: Buffer,
	malformed: (detail: string) => DadiError,
): Array<[string, Buffer]> {
	const records: Array<[string, Buffer]> = [];
	let pos = 0;
	while (pos < body.length) {
		if (body[pos] === 0) {
			for (let i = pos; i < body.length; i++)
				if (body[i] !== 0)
					throw malformed(`data after NUL padding at byte ${i} of its body`);
			break;
		}
		let i = pos;
		let length = 0;
		while (i < body.length && i - pos < 16) {
			const c = body[i] as number;
			if (c < 0x30 || c > 0x39) break;
			length = length * 10 + (c - 0x30);
			i++;
		}
		if (i === pos || body[i] !== 0x20)
			throw malformed(`record at byte ${pos} of its body has no length`);
		const end = pos + length;
		if (length <= i + 1 - pos || end > body.length)
			throw malformed(
				`record at byte ${pos} of its body claims ${length} bytes, which do not fit`,
			);
		if (body[end - 1] !== 0x0a)
			throw malformed(
				`record at byte ${pos} of its body does not end with a newline`,
			);
		const rec = body.subarray(i + 1, end - 1);
		const eq = rec.indexOf(0x3d);
		if (eq <= 0)
			throw malformed(`record at byte ${pos} of its body has no "key="`);
		const keyBytes = rec.subarray(0, eq);
		if (keyBytes.includes(0))
			throw malformed(`record at byte ${pos} of its body has a NUL in its key`);
		records.push([keyBytes.toString("utf8"), rec.subarray(eq + 1)]);
		pos = end;
	}
	return records;
}
