/**
 * One sealed layer opened for reading: trailer, header and index fetched, checked and decrypted
 * once; chunks then authenticated and decrypted on demand. Pure logic over a RangeSource.
 */

import { LayerCipher } from "../crypto/layer-cipher.js";
import { authFailed, DadiError } from "../errors.js";
import { type ChunkCodec, createCodec } from "../format/codec.js";
import {
	COMPRESSION_NAMES,
	type CompressionName,
	chunkCountOf,
	EXTENT_COMPRESSED,
	HEADER_SIZE,
	TRAILER_SIZE,
} from "../format/constants.js";
import {
	decodeExtents,
	type Extent,
	isZeroExtent,
	storedOffsetOf,
} from "../format/extents.js";
import { decodeHeader, type LayerHeader } from "../format/header.js";
import {
	decodeTrailer,
	indexLengthOf,
	indexOffsetOf,
	type LayerTrailer,
} from "../format/trailer.js";
import {
	type ChunkedSource,
	isChunkedSource,
	type RangeSource,
	type StoredRange,
} from "./source.js";

/** Some consecutive chunks of one data extent. */
export interface Piece {
	extent: Extent;
	first: number;
	count: number;
}

export interface LayerExpectation {
	/** The layer id the image config names; a different one is LAYER_MISMATCH. */
	layerId: Buffer;
	chunkSize: number;
	virtualSize: number;
	/** The codec the image config names for this layer. */
	compression: CompressionName;
	/**
	 * The most extents the index may hold: the stored and zero chunks the (authenticated) image
	 * config counts, each extent covering at least one. Checked before the index is read, so an
	 * unauthenticated trailer cannot make a reader fetch or allocate more.
	 */
	maxExtents?: number;
}

export class SealedLayer {
	readonly chunkSize: number;
	readonly chunkCount: number;
	readonly #cipher: LayerCipher;
	readonly #codec: ChunkCodec | null;

	private constructor(
		readonly source: RangeSource,
		readonly header: LayerHeader,
		readonly trailer: LayerTrailer,
		readonly extents: readonly Extent[],
		cipher: LayerCipher,
	) {
		this.chunkSize = 2 ** header.chunkShift;
		this.chunkCount = chunkCountOf(header.virtualSize, this.chunkSize);
		this.#cipher = cipher;
		this.#codec = createCodec(COMPRESSION_NAMES[header.compression] ?? "none");
	}

	/**
	 * Opens a layer: two small reads (head and tail), then the index; all checked before use. From
	 * a chunked (remote, cached) source, metadata that fails its checks is fetched once more from
	 * the origin before the failure counts.
	 */
	static async open(
		source: RangeSource,
		layerKey: Buffer,
		expect: LayerExpectation,
	): Promise<SealedLayer> {
		if (!isChunkedSource(source))
			return SealedLayer.#open(source, layerKey, expect);
		let layer: SealedLayer;
		try {
			layer = await SealedLayer.#open(source, layerKey, expect);
		} catch (e) {
			// Anything in the fetched bytes that does not check may be a corrupted cache entry or
			// a byte changed in transit: fetch once more from the origin.
			const retry =
				e instanceof DadiError &&
				(e.code === "AUTH_FAILED" ||
					e.code === "FORMAT_INVALID" ||
					e.code === "FORMAT_UNSUPPORTED" ||
					e.code === "LAYER_MISMATCH");
			if (!retry) throw e;
			await source.forgetMetadata();
			layer = await SealedLayer.#open(source, layerKey, expect);
		}
		source.setChunkMap(layer.chunkRanges());
		return layer;
	}

	static async #open(
		source: RangeSource,
		layerKey: Buffer,
		expect: LayerExpectation,
	): Promise<SealedLayer> {
		const where = source.name;
		if (source.size < HEADER_SIZE + TRAILER_SIZE)
			throw new DadiError(
				"FORMAT_INVALID",
				`${where}: too small to be a sealed layer (${source.size} bytes)`,
			);
		const headBytes = await source.read(0, HEADER_SIZE);
		const header = decodeHeader(headBytes);
		const trailerBytes = await source.read(
			source.size - TRAILER_SIZE,
			TRAILER_SIZE,
		);
		const trailer = decodeTrailer(trailerBytes, source.size);
		if (!header.layerId.equals(expect.layerId))
			throw new DadiError(
				"LAYER_MISMATCH",
				`${where}: this blob is layer ${header.layerId.toString("hex").slice(0, 16)}…, the image expects ${expect.layerId.toString("hex").slice(0, 16)}…`,
			);
		const chunkSize = 2 ** header.chunkShift;
		if (
			chunkSize !== expect.chunkSize ||
			header.virtualSize !== expect.virtualSize ||
			COMPRESSION_NAMES[header.compression] !== expect.compression
		)
			throw new DadiError(
				"LAYER_MISMATCH",
				`${where}: chunk size, virtual size or codec differs from the image config`,
			);
		const chunks = chunkCountOf(header.virtualSize, chunkSize);
		const most = Math.min(chunks, expect.maxExtents ?? chunks);
		if (trailer.extentCount > most)
			throw new DadiError(
				"FORMAT_INVALID",
				`${where}: the trailer announces ${trailer.extentCount} index extents, more than the ${most} this layer can have`,
			);
		const cipher = new LayerCipher(layerKey, header.layerId, chunkSize);
		const stored = await source.read(
			indexOffsetOf(trailer),
			indexLengthOf(trailer),
		);
		const plain = cipher.openIndex(
			stored,
			Buffer.concat([headBytes, trailerBytes]),
		);
		const extents = decodeExtents(plain, {
			chunkCount: chunkCountOf(header.virtualSize, chunkSize),
			chunkSize,
			dataLength: trailer.dataLength,
			compressionAllowed: header.compression !== 0,
		});
		return new SealedLayer(source, header, trailer, extents, cipher);
	}

	/** Turns stored bytes of one chunk into its plaintext (authenticate, decrypt, decompress). */
	decodeChunk(extent: Extent, chunk: number, stored: Buffer): Buffer {
		const plain = this.#cipher.openChunk(chunk, stored, extent.flags);
		if ((extent.flags & EXTENT_COMPRESSED) === 0) return plain;
		if (this.#codec === null) throw authFailed(`chunk ${chunk}`);
		const out = Buffer.allocUnsafe(this.chunkSize);
		this.#codec.decompress(plain, out);
		return out;
	}

	/**
	 * Plaintext of `n` consecutive chunks of one data extent starting at `chunk`, with one read of
	 * their stored bytes.
	 */
	async readRun(extent: Extent, chunk: number, n: number): Promise<Buffer[]> {
		return this.readPieces([{ extent, first: chunk, count: n }]);
	}

	/**
	 * Plaintext of the chunks of several pieces of data extents whose stored bytes follow each other
	 * in the blob, with one read for all of them. Extents are stored in chunk order with no gaps, so
	 * consecutive extents of a layer always qualify, whatever their chunk numbers.
	 */
	async readPieces(pieces: readonly Piece[]): Promise<Buffer[]> {
		const head = pieces[0];
		if (head === undefined) return [];
		const start = storedOffsetOf(head.extent, head.first);
		let end = start;
		for (const p of pieces) {
			const e = p.extent;
			if (
				isZeroExtent(e) ||
				p.count < 1 ||
				p.first < e.first ||
				p.first + p.count > e.first + e.count
			)
				throw new DadiError(
					"INTERNAL",
					"readPieces: a piece outside its data extent",
				);
			if (storedOffsetOf(e, p.first) !== end)
				throw new DadiError(
					"INTERNAL",
					"readPieces: pieces are not contiguous",
				);
			end += p.count * e.storedLength;
		}
		if (isChunkedSource(this.source))
			return this.#readChunked(this.source, pieces);
		const stored = await this.source.read(start, end - start);
		const out: Buffer[] = [];
		let at = 0;
		for (const p of pieces) {
			const len = p.extent.storedLength;
			for (let i = 0; i < p.count; i++, at += len)
				out.push(
					this.decodeChunk(
						p.extent,
						p.first + i,
						stored.subarray(at, at + len),
					),
				);
		}
		return out;
	}

	/** Per-chunk fetches; a chunk that fails to authenticate is refetched fresh once. */
	async #readChunked(
		source: ChunkedSource,
		pieces: readonly Piece[],
	): Promise<Buffer[]> {
		const ranges: StoredRange[] = [];
		const where: { extent: Extent; chunk: number }[] = [];
		for (const p of pieces)
			for (let i = 0; i < p.count; i++) {
				ranges.push({
					offset: storedOffsetOf(p.extent, p.first + i),
					length: p.extent.storedLength,
				});
				where.push({ extent: p.extent, chunk: p.first + i });
			}
		const stored = await source.readStored(ranges);
		const out: Buffer[] = [];
		for (let i = 0; i < ranges.length; i++) {
			const w = where[i] as (typeof where)[number];
			try {
				out.push(this.decodeChunk(w.extent, w.chunk, stored[i] as Buffer));
			} catch (e) {
				if (!(e instanceof DadiError && e.code === "AUTH_FAILED")) throw e;
				const [again] = await source.readStored(
					[ranges[i] as StoredRange],
					true,
				);
				out.push(this.decodeChunk(w.extent, w.chunk, again as Buffer));
			}
		}
		return out;
	}

	/** Stored ranges of every data chunk, in blob order. */
	chunkRanges(): StoredRange[] {
		const out: StoredRange[] = [];
		for (const e of this.extents) {
			if (isZeroExtent(e)) continue;
			for (let i = 0; i < e.count; i++)
				out.push({
					offset: e.offset + i * e.storedLength,
					length: e.storedLength,
				});
		}
		return out.sort((a, b) => a.offset - b.offset);
	}

	/** Number of stored (data) chunks. */
	get storedChunks(): number {
		let n = 0;
		for (const e of this.extents) if (!isZeroExtent(e)) n += e.count;
		return n;
	}

	get zeroChunks(): number {
		let n = 0;
		for (const e of this.extents) if (isZeroExtent(e)) n += e.count;
		return n;
	}
}
