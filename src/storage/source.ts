/**
 * The one small interface every storage layer is written against: random reads of a byte range.
 * File today; HTTP range requests, caches and peers wrap or replace it later.
 */
import { constants } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { DadiError, fromSystemError } from "../errors.js";

export interface RangeSource {
	/** What the bytes are, for error messages (a path or a digest). */
	readonly name: string;
	readonly size: number;
	/** Exactly `length` bytes at `offset`, or an error; never a short buffer. */
	read(offset: number, length: number): Promise<Buffer>;
	close(): Promise<void>;
}

/** The largest single file read issued (reads above 2^31 - 1 bytes abort Node). */
const MAX_READ = 64 << 20;

export class FileSource implements RangeSource {
	private constructor(
		readonly name: string,
		readonly size: number,
		private readonly fh: FileHandle,
	) {}

	static async open(path: string, name = path): Promise<FileSource> {
		let fh: FileHandle;
		try {
			// Non-blocking: a FIFO planted as a blob must not hang the open (it is refused below).
			fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
		} catch (e) {
			throw fromSystemError(e, path, "opening for reading");
		}
		const st = await fh.stat();
		if (!st.isFile()) {
			await fh.close();
			throw new DadiError(
				"INPUT_INVALID",
				`${path}: not a regular file (block devices and directories are not supported; use a disk image file)`,
			);
		}
		return new FileSource(name, st.size, fh);
	}

	async read(offset: number, length: number): Promise<Buffer> {
		if (offset < 0 || length < 0 || offset + length > this.size)
			throw new DadiError(
				"FORMAT_INVALID",
				`${this.name}: read of ${length} bytes at ${offset} is past its end (${this.size} bytes)`,
			);
		const buf = Buffer.allocUnsafe(length);
		let done = 0;
		while (done < length) {
			// One read(2) moves at most ~2 GiB; Node aborts on a larger request.
			const { bytesRead } = await this.fh.read(
				buf,
				done,
				Math.min(length - done, MAX_READ),
				offset + done,
			);
			if (bytesRead === 0)
				throw new DadiError(
					"FORMAT_INVALID",
					`${this.name}: file shrank while reading (short read at ${offset + done})`,
				);
			done += bytesRead;
		}
		return buf;
	}

	async close(): Promise<void> {
		await this.fh.close();
	}
}

/** A source over bytes in memory (tests, small blobs). */
export class BufferSource implements RangeSource {
	constructor(
		readonly name: string,
		private readonly bytes: Buffer,
	) {}

	get size(): number {
		return this.bytes.length;
	}

	async read(offset: number, length: number): Promise<Buffer> {
		if (offset < 0 || length < 0 || offset + length > this.bytes.length)
			throw new DadiError(
				"FORMAT_INVALID",
				`${this.name}: read of ${length} bytes at ${offset} is past its end (${this.bytes.length} bytes)`,
			);
		return Buffer.from(this.bytes.subarray(offset, offset + length));
	}

	async close(): Promise<void> {}
}

/** A stretch of stored bytes: one chunk's ciphertext, or a piece of metadata. */
export interface StoredRange {
	offset: number;
	length: number;
}

/**
 * A source that fetches chunk by chunk (a registry behind caches). Readers hand it the exact
 * stored range of each chunk, so it can cache, coalesce and de-duplicate per chunk, and ask again
 * with `fresh` when bytes it served did not authenticate: a corrupted cache entry or a byte flipped
 * in transit is then refetched from the origin, never served twice.
 */
export interface ChunkedSource extends RangeSource {
	readStored(
		ranges: readonly StoredRange[],
		fresh?: boolean,
	): Promise<Buffer[]>;
	/** Drops cached copies of everything read with `read()` (metadata that failed its checks). */
	forgetMetadata(): Promise<void>;
	/** The layer's chunk ranges in blob order, once its index is known (for read-ahead). */
	setChunkMap(ranges: readonly StoredRange[]): void;
	/** Whether a chunk's stored bytes are cached or being fetched (no fetch, no hit counted). */
	holds(range: StoredRange): Promise<boolean>;
	/**
	 * Fetches chunks that follow each other in the blob into the caches with one speculative
	 * request (never decrypted here; readers authenticate later), skipping those cached or in
	 * flight meanwhile. Rejects when the fetch fails (readers joining it fall back to their own).
	 */
	prefetch(ranges: readonly StoredRange[]): Promise<PrefetchRun>;
}

/** What one `prefetch` call did. */
export interface PrefetchRun {
	chunks: number;
	bytes: number;
	requests: number;
}

export function isChunkedSource(s: RangeSource): s is ChunkedSource {
	return typeof (s as Partial<ChunkedSource>).readStored === "function";
}
