/**
 * Prefetch: bringing the ciphertext of chunks that will be read soon (a recorded trace, or the
 * file-system metadata found at open) into the caches, in the order given, as a low-priority
 * neighbour of on-demand reads. Chunks adjacent in a layer's blob are coalesced into one range
 * request (up to `maxRequestBytes`), a few requests run at once (`concurrency`), chunks already
 * cached or in flight are skipped, and the whole stops at `budgetBytes`. Nothing is decrypted
 * here: reads authenticate the chunks later (and a prefetched chunk that fails is fetched again
 * by the read). Prefetch requests are speculative for the image's limiter: they never take the
 * slots reserved for demand, and a read that joins one is promoted to its own request if the
 * prefetch is slow (src/lazy/remote-blob.ts). It never rejects: a failure ends it with
 * stoppedBy "error".
 */
import { findExtent, isZeroExtent, storedOffsetOf } from "../format/extents.js";
import { erofsMetadataRanges } from "../prefetch/erofs-meta.js";
import { ext4MetadataRanges } from "../prefetch/ext4-meta.js";
import { chunksOf, type DiskRange } from "../prefetch/ranges.js";
import {
	type ChunkedSource,
	isChunkedSource,
	type StoredRange,
} from "../storage/source.js";
import type { VirtualDisk } from "../storage/virtual-disk.js";

/** Layer index in the image (0 = bottom), chunk index (same numbering as the virtual disk's chunks). */
export interface PrefetchItem {
	layer: number;
	chunk: number;
}

export interface PrefetchOptions {
	/** Stop once this many stored bytes were requested (default: no bound). */
	budgetBytes?: number;
	/** Prefetch requests in flight at once (default 4; the limiter's reserve still applies). */
	concurrency?: number;
	/** Largest single prefetch request (default 1 MiB). */
	maxRequestBytes?: number;
	signal?: AbortSignal;
}

export interface PrefetchResult {
	/** Chunks fetched, their stored bytes, and the range requests that carried them. */
	chunks: number;
	bytes: number;
	requests: number;
	/** Chunks skipped because they were cached or in flight already. */
	alreadyHad: number;
	stoppedBy: "done" | "budget" | "abort" | "error";
	ms: number;
	error?: string;
}

export const DEFAULT_PREFETCH_CONCURRENCY = 4;
export const DEFAULT_PREFETCH_REQUEST_BYTES = 1 << 20;

interface Wanted {
	layer: number;
	range: StoredRange;
}

/** Stored ranges of the items, in the given order, without duplicates and what is not stored. */
export function storedRangesOf(
	disk: VirtualDisk,
	items: readonly PrefetchItem[],
): Wanted[] {
	const out: Wanted[] = [];
	const seen = new Set<string>();
	for (const it of items) {
		const layer = disk.layers[it.layer];
		if (
			layer === undefined ||
			!Number.isSafeInteger(it.layer) ||
			!Number.isSafeInteger(it.chunk) ||
			it.chunk < 0 ||
			it.chunk >= layer.chunkCount
		)
			continue;
		const e = findExtent(layer.extents, it.chunk);
		if (e === undefined || isZeroExtent(e)) continue;
		const range = {
			offset: storedOffsetOf(e, it.chunk),
			length: e.storedLength,
		};
		const id = `${it.layer}/${range.offset}`;
		if (seen.has(id)) continue;
		seen.add(id);
		out.push({ layer: it.layer, range });
	}
	return out;
}

/**
 * Groups wanted chunks into requests: each group starts at the first chunk not yet taken (trace
 * order) and grows over chunks of the same layer adjacent in the blob (after it, then before it)
 * that are also wanted, up to `maxBytes`. Groups come out in the order of their first chunk, each
 * sorted by blob offset.
 */
export function groupRequests(
	wanted: readonly Wanted[],
	maxBytes: number,
): Wanted[][] {
	const byStart = new Map<string, number>();
	const byEnd = new Map<string, number>();
	wanted.forEach((w, i) => {
		byStart.set(`${w.layer}/${w.range.offset}`, i);
		byEnd.set(`${w.layer}/${w.range.offset + w.range.length}`, i);
	});
	const taken = new Uint8Array(wanted.length);
	const groups: Wanted[][] = [];
	for (let i = 0; i < wanted.length; i++) {
		if (taken[i]) continue;
		const w = wanted[i] as Wanted;
		taken[i] = 1;
		const after: Wanted[] = [];
		const before: Wanted[] = [];
		let bytes = w.range.length;
		let end = w.range.offset + w.range.length;
		for (;;) {
			const j = byStart.get(`${w.layer}/${end}`);
			if (j === undefined || taken[j]) break;
			const n = wanted[j] as Wanted;
			if (bytes + n.range.length > maxBytes) break;
			taken[j] = 1;
			after.push(n);
			bytes += n.range.length;
			end += n.range.length;
		}
		let start = w.range.offset;
		for (;;) {
			const j = byEnd.get(`${w.layer}/${start}`);
			if (j === undefined || taken[j]) break;
			const n = wanted[j] as Wanted;
			if (bytes + n.range.length > maxBytes) break;
			taken[j] = 1;
			before.push(n);
			bytes += n.range.length;
			start -= n.range.length;
		}
		groups.push([...before.reverse(), w, ...after]);
	}
	return groups;
}

export async function prefetchChunks(
	disk: VirtualDisk,
	items: readonly PrefetchItem[],
	o: PrefetchOptions = {},
): Promise<PrefetchResult> {
	const r = emptyResult();
	const end = stopwatch(r);
	try {
		const sources = disk.layers.map((l) =>
			isChunkedSource(l.source) ? l.source : undefined,
		);
		if (sources.every((s) => s === undefined)) return end();
		const budget = o.budgetBytes ?? Number.POSITIVE_INFINITY;
		const concurrency = Math.max(
			1,
			Math.floor(o.concurrency ?? DEFAULT_PREFETCH_CONCURRENCY),
		);
		const maxBytes = Math.max(
			1,
			o.maxRequestBytes ?? DEFAULT_PREFETCH_REQUEST_BYTES,
		);
		const all = storedRangesOf(disk, items).filter(
			(w) => sources[w.layer] !== undefined,
		);
		// Skip what is cached or in flight already (checked in batches: disk-cache lookups).
		const wanted: Wanted[] = [];
		for (let i = 0; i < all.length; i += 64) {
			if (o.signal?.aborted) {
				r.stoppedBy = "abort";
				return end();
			}
			const batch = all.slice(i, i + 64);
			const had = await Promise.all(
				batch.map((w) => (sources[w.layer] as ChunkedSource).holds(w.range)),
			);
			batch.forEach((w, k) => {
				if (had[k]) r.alreadyHad++;
				else wanted.push(w);
			});
		}
		const groups = groupRequests(wanted, maxBytes);
		let next = 0;
		let requested = 0;
		const worker = async (): Promise<void> => {
			while (r.stoppedBy === "done" && next < groups.length) {
				if (o.signal?.aborted) {
					r.stoppedBy = "abort";
					return;
				}
				let g = groups[next++] as Wanted[];
				let bytes = 0;
				for (const w of g) bytes += w.range.length;
				if (requested + bytes > budget) {
					// Keep the chunks of the group that fit, from its first (trace-order) chunk on.
					const fit: Wanted[] = [];
					let b = 0;
					for (const w of g) {
						if (requested + b + w.range.length > budget) break;
						fit.push(w);
						b += w.range.length;
					}
					r.stoppedBy = "budget";
					if (fit.length === 0) return;
					g = fit;
					bytes = b;
				}
				requested += bytes;
				const src = sources[(g[0] as Wanted).layer] as ChunkedSource;
				const got = await src.prefetch(g.map((w) => w.range));
				r.chunks += got.chunks;
				r.bytes += got.bytes;
				r.requests += got.requests;
				r.alreadyHad += g.length - got.chunks;
			}
		};
		await Promise.all(
			Array.from({ length: Math.min(concurrency, groups.length) }, () =>
				worker().catch((e: unknown) => {
					if (r.stoppedBy === "error") return;
					r.stoppedBy = "error";
					r.error = e instanceof Error ? e.message : String(e);
				}),
			),
		);
		return end();
	} catch (e) {
		r.stoppedBy = "error";
		r.error = e instanceof Error ? e.message : String(e);
		return end();
	}
}

/** What prefetchMetadata did: the prefetches summed up, and the chunks the walk found. */
export interface MetadataPrefetchResult extends PrefetchResult {
	fsType: string;
	/**
	 * Disk chunks the file-system walk named (prefetched, had already, or left by a bound), not
	 * counting the gap chunks fetched between them.
	 */
	metadataChunks: number;
}

export interface MetadataPrefetchOptions extends PrefetchOptions {
	/** Bound on the chunks named (default: 256 MiB worth of chunks). */
	maxChunks?: number;
	/** Bound on bytes the walk reads to parse (inode tables, directories); default 64 MiB. */
	maxReadBytes?: number;
	/**
	 * Gaps of at most this many chunks between named chunks are fetched too, so both ends go in
	 * one request (directory blocks lie among file data); default 2, 0 = none.
	 */
	gapChunks?: number;
}

/**
 * `chunks` with the gaps of at most `gap` chunks to their nearest named neighbour above (in
 * `named`, which already holds `chunks`) filled in: each gap chunk right after the chunk below it.
 * Adds what it fills to `named`.
 */
export function fillGaps(
	chunks: readonly number[],
	named: Set<number>,
	gap: number,
): number[] {
	if (gap <= 0) return [...chunks];
	const out: number[] = [];
	for (const c of chunks) {
		out.push(c);
		let next = -1;
		for (let k = 1; k <= gap + 1; k++)
			if (named.has(c + k)) {
				next = c + k;
				break;
			}
		if (next < 0) continue;
		for (let k = c + 1; k < next; k++) {
			named.add(k);
			out.push(k);
		}
	}
	return out;
}

/** The items for disk chunks: each from the layer the merged view shows it from. */
export function itemsOfChunks(
	disk: VirtualDisk,
	chunks: readonly number[],
): PrefetchItem[] {
	const out: PrefetchItem[] = [];
	for (const chunk of chunks) {
		const layer = disk.layerOf(chunk);
		if (layer >= 0) out.push({ layer, chunk });
	}
	return out;
}

/**
 * Prefetches a file system's metadata without a trace: walks it (src/prefetch/ext4-meta.ts,
 * erofs-meta.ts) reading what it must through the disk (the superblock and descriptors: demand
 * reads of a few chunks; inode tables and directories after prefetching them), and prefetches
 * what it found, superblock and descriptors first. Meant to run concurrently with the mount, not
 * awaited before it. Never rejects; a "raw" disk or local (non-chunked) layers do nothing.
 */
export async function prefetchMetadata(
	disk: VirtualDisk,
	fsType: string,
	o: MetadataPrefetchOptions = {},
): Promise<MetadataPrefetchResult> {
	const r: MetadataPrefetchResult = {
		fsType,
		metadataChunks: 0,
		...emptyResult(),
	};
	const end = stopwatch(r);
	if (
		(fsType !== "ext4" && fsType !== "erofs") ||
		!disk.layers.some((l) => isChunkedSource(l.source))
	)
		return end();
	const maxChunks =
		o.maxChunks ?? Math.max(1, Math.floor((256 << 20) / disk.chunkSize));
	const named = new Set<number>();
	let budget = o.budgetBytes ?? Number.POSITIVE_INFINITY;
	const add = (p: PrefetchResult) => {
		r.chunks += p.chunks;
		r.bytes += p.bytes;
		r.requests += p.requests;
		r.alreadyHad += p.alreadyHad;
		budget -= p.bytes;
		if (p.stoppedBy !== "done" && r.stoppedBy === "done") {
			r.stoppedBy = p.stoppedBy;
			if (p.error !== undefined) r.error = p.error;
		}
	};
	/** Prefetches the chunks of `ranges` not named before (all of them, in order). */
	const fetch = async (ranges: readonly DiskRange[]) => {
		if (r.stoppedBy !== "done") return;
		const fresh = chunksOf(
			ranges,
			disk.chunkSize,
			disk.chunkCount,
			maxChunks,
		).filter((c) => !named.has(c));
		const room = fresh.slice(0, Math.max(0, maxChunks - named.size));
		for (const c of room) named.add(c);
		r.metadataChunks += room.length;
		if (room.length === 0) return;
		const filled = fillGaps(room, named, o.gapChunks ?? 2);
		add(
			await prefetchChunks(disk, itemsOfChunks(disk, filled), {
				...o,
				budgetBytes: budget,
			}),
		);
	};
	try {
		const walk = fsType === "ext4" ? ext4MetadataRanges : erofsMetadataRanges;
		const ranges = await walk((at, n) => disk.read(at, n), {
			diskSize: disk.size,
			maxReadBytes: o.maxReadBytes,
			maxBytes: maxChunks * disk.chunkSize,
			beforeRead: fetch,
		});
		if (o.signal?.aborted && r.stoppedBy === "done") r.stoppedBy = "abort";
		await fetch(ranges);
	} catch (e) {
		if (r.stoppedBy === "done") {
			r.stoppedBy = "error";
			r.error = e instanceof Error ? e.message : String(e);
		}
	}
	return end();
}

function emptyResult(): PrefetchResult {
	return {
		chunks: 0,
		bytes: 0,
		requests: 0,
		alreadyHad: 0,
		stoppedBy: "done",
		ms: 0,
	};
}

/** From now: a function that sets `r.ms` to the time since (to 0.1 ms) and returns `r`. */
function stopwatch<T extends { ms: number }>(r: T): () => T {
	const t0 = performance.now();
	return () => {
		r.ms = Math.round((performance.now() - t0) * 10) / 10;
		return r;
	};
}
