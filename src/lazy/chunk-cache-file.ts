/**
 * The file format of one disk chunk cache entry (pure). A file is named by the SHA-256 of its key
 * and holds
 *
 *     0   8  magic "DADICC\0\1"
 *     8   2  key length in bytes (u16 BE), 1..MAX_ENTRY_KEY_BYTES
 *    10   2  reserved, zero
 *    12   4  CRC-32 of bytes 8..12 and 16..end (u32 BE)
 *    16   8  payload length (u64 BE)
 *    24      key (UTF-8), then the payload
 *
 * The key is stored whole so that a file renamed onto another key's name is caught; the lengths
 * must add up to the file size, so a truncated file is caught; the CRC catches a file whose
 * length survived a crash but whose blocks did not (entries are renamed into place without
 * fsync). None of this is security: the payload is ciphertext authenticated by its reader. It
 * only turns damage into a cache miss instead of an authentication failure further up.
 */
import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";
import { MAX_CACHE_KEY } from "./chunk-cache-base.js";

export const ENTRY_MAGIC = Buffer.from("DADICC\x00\x01", "latin1");
export const ENTRY_HEADER = 24;
/** A key of MAX_CACHE_KEY UTF-16 code units is at most three UTF-8 bytes per unit. */
export const MAX_ENTRY_KEY_BYTES = MAX_CACHE_KEY * 3;

/** The entry's file name: SHA-256 of the UTF-8 key, 64 lowercase hex digits. */
export function entryName(key: string): string {
	return createHash("sha256").update(key, "utf8").digest("hex");
}

/** Size of the file holding `payloadLength` bytes under `key`: what the disk cache counts. */
export function entrySize(key: string, payloadLength: number): number {
	return ENTRY_HEADER + Buffer.byteLength(key, "utf8") + payloadLength;
}

function checksum(file: Buffer): number {
	return crc32(file.subarray(16), crc32(file.subarray(8, 12)));
}

/** The whole file for an entry (a copy of `payload`). */
export function encodeEntry(key: string, payload: Uint8Array): Buffer {
	const k = Buffer.from(key, "utf8");
	if (k.length === 0 || k.length > MAX_ENTRY_KEY_BYTES)
		throw new RangeError(`cache key of ${k.length} bytes`);
	const file = Buffer.allocUnsafe(ENTRY_HEADER + k.length + payload.length);
	ENTRY_MAGIC.copy(file, 0);
	file.writeUInt16BE(k.length, 8);
	file.writeUInt16BE(0, 10);
	file.writeBigUInt64BE(BigInt(payload.length), 16);
	k.copy(file, ENTRY_HEADER);
	file.set(payload, ENTRY_HEADER + k.length);
	file.writeUInt32BE(checksum(file), 12);
	return file;
}

/**
 * The payload of a whole entry file if it is a valid entry for `key` (a view into `file`), else
 * undefined: wrong magic or reserved bits, another key, lengths that do not add up to the file
 * size, or a checksum mismatch.
 */
export function decodeEntry(file: Buffer, key: string): Buffer | undefined {
	if (file.length < ENTRY_HEADER) return undefined;
	if (!file.subarray(0, 8).equals(ENTRY_MAGIC)) return undefined;
	const keyLength = file.readUInt16BE(8);
	if (keyLength === 0 || keyLength > MAX_ENTRY_KEY_BYTES) return undefined;
	if (file.readUInt16BE(10) !== 0) return undefined;
	const payloadLength = file.readBigUInt64BE(16);
	if (BigInt(file.length) !== BigInt(ENTRY_HEADER + keyLength) + payloadLength)
		return undefined;
	const k = Buffer.from(key, "utf8");
	if (!file.subarray(ENTRY_HEADER, ENTRY_HEADER + keyLength).equals(k))
		return undefined;
	if (file.readUInt32BE(12) !== checksum(file)) return undefined;
	return file.subarray(ENTRY_HEADER + keyLength);
}
