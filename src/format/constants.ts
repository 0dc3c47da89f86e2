/** Constants of the sealed layer format. docs/format.md is the specification. */

/**
 * The layer encoding version in every header and trailer. Format v2 of the image (its manifest and
 * config) kept the layer encoding of v1, so layers still say 1 (docs/format.md §9).
 */
export const LAYER_VERSION = 1;

export const HEADER_SIZE = 64;
export const TRAILER_SIZE = 64;
export const EXTENT_SIZE = 24;
export const TAG_SIZE = 16;
/** The index is sealed with a synthetic nonce stored in front of it (crypto/siv.ts). */
export const INDEX_NONCE_SIZE = 12;
/** The index length field is 32 bits. */
export const MAX_EXTENTS = Math.floor((2 ** 32 - 1 - 12 - 16) / 24);
export const LAYER_ID_SIZE = 32;

/** "DADISEAL" */
export const HEADER_MAGIC = Buffer.from("DADISEAL", "latin1");
/** "DADITRLR" */
export const TRAILER_MAGIC = Buffer.from("DADITRLR", "latin1");

export const MIN_CHUNK_SHIFT = 12; // 4 KiB
export const MAX_CHUNK_SHIFT = 20; // 1 MiB
export const DEFAULT_CHUNK_SIZE = 64 * 1024;

/** A layer addresses chunks with 32-bit indexes. */
export const MAX_CHUNKS = 2 ** 32 - 1;

/** Cipher suites: AES-256-GCM for chunks and index, keys from HKDF-SHA256. */
export const SUITE_AES256GCM_HKDFSHA256 = 1;
export const SUITE_NAMES: Record<number, string> = {
	[SUITE_AES256GCM_HKDFSHA256]: "AES256GCM-HKDFSHA256",
};

/** Compression codecs, one per layer; each chunk says whether it is compressed. */
export const COMPRESSION_NONE = 0;
export const COMPRESSION_ZSTD = 1;
export type CompressionName = "none" | "zstd";
export const COMPRESSION_IDS: Record<CompressionName, number> = {
	none: COMPRESSION_NONE,
	zstd: COMPRESSION_ZSTD,
};
export const COMPRESSION_NAMES: Record<number, CompressionName> = {
	0: "none",
	1: "zstd",
};

/** Extent flags. */
export const EXTENT_ZERO = 0x0001;
export const EXTENT_COMPRESSED = 0x0002;
export const EXTENT_KNOWN_FLAGS = EXTENT_ZERO | EXTENT_COMPRESSED;

export function isPowerOfTwoChunkSize(n: number): boolean {
	return (
		Number.isInteger(n) &&
		n >= 1 << MIN_CHUNK_SHIFT &&
		n <= 1 << MAX_CHUNK_SHIFT &&
		(n & (n - 1)) === 0
	);
}

export function chunkShiftOf(chunkSize: number): number {
	return Math.log2(chunkSize);
}

export function chunkCountOf(virtualSize: number, chunkSize: number): number {
	return Math.ceil(virtualSize / chunkSize);
}
