/**
 * What the file-system metadata walkers (ext4-meta.ts, erofs-meta.ts) share: they read plaintext
 * from the virtual disk through a function, say which byte ranges they found, and stay within
 * caps, whatever the bytes say (they parse image contents, which are not trusted to be sane).
 */
import { DadiError } from "../errors.js";

/** A byte range of the virtual disk. */
export interface DiskRange {
	offset: number;
	length: number;
}

/** Reads `length` plaintext bytes of the virtual disk at `offset` (inside the disk). */
export type ReadDisk = (offset: number, length: number) => Promise<Buffer>;

export interface MetaWalkOptions {
	/** The disk's size in bytes: nothing outside [0, diskSize) is read or returned. */
	diskSize: number;
	/**
	 * Called with the ranges the walker is about to read (so they can be fetched together first,
	 * e.g. prefetched); the walker reads them afterwards either way.
	 */
	beforeRead?: (ranges: readonly DiskRange[]) => Promise<void>;
	/** Bytes the walker may read to parse (inode tables, directories); default 64 MiB. */
	maxReadBytes?: number;
	/** Bytes of ranges the walker may return in all; default 256 MiB. */
	maxBytes?: number;
	/** Directories whose blocks are looked up at most; default 65536. */
	maxDirectories?: number;
}

export const DEFAULT_META_READ_BYTES = 64 << 20;
export const DEFAULT_META_BYTES = 256 << 20;
export const DEFAULT_META_DIRECTORIES = 65536;

/** Collects ranges clipped to the disk, in order, up to a byte bound. */
export class RangeList {
	readonly ranges: DiskRange[] = [];
	#bytes = 0;

	constructor(
		readonly diskSize: number,
		readonly maxBytes: number,
	) {}

	get full(): boolean {
		return this.#bytes >= this.maxBytes;
	}

	/** Adds [offset, offset+length) clipped to the disk; false once the bound is reached. */
	add(offset: number, length: number): boolean {
		if (this.full) return false;
		if (!Number.isFinite(offset) || !Number.isFinite(length)) return true;
		const from = Math.max(0, offset);
		const to = Math.min(this.diskSize, offset + length);
		if (to <= from) return true;
		const n = Math.min(to - from, this.maxBytes - this.#bytes);
		this.ranges.push({ offset: from, length: n });
		this.#bytes += n;
		return !this.full;
	}
}

/** Whether [offset, offset+length) is a non-empty range inside a disk of `size` bytes. */
export function inside(offset: number, length: number, size: number): boolean {
	return (
		Number.isSafeInteger(offset) &&
		Number.isSafeInteger(length) &&
		offset >= 0 &&
		length > 0 &&
		offset + length <= size
	);
}

/**
 * The chunks that ranges touch, in the order of first touch, without duplicates, at most
 * `maxChunks`, all below `chunkCount`.
 */
export function chunksOf(
	ranges: readonly DiskRange[],
	chunkSize: number,
	chunkCount: number,
	maxChunks = Number.POSITIVE_INFINITY,
): number[] {
	if (!Number.isSafeInteger(chunkSize) || chunkSize < 1)
		throw new DadiError("INTERNAL", "chunksOf: bad chunk size");
	const out: number[] = [];
	const seen = new Set<number>();
	for (const r of ranges) {
		if (r.length <= 0 || r.offset < 0) continue;
		const first = Math.floor(r.offset / chunkSize);
		const end = Math.min(
			chunkCount,
			Math.ceil((r.offset + r.length) / chunkSize),
		);
		for (let c = first; c < end; c++) {
			if (seen.has(c)) continue;
			if (out.length >= maxChunks) return out;
			seen.add(c);
			out.push(c);
		}
	}
	return out;
}

export function formatError(what: string, why: string): DadiError {
	return new DadiError("FORMAT_INVALID", `${what}: ${why}`);
}
