/**
 * Per-chunk compression codecs. zstd (level 3) through zstd-napi's low-level binding: compression
 * and decompression go straight into buffers we size, so a chunk can never expand past the chunk
 * size on decompression (no decompression bombs), and incompressible chunks are detected by the
 * output buffer being too small. See docs/dependencies.md for why zstd.
 */
import { DadiError } from "../errors.js";
import { loadZstdBinding, type ZstdBinding } from "../native/addons.js";
import { COMPRESSION_IDS, type CompressionName } from "./constants.js";

let binding: ZstdBinding | undefined;
function zstd(): ZstdBinding {
	binding ??= loadZstdBinding();
	return binding;
}

export const ZSTD_LEVEL = 3;

export interface ChunkCodec {
	readonly name: CompressionName;
	readonly id: number;
	/** The compressed form when it is at most `limit` bytes, else null (store the chunk raw). */
	compress(plain: Buffer, limit: number): Buffer | null;
	/** Decompresses exactly `out.length` bytes into `out`, or throws FORMAT_INVALID. */
	decompress(src: Buffer, out: Buffer): void;
}

class ZstdCodec implements ChunkCodec {
	readonly name = "zstd" as const;
	readonly id = COMPRESSION_IDS.zstd;
	readonly #c = new (zstd().CCtx)();
	readonly #d = new (zstd().DCtx)();
	#scratch = Buffer.alloc(0);

	compress(plain: Buffer, limit: number): Buffer | null {
		if (this.#scratch.length < limit) this.#scratch = Buffer.allocUnsafe(limit);
		let n: number;
		try {
			n = this.#c.compress(this.#scratch.subarray(0, limit), plain, ZSTD_LEVEL);
		} catch {
			return null; // did not fit: not worth compressing
		}
		return Buffer.from(this.#scratch.subarray(0, n));
	}

	decompress(src: Buffer, out: Buffer): void {
		let n: number;
		try {
			n = this.#d.decompress(out, src);
		} catch {
			throw new DadiError(
				"FORMAT_INVALID",
				"compressed chunk does not decompress to one chunk",
			);
		}
		if (n !== out.length)
			throw new DadiError(
				"FORMAT_INVALID",
				"compressed chunk does not decompress to one chunk",
			);
	}
}

/** A codec instance (each holds native contexts; use one per reader or writer). */
export function createCodec(name: CompressionName): ChunkCodec | null {
	if (name === "none") return null;
	if (name === "zstd") return new ZstdCodec();
	throw new DadiError(
		"USAGE",
		`unknown compression "${name as string}": use none or zstd`,
	);
}

/**
 * The codec and library version: part of the reproducible-mode key derivation, because another
 * zstd version may compress a chunk to other bytes, which must then be sealed under another key.
 */
export function codecVersion(name: CompressionName): string {
	return name === "zstd"
		? `zstd-${zstd().versionString()}-l${ZSTD_LEVEL}`
		: "none";
}
