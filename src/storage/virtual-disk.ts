/**
 * A stack of sealed layers read as one virtual disk. The layers' indexes are merged once, at open;
 * each read then finds its chunks by binary search in the merged view.
 */
import { DadiError } from "../errors.js";
import { isZeroExtent, storedOffsetOf } from "../format/extents.js";
import { findSegment, mergeLayers, type Segment } from "../format/merge.js";
import type { Piece, SealedLayer } from "./sealed-layer.js";

/**
 * A stretch of the virtual disk that reads as zero, or that comes from one layer with its stored
 * bytes back to back in that layer's blob (so one read fetches the whole run).
 */
export type Run =
	| { kind: "zero"; first: number; count: number }
	| {
			kind: "data";
			first: number;
			count: number;
			layer: number;
			pieces: Piece[];
	  };

/** Stored bytes one data run may span (at least one chunk). */
export const DEFAULT_RUN_BYTES = 4 << 20;

export class VirtualDisk {
	readonly size: number;
	readonly chunkSize: number;
	readonly chunkCount: number;
	readonly view: readonly Segment[];

	constructor(readonly layers: readonly SealedLayer[]) {
		const top = layers[layers.length - 1];
		if (top === undefined)
			throw new DadiError(
				"INTERNAL",
				"a virtual disk needs at least one layer",
			);
		this.chunkSize = top.chunkSize;
		for (const l of layers)
			if (l.chunkSize !== this.chunkSize)
				throw new DadiError(
					"FORMAT_INVALID",
					"all layers of an image must use one chunk size",
				);
		this.size = top.header.virtualSize;
		this.chunkCount = top.chunkCount;
		this.view = mergeLayers(
			layers.map((l) => ({ extents: l.extents, chunkCount: l.chunkCount })),
		);
	}

	/**
	 * The runs covering chunks [first, end). Zero extents and uncovered chunks come out as zero
	 * runs. A data run gathers chunks that are consecutive on the virtual disk and in one layer's
	 * blob, across extents, up to `maxBytes` of stored bytes.
	 */
	*runs(
		first: number,
		end: number,
		maxBytes = DEFAULT_RUN_BYTES,
	): Generator<Run> {
		let c = first;
		let i = segmentIndexAtOrAfter(this.view, c);
		let open: (Run & { kind: "data" }) | undefined;
		let openBytes = 0;
		let openEnd = 0; // blob offset just past the open run's stored bytes
		while (c < end) {
			const s = this.view[i];
			if (s === undefined || s.first >= end) break;
			if (s.first > c || isZeroExtent(s.extent)) {
				if (open) yield open;
				open = undefined;
				const stop = isZeroExtent(s.extent)
					? Math.min(end, s.first + s.count)
					: s.first;
				yield { kind: "zero", first: c, count: stop - c };
				c = stop;
				if (isZeroExtent(s.extent)) i++;
				continue;
			}
			const stop = Math.min(end, s.first + s.count);
			const len = s.extent.storedLength;
			while (c < stop) {
				const at = storedOffsetOf(s.extent, c);
				const fits =
					open !== undefined &&
					open.layer === s.layer &&
					at === openEnd &&
					openBytes + len <= maxBytes;
				if (!fits) {
					if (open) yield open;
					open = {
						kind: "data",
						first: c,
						count: 0,
						layer: s.layer,
						pieces: [],
					};
					openBytes = 0;
					openEnd = at;
				}
				const run = open as Run & { kind: "data" };
				const n = Math.max(
					1,
					Math.min(stop - c, Math.floor((maxBytes - openBytes) / len)),
				);
				const last = run.pieces[run.pieces.length - 1];
				if (last && last.extent === s.extent) last.count += n;
				else run.pieces.push({ extent: s.extent, first: c, count: n });
				run.count += n;
				openBytes += n * len;
				openEnd += n * len;
				c += n;
			}
			i++;
		}
		if (open) yield open;
		if (c < end) yield { kind: "zero", first: c, count: end - c };
	}

	/**
	 * Told of every data run before it is read (start-up trace recording); must not throw.
	 * Reads of shadowed chunks (authenticateShadowed) are not runs and are not reported.
	 */
	onRun?: (run: Run & { kind: "data" }) => void;

	/** Plaintext of the chunks of one data run, decrypted and authenticated, with one read. */
	async readRun(run: Run & { kind: "data" }): Promise<Buffer[]> {
		this.onRun?.(run);
		const layer = this.layers[run.layer] as SealedLayer;
		return layer.readPieces(run.pieces);
	}

	/** `length` bytes of the virtual disk at `offset`. */
	async read(offset: number, length: number): Promise<Buffer> {
		if (
			!Number.isSafeInteger(offset) ||
			!Number.isSafeInteger(length) ||
			offset < 0 ||
			length < 0 ||
			offset + length > this.size
		)
			throw new DadiError(
				"OUT_OF_RANGE",
				`read of ${length} bytes at ${offset} is outside the ${this.size}-byte disk`,
			);
		const out = Buffer.alloc(length);
		if (length === 0) return out;
		const cs = this.chunkSize;
		const first = Math.floor(offset / cs);
		const end = Math.ceil((offset + length) / cs);
		// The runs of one read are fetched together (they may live in different layers or apart in
		// one blob): a read costs one round trip, not one per run.
		const reads: Promise<void>[] = [];
		for (const run of this.runs(first, end)) {
			if (run.kind === "zero") continue;
			reads.push(
				this.readRun(run).then((chunks) =>
					chunks.forEach((plain, k) => {
						const chunkStart = (run.first + k) * cs;
						const from = Math.max(offset, chunkStart);
						const to = Math.min(offset + length, chunkStart + cs);
						plain.copy(out, from - offset, from - chunkStart, to - chunkStart);
					}),
				),
			);
		}
		await settleAll(reads);
		return out;
	}

	/** Which layer (index) provides `chunk`, or -1 when it reads as zero. */
	layerOf(chunk: number): number {
		const s = findSegment(this.view, chunk);
		return s === undefined || isZeroExtent(s.extent) ? -1 : s.layer;
	}

	/**
	 * Authenticates every stored chunk that the merged view does not show (chunks shadowed by an
	 * upper layer), so a full pass over the disk plus this checks every stored byte.
	 */
	async authenticateShadowed(onChunk?: (n: number) => void): Promise<number> {
		let n = 0;
		for (let li = 0; li < this.layers.length; li++) {
			const layer = this.layers[li] as SealedLayer;
			for (const e of layer.extents) {
				if (isZeroExtent(e)) continue;
				let c = e.first;
				while (c < e.first + e.count) {
					// Find a maximal stretch of chunks of this extent not shown by the view.
					if (c < this.chunkCount && this.layerOf(c) === li) {
						c++;
						continue;
					}
					let k = c;
					while (
						k < e.first + e.count &&
						k - c < 64 &&
						!(k < this.chunkCount && this.layerOf(k) === li)
					)
						k++;
					await layer.readRun(e, c, k - c);
					n += k - c;
					onChunk?.(k - c);
					c = k;
				}
			}
		}
		return n;
	}
}

/** Waits for every promise, then rethrows the first failure (in order), if any. */
async function settleAll(ps: readonly Promise<void>[]): Promise<void> {
	for (const r of await Promise.allSettled(ps))
		if (r.status === "rejected") throw r.reason;
}

function segmentIndexAtOrAfter(
	view: readonly Segment[],
	chunk: number,
): number {
	let lo = 0;
	let hi = view.length;
	while (lo < hi) {
		const mid = (lo + hi) >>> 1;
		const s = view[mid] as Segment;
		if (s.first + s.count <= chunk) lo = mid + 1;
		else hi = mid;
	}
	return lo;
}

/**
 * Plaintext of chunks [first, first + n) of a disk, one entry per chunk, null where the chunk
 * reads as zero (also past the disk's end). Used to compare a new disk against the layers below.
 */
export async function readChunksOrZero(
	disk: VirtualDisk,
	first: number,
	n: number,
): Promise<(Buffer | null)[]> {
	const out: (Buffer | null)[] = new Array(n).fill(null);
	const end = Math.min(first + n, disk.chunkCount);
	if (first >= end) return out;
	for (const run of disk.runs(first, end)) {
		if (run.kind === "zero") continue;
		const chunks = await disk.readRun(run);
		chunks.forEach((c, k) => {
			out[run.first - first + k] = c;
		});
	}
	return out;
}
