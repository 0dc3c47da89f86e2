/**
 * Writes one sealed layer in a single pass: header, chunk data, encrypted index, trailer.
 * Pure over its inputs: bytes come from a RangeSource, lower-layer plaintext from a callback, and
 * output goes to a sink; same inputs and keys give the same bytes.
 *
 * Which chunks are stored (docs/format.md, "Overlay"): with no lower disk, every non-zero chunk.
 * Over a lower disk, only chunks that differ from it; a chunk that became zero is a zero extent.
 */
import { LayerCipher } from "../crypto/layer-cipher.js";
import { DadiError } from "../errors.js";
import { isAllZero } from "../format/bytes.js";
import { createCodec } from "../format/codec.js";
import {
	COMPRESSION_IDS,
	type CompressionName,
	chunkCountOf,
	EXTENT_COMPRESSED,
	EXTENT_ZERO,
	HEADER_SIZE,
	isPowerOfTwoChunkSize,
	MAX_CHUNKS,
	MAX_EXTENTS,
	SUITE_AES256GCM_HKDFSHA256,
} from "../format/constants.js";
import { type Extent, encodeExtents } from "../format/extents.js";
import { encodeHeader, type LayerHeader } from "../format/header.js";
import {
	encodeTrailer,
	indexLengthOf,
	type LayerTrailer,
} from "../format/trailer.js";
import type { RangeSource } from "../storage/source.js";
import { compressionLimit, type WriterPolicy } from "./writer-policy.js";

export interface ByteSink {
	write(bytes: Buffer): Promise<void>;
}

/** Plaintext of lower-disk chunks [first, first+n), null for zero chunks. */
export type LowerChunks = (
	first: number,
	n: number,
) => Promise<(Buffer | null)[]>;

export interface SealLayerOptions {
	disk: RangeSource;
	lower?: LowerChunks;
	chunkSize: number;
	compression: CompressionName;
	layerKey: Buffer;
	layerId: Buffer;
	sink: ByteSink;
	/** Called with the number of disk bytes consumed so far. */
	onProgress?: (done: number, total: number) => void;
	/** Disk bytes read per batch (rounded to whole chunks). */
	batchBytes?: number;
	/**
	 * What decides a chunk's payload besides its bytes (default: this writer's). A caller deriving
	 * the layer key from the inputs must put the same policy's identity into them (seal/keys.ts).
	 */
	policy?: WriterPolicy;
}

export interface SealedLayerResult {
	header: LayerHeader;
	trailer: LayerTrailer;
	extents: Extent[];
	storedChunks: number;
	zeroChunks: number;
	compressedChunks: number;
	blobSize: number;
}

export async function sealLayer(
	o: SealLayerOptions,
): Promise<SealedLayerResult> {
	const { chunkSize } = o;
	if (!isPowerOfTwoChunkSize(chunkSize))
		throw new DadiError(
			"USAGE",
			`chunk size ${chunkSize} must be a power of two from 4096 to 1048576`,
		);
	const virtualSize = o.disk.size;
	if (virtualSize < 1)
		throw new DadiError(
			"INPUT_INVALID",
			`${o.disk.name}: the disk image is empty`,
		);
	const chunkCount = chunkCountOf(virtualSize, chunkSize);
	if (chunkCount > MAX_CHUNKS)
		throw new DadiError(
			"INPUT_INVALID",
			`${o.disk.name}: too large for chunk size ${chunkSize}`,
		);

	const header: LayerHeader = {
		chunkShift: Math.log2(chunkSize),
		suite: SUITE_AES256GCM_HKDFSHA256,
		compression: COMPRESSION_IDS[o.compression],
		virtualSize,
		layerId: o.layerId,
	};
	const headerBytes = encodeHeader(header);
	const cipher = new LayerCipher(o.layerKey, o.layerId, chunkSize);
	const codec = createCodec(o.compression);
	const limit = compressionLimit(chunkSize, o.policy);

	const extents: Extent[] = [];
	let open: Extent | undefined;
	let offset = HEADER_SIZE;
	let storedChunks = 0;
	let zeroChunks = 0;
	let compressedChunks = 0;
	const add = (chunk: number, storedLength: number, flags: number): void => {
		if (
			open !== undefined &&
			open.first + open.count === chunk &&
			open.storedLength === storedLength &&
			open.flags === flags
		) {
			open.count++;
			return;
		}
		open = {
			first: chunk,
			count: 1,
			offset: flags & EXTENT_ZERO ? 0 : offset,
			storedLength,
			flags,
		};
		extents.push(open);
	};

	await o.sink.write(headerBytes);
	const batchChunks = Math.max(
		1,
		Math.floor((o.batchBytes ?? 4 << 20) / chunkSize),
	);
	const readBatch = async (
		first: number,
	): Promise<{ data: Buffer; lower: (Buffer | null)[] | null }> => {
		const n = Math.min(batchChunks, chunkCount - first);
		const start = first * chunkSize;
		const len = Math.min(n * chunkSize, virtualSize - start);
		const data = Buffer.alloc(n * chunkSize); // zero padding past the disk's end
		(await o.disk.read(start, len)).copy(data);
		const lower = o.lower ? await o.lower(first, n) : null;
		return { data, lower };
	};

	// Read ahead while a batch is sealed. A read-ahead that fails is awaited (and so thrown) on the
	// next turn; until then it must not count as an unhandled rejection.
	const readAhead = (first: number) => {
		const p = readBatch(first);
		p.catch(() => {});
		return p;
	};
	let pending = readAhead(0);
	for (let first = 0; first < chunkCount; first += batchChunks) {
		const { data, lower } = await pending;
		const next = first + batchChunks;
		if (next < chunkCount) pending = readAhead(next);
		const out: Buffer[] = [];
		const n = data.length / chunkSize;
		for (let k = 0; k < n; k++) {
			const chunk = first + k;
			const plain = data.subarray(k * chunkSize, (k + 1) * chunkSize);
			const zero = isAllZero(plain);
			if (lower) {
				const below = lower[k] ?? null;
				if (below === null ? zero : plain.equals(below)) continue; // unchanged: not stored
				if (zero) {
					add(chunk, 0, EXTENT_ZERO);
					zeroChunks++;
					continue;
				}
			} else if (zero) continue; // a hole
			let payload = plain;
			let flags = 0;
			const packed = codec?.compress(plain, limit) ?? null;
			if (packed !== null) {
				payload = packed;
				flags = EXTENT_COMPRESSED;
				compressedChunks++;
			}
			const stored = cipher.sealChunk(chunk, payload, flags);
			add(chunk, stored.length, flags);
			offset += stored.length;
			storedChunks++;
			out.push(stored);
		}
		if (out.length > 0) await o.sink.write(Buffer.concat(out));
		o.onProgress?.(Math.min(virtualSize, (first + n) * chunkSize), virtualSize);
	}

	const trailer: LayerTrailer = {
		dataLength: offset - HEADER_SIZE,
		extentCount: extents.length,
	};
	if (extents.length > MAX_EXTENTS)
		throw new DadiError(
			"INPUT_INVALID",
			`${o.disk.name}: the layer needs ${extents.length} extents, more than the format's ${MAX_EXTENTS}; use a larger chunk size`,
		);
	const trailerBytes = encodeTrailer(trailer);
	const index = cipher.sealIndex(
		encodeExtents(extents),
		Buffer.concat([headerBytes, trailerBytes]),
	);
	if (index.length !== indexLengthOf(trailer))
		throw new DadiError("INTERNAL", "index length");
	await o.sink.write(index);
	await o.sink.write(trailerBytes);
	return {
		header,
		trailer,
		extents,
		storedChunks,
		zeroChunks,
		compressedChunks,
		blobSize: offset + index.length + trailerBytes.length,
	};
}
