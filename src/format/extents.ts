/**
 * The layer index (docs/format.md, "Index"): a sorted list of non-overlapping extents mapping
 * virtual chunks to stored bytes. This module encodes and validates the plaintext index; the
 * crypto layer encrypts it as a whole.
 *
 * A data extent covers `count` consecutive chunks stored back to back, each `storedLength` bytes
 * (ciphertext + tag). A zero extent covers chunks that read as zero and shadow lower layers.
 * Chunks in no extent are holes: they fall through to the layer below (zero at the bottom).
 */
import { DadiError } from "../errors.js";
import { readU64, writeU64 } from "./bytes.js";
import {
	EXTENT_COMPRESSED,
	EXTENT_KNOWN_FLAGS,
	EXTENT_SIZE,
	EXTENT_ZERO,
	HEADER_SIZE,
	TAG_SIZE,
} from "./constants.js";

export interface Extent {
	/** First virtual chunk. */
	first: number;
	/** Number of chunks, at least 1. */
	count: number;
	/** Absolute offset of the first stored chunk in the layer blob (0 for zero extents). */
	offset: number;
	/** Stored bytes per chunk: ciphertext plus tag (0 for zero extents). */
	storedLength: number;
	flags: number;
}

export function isZeroExtent(e: Extent): boolean {
	return (e.flags & EXTENT_ZERO) !== 0;
}

export function encodeExtents(extents: readonly Extent[]): Buffer {
	const b = Buffer.alloc(extents.length * EXTENT_SIZE);
	extents.forEach((e, i) => {
		const o = i * EXTENT_SIZE;
		b.writeUInt32LE(e.first, o);
		b.writeUInt32LE(e.count, o + 4);
		writeU64(b, o + 8, e.offset);
		b.writeUInt32LE(e.storedLength, o + 16);
		b.writeUInt16LE(e.flags, o + 20);
	});
	return b;
}

export interface ExtentLimits {
	chunkCount: number;
	chunkSize: number;
	dataLength: number;
	/** Whether the layer's codec allows compressed chunks. */
	compressionAllowed: boolean;
}

/**
 * Decodes the plaintext index and checks every invariant a reader relies on: sorted and
 * non-overlapping, inside the virtual disk, known flags, zero reserved bytes, and data extents
 * that tile the data area exactly (every stored byte belongs to exactly one chunk).
 */
export function decodeExtents(b: Buffer, limits: ExtentLimits): Extent[] {
	if (b.length % EXTENT_SIZE !== 0)
		throw new DadiError(
			"FORMAT_INVALID",
			"layer index: length is not a whole number of extents",
		);
	const n = b.length / EXTENT_SIZE;
	const out: Extent[] = new Array(n);
	let nextChunk = 0;
	let nextOffset = HEADER_SIZE;
	for (let i = 0; i < n; i++) {
		const o = i * EXTENT_SIZE;
		const e: Extent = {
			first: b.readUInt32LE(o),
			count: b.readUInt32LE(o + 4),
			offset: readU64(b, o + 8, "layer index: extent offset"),
			storedLength: b.readUInt32LE(o + 16),
			flags: b.readUInt16LE(o + 20),
		};
		const where = `layer index: extent ${i}`;
		if (b.readUInt16LE(o + 22) !== 0)
			throw new DadiError(
				"FORMAT_INVALID",
				`${where}: reserved bytes are not zero`,
			);
		if ((e.flags & ~EXTENT_KNOWN_FLAGS) !== 0)
			throw new DadiError(
				"FORMAT_INVALID",
				`${where}: unknown flags 0x${e.flags.toString(16)}`,
			);
		if (e.count < 1)
			throw new DadiError("FORMAT_INVALID", `${where}: empty extent`);
		if (e.first < nextChunk)
			throw new DadiError(
				"FORMAT_INVALID",
				`${where}: extents overlap or are not sorted`,
			);
		if (e.first + e.count > limits.chunkCount)
			throw new DadiError(
				"FORMAT_INVALID",
				`${where}: runs past the end of the virtual disk`,
			);
		nextChunk = e.first + e.count;
		if (isZeroExtent(e)) {
			if (e.flags !== EXTENT_ZERO || e.offset !== 0 || e.storedLength !== 0)
				throw new DadiError(
					"FORMAT_INVALID",
					`${where}: a zero extent must have no offset, length or other flags`,
				);
		} else {
			const compressed = (e.flags & EXTENT_COMPRESSED) !== 0;
			if (compressed && !limits.compressionAllowed)
				throw new DadiError(
					"FORMAT_INVALID",
					`${where}: compressed chunk in a layer without a codec`,
				);
			const full = limits.chunkSize + TAG_SIZE;
			if (
				compressed
					? e.storedLength <= TAG_SIZE || e.storedLength >= full
					: e.storedLength !== full
			)
				throw new DadiError(
					"FORMAT_INVALID",
					`${where}: stored length ${e.storedLength} is impossible for chunk size ${limits.chunkSize}`,
				);
			if (e.offset !== nextOffset)
				throw new DadiError(
					"FORMAT_INVALID",
					`${where}: stored chunks do not follow each other`,
				);
			nextOffset += e.count * e.storedLength;
			if (nextOffset > HEADER_SIZE + limits.dataLength)
				throw new DadiError(
					"FORMAT_INVALID",
					`${where}: runs past the data area`,
				);
		}
		out[i] = e;
	}
	if (nextOffset !== HEADER_SIZE + limits.dataLength)
		throw new DadiError(
			"FORMAT_INVALID",
			"layer index: the data area holds bytes no extent accounts for",
		);
	return out;
}

/** Binary search: the extent covering `chunk`, or undefined for a hole. O(log n). */
export function findExtent(
	extents: readonly Extent[],
	chunk: number,
): Extent | undefined {
	let lo = 0;
	let hi = extents.length - 1;
	while (lo <= hi) {
		const mid = (lo + hi) >>> 1;
		const e = extents[mid] as Extent;
		if (chunk < e.first) hi = mid - 1;
		else if (chunk >= e.first + e.count) lo = mid + 1;
		else return e;
	}
	return undefined;
}

/** Offset of one chunk's stored bytes within a data extent. */
export function storedOffsetOf(e: Extent, chunk: number): number {
	return e.offset + (chunk - e.first) * e.storedLength;
}
