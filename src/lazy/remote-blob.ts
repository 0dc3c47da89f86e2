/**
 * One sealed layer blob in a registry, read lazily: each chunk's stored bytes are looked up in the
 * memory and disk caches, joined to a fetch already in flight, or queued; queued chunks that are
 * adjacent in the blob are fetched with one range request (up to a size bound), with a bound on
 * concurrent requests shared by the whole image. Sequential reading grows a read-ahead window.
 * Nothing here trusts the bytes: the sealed layer authenticates every chunk and asks again with
 * `fresh` when one fails, which bypasses and then overwrites the caches.
 */

import type { Descriptor } from "../oci/digest.js";
import { readRange } from "../registry/blob-download.js";
import type { RegistryClient } from "../registry/client.js";
import type {
	ChunkedSource,
	PrefetchRun,
	StoredRange,
} from "../storage/source.js";
import type { ChunkCache } from "./chunk-cache.js";
import { hedgedFetch, StallError } from "./hedged-fetch.js";
import type { Limiter } from "./limiter.js";
import type { StallLog } from "./stall-log.js";
import type { LazyStats } from "./stats.js";

export interface LazyTuning {
	/** Largest single range request. */
	maxRequestBytes: number;
	/** Largest read-ahead window. */
	readAheadMaxBytes: number;
	/**
	 * Largest single read-ahead request: a window is fetched as several requests of this size in
	 * parallel (within the limiter's speculative slots) rather than one large one.
	 */
	aheadRequestBytes: number;
	/** Consecutive sequential reads before read-ahead starts. */
	readAheadAfter: number;
	/** A fetch with no progress (headers, body bytes) for this long fails: the read gets EIO. */
	stallMs: number;
	/** A request with no progress for this long is re-issued (hedged); 0 = never. */
	hedgeMs: number;
	/**
	 * A demand read that joined a speculative fetch (read-ahead, prefetch) still unanswered after
	 * this long (or twice the median request latency, if longer) issues its own request for just
	 * its chunk; the first answer wins.
	 */
	promoteMs: number;
}

export const DEFAULT_TUNING: LazyTuning = {
	maxRequestBytes: 4 << 20,
	readAheadMaxBytes: 16 << 20,
	aheadRequestBytes: 4 << 20,
	readAheadAfter: 2,
	stallMs: 5000,
	hedgeMs: 1000,
	promoteMs: 30,
};

/** What the blobs of one image share. */
export interface LazyContext {
	client: RegistryClient;
	repo: string;
	stats: LazyStats;
	memory: ChunkCache;
	disk?: ChunkCache;
	limiter: Limiter;
	tuning: LazyTuning;
	/** Reports stalled requests (first at once, then summed up). */
	stallLog?: StallLog;
	/** Set when the image is closed: late fetches are dropped, not stored. */
	closed?: boolean;
}

/** Why a chunk is fetched: a reader waits for it, sequential read-ahead, or prefetch. */
type WantKind = "demand" | "ahead" | "prefetch";

interface Want {
	range: StoredRange;
	key: string;
	kind: WantKind;
	resolve: (b: Buffer) => void;
	reject: (e: unknown) => void;
}

/** A sequential reader's reads may land this far from where the last one ended. */
const SEQUENTIAL_SLACK = 1 << 20;

export class RemoteBlob implements ChunkedSource {
	readonly name: string;
	readonly size: number;
	readonly #inflight = new Map<string, Promise<Buffer>>();
	readonly #metaKeys = new Set<string>();
	/** In-flight promises of speculative fetches (read-ahead, prefetch). */
	readonly #speculative = new WeakSet<Promise<Buffer>>();
	/** Keys fetched by prefetch and not yet read on demand (for prefetchUsed). */
	readonly #prefetched = new Set<string>();
	#pending: Want[] = [];
	#flushQueued = false;
	#chunkMap: readonly StoredRange[] = [];
	#lastEnd = -1;
	#streak = 0;
	#streakBytes = 0;
	#aheadEnd = 0;

	constructor(
		private readonly ctx: LazyContext,
		readonly blob: Descriptor,
		name: string,
	) {
		this.name = name;
		this.size = blob.size;
	}

	#key(r: StoredRange): string {
		return `${this.blob.digest}/${r.offset}+${r.length}`;
	}

	/** Metadata (header, trailer, index): cached like chunks, fetched alone. */
	async read(offset: number, length: number): Promise<Buffer> {
		const range = { offset, length };
		const key = this.#key(range);
		this.#metaKeys.add(key);
		const shared = this.#inflight.get(key);
		if (shared) return shared;
		const p = (async () => {
			const cached = await this.#cached(key, length);
			if (cached && cached.length === length) return cached;
			const bytes = await this.ctx.limiter.run(() =>
				this.#hedged(offset, length),
			);
			this.ctx.stats.metadataRequests++;
			this.ctx.stats.metadataBytesFetched += length;
			await this.#store(key, bytes);
			return bytes;
		})();
		this.#track(key, p);
		return p;
	}

	async forgetMetadata(): Promise<void> {
		this.ctx.stats.refetches++;
		for (const key of this.#metaKeys) {
			this.#inflight.delete(key);
			await this.ctx.memory.delete(key);
			await this.ctx.disk?.delete(key);
		}
	}

	setChunkMap(ranges: readonly StoredRange[]): void {
		this.#chunkMap = ranges;
	}

	readStored(ranges: readonly StoredRange[], fresh = false): Promise<Buffer[]> {
		const out: Promise<Buffer>[] = [];
		const misses: { range: StoredRange; key: string; d: Deferred }[] = [];
		for (const range of ranges) {
			const key = this.#key(range);
			const shared = fresh ? undefined : this.#inflight.get(key);
			if (shared) {
				this.ctx.stats.sharedFetches++;
				this.#usedPrefetched(key);
				out.push(
					this.#speculative.has(shared)
						? this.#joinSpeculative(shared, range, key)
						: shared,
				);
				continue;
			}
			if (fresh) this.ctx.stats.refetches++;
			const d = deferred();
			this.#track(key, d.promise);
			misses.push({ range, key, d });
			out.push(d.promise);
		}
		// Cache lookups for the whole call first, then every miss is queued in one turn, so
		// adjacent misses end up in one range request.
		void Promise.all(
			misses.map((m) =>
				fresh ? undefined : this.#cached(m.key, m.range.length),
			),
		).then(
			(hits) => {
				misses.forEach((m, i) => {
					const hit = hits[i];
					if (hit && hit.length === m.range.length) {
						this.#usedPrefetched(m.key);
						m.d.resolve(hit);
					} else
						this.#enqueue(m.range, m.key, "demand").then(
							m.d.resolve,
							m.d.reject,
						);
				});
			},
			(e) => {
				for (const m of misses) m.d.reject(e);
			},
		);
		if (!fresh) this.#readAhead(ranges);
		return Promise.all(out);
	}

	#usedPrefetched(key: string): void {
		if (this.#prefetched.delete(key)) this.ctx.stats.prefetchUsed++;
	}

	/**
	 * A demand read of a chunk a speculative fetch is bringing: it waits for that fetch only
	 * `promoteMs` (or twice the median request latency); then (or at once when the speculative fetch fails) it asks for just its chunk
	 * with a demand request, and takes whichever answers first.
	 */
	#joinSpeculative(
		shared: Promise<Buffer>,
		range: StoredRange,
		key: string,
	): Promise<Buffer> {
		const stats = this.ctx.stats;
		stats.demandJoinedSpeculative++;
		return new Promise<Buffer>((resolve, reject) => {
			let own: Promise<Buffer> | undefined;
			let failures = 0;
			let settled = false;
			const ok = (b: Buffer) => {
				if (settled) return;
				settled = true;
				clearTimeout(timer);
				resolve(b);
			};
			const fail = (e: unknown) => {
				if (settled) return;
				failures++;
				if (own === undefined) promote();
				else if (failures >= 2) {
					settled = true;
					reject(e);
				}
			};
			const promote = () => {
				if (settled || own) return;
				stats.demandPromoted++;
				own = this.#enqueue(range, key, "demand");
				own.then(ok, fail);
			};
			// Not before a typical request could have answered: on a distant registry a
			// speculative request issued just before the read is not late yet.
			const delay = Math.max(
				this.ctx.tuning.promoteMs,
				2 * stats.typicalLatencyMs(),
			);
			const timer = setTimeout(promote, delay);
			shared.then(ok, fail);
		});
	}

	/** Whether the caches hold `key` (no hit counted) or a fetch for it is in flight. */
	async holds(range: StoredRange): Promise<boolean> {
		const key = this.#key(range);
		if (this.#inflight.has(key)) return true;
		try {
			const m = await this.ctx.memory.get(key, range.length);
			if (m?.length === range.length) return true;
			const d = await this.ctx.disk?.get(key, range.length);
			return d?.length === range.length;
		} catch {
			return false;
		}
	}

	async prefetch(ranges: readonly StoredRange[]): Promise<PrefetchRun> {
		const done: PrefetchRun = { chunks: 0, bytes: 0, requests: 0 };
		if (this.ctx.closed) return done;
		// Split at chunks in flight meanwhile: every piece is one request of adjacent chunks.
		const groups: Want[][] = [];
		let group: Want[] = [];
		let end = -1;
		for (const range of ranges) {
			const key = this.#key(range);
			if (this.#inflight.has(key) || range.offset !== end) {
				if (group.length) groups.push(group);
				group = [];
			}
			end = range.offset + range.length;
			if (this.#inflight.has(key)) continue;
			const d = deferred();
			d.promise.catch(() => {}); // speculation: a failure is retried on demand
			this.#track(key, d.promise);
			this.#speculative.add(d.promise);
			this.#prefetched.add(key);
			d.promise.catch(() => this.#prefetched.delete(key));
			group.push({
				range,
				key,
				kind: "prefetch",
				resolve: d.resolve,
				reject: d.reject,
			});
		}
		if (group.length) groups.push(group);
		await Promise.all(
			groups.map(async (g) => {
				await this.#fetch(g);
				done.requests++;
				done.chunks += g.length;
				for (const w of g) done.bytes += w.range.length;
			}),
		);
		return done;
	}

	async #cached(key: string, length: number): Promise<Buffer | undefined> {
		const m = await this.ctx.memory.get(key, length);
		if (m) {
			this.ctx.stats.memoryHits++;
			return m;
		}
		const d = await this.ctx.disk?.get(key, length);
		if (d) this.ctx.stats.diskHits++;
		return d;
	}

	/**
	 * Keeps fetched bytes for later reads: every chunk in memory (reads that are not aligned to
	 * chunks ask for their edge chunks twice), and on disk when there is a disk cache. A cache is
	 * only an optimisation: failures are ignored, and nothing is stored once the image is closed
	 * (read-ahead may land after that).
	 */
	async #store(key: string, bytes: Buffer): Promise<void> {
		if (this.ctx.closed) return;
		try {
			await this.ctx.memory.put(key, bytes);
			await this.ctx.disk?.put(key, bytes);
		} catch {
			// a closed or failing cache: the bytes were delivered; nothing else to do
		}
	}

	#track(key: string, p: Promise<Buffer>): void {
		this.#inflight.set(key, p);
		const done = () => {
			if (this.#inflight.get(key) === p) this.#inflight.delete(key);
		};
		p.then(done, done);
	}

	#enqueue(range: StoredRange, key: string, kind: WantKind): Promise<Buffer> {
		return new Promise<Buffer>((resolve, reject) => {
			this.#pending.push({ range, key, kind, resolve, reject });
			if (!this.#flushQueued) {
				this.#flushQueued = true;
				// Wait one turn so reads issued together are coalesced together.
				setImmediate(() => this.#flush());
			}
		});
	}

	#flush(): void {
		this.#flushQueued = false;
		const wants = this.#pending.sort((a, b) => a.range.offset - b.range.offset);
		this.#pending = [];
		let group: Want[] = [];
		let groupEnd = -1;
		let groupBytes = 0;
		let groupAhead = true;
		const t = this.ctx.tuning;
		for (const w of wants) {
			const adjacent = w.range.offset === groupEnd;
			const ahead = groupAhead && w.kind === "ahead";
			const max = ahead
				? Math.min(t.aheadRequestBytes, t.maxRequestBytes)
				: t.maxRequestBytes;
			if (!adjacent || groupBytes + w.range.length > max) {
				if (group.length) this.#fetch(group).catch(() => {});
				group = [];
				groupBytes = 0;
				groupAhead = true;
			}
			groupAhead &&= w.kind === "ahead";
			group.push(w);
			groupBytes += w.range.length;
			groupEnd = w.range.offset + w.range.length;
		}
		if (group.length) this.#fetch(group).catch(() => {});
	}

	/** One range request for a group of adjacent chunks; settles every want, rejects on failure. */
	#fetch(group: Want[]): Promise<void> {
		const first = group[0] as Want;
		const last = group[group.length - 1] as Want;
		const start = first.range.offset;
		const length = last.range.offset + last.range.length - start;
		const speculative = group.every((w) => w.kind !== "demand");
		return this.ctx.limiter
			.run(() => this.#hedged(start, length), speculative)
			.then(
				async (bytes) => {
					const s = this.ctx.stats;
					s.rangeRequests++;
					s.chunksFetched += group.length;
					s.chunkBytesFetched += length;
					if (group.some((w) => w.kind === "prefetch")) s.prefetchRequests++;
					for (const w of group) {
						const at = w.range.offset - start;
						const piece = bytes.subarray(at, at + w.range.length);
						if (w.kind === "ahead") s.readAheadChunks++;
						if (w.kind === "prefetch") {
							s.prefetchChunks++;
							s.prefetchBytes += w.range.length;
						}
						w.resolve(piece);
						await this.#store(w.key, piece);
					}
				},
				(e) => {
					for (const w of group) w.reject(e);
					throw e;
				},
			);
	}

	/** One range from the registry, hedged when it stalls and bounded in how long it may wait. */
	#hedged(offset: number, length: number): Promise<Buffer> {
		const { client, repo, stats, tuning } = this.ctx;
		const what = `blob ${this.blob.digest.slice(0, 19)}… bytes ${offset}-${offset + length - 1}`;
		return hedgedFetch(
			({ signal, progress }) =>
				readRange(client, repo, this.blob, offset, length, {
					signal,
					progress,
					once: true,
				}),
			{
				stallMs: tuning.stallMs,
				hedgeMs: tuning.hedgeMs,
				retry: client.retry,
				what,
				onStall: (hedged) => {
					stats.stalls++;
					if (hedged) stats.hedges++;
					this.ctx.stallLog?.stalled(what, tuning.hedgeMs, hedged);
				},
				onRetry: (e, delay) => client.onRetry?.(e, delay),
			},
		).catch((e: unknown) => {
			if (e instanceof StallError) stats.stallFailures++;
			throw e;
		});
	}

	/**
	 * Detects sequential reading and fetches ahead of it: nothing until `readAheadAfter`
	 * consecutive sequential reads, then a window as large as the sequential stretch read so far
	 * (capped), so scattered reads never pay for speculation.
	 */
	#readAhead(ranges: readonly StoredRange[]): void {
		const first = ranges[0];
		const last = ranges[ranges.length - 1];
		if (!first || !last || this.#chunkMap.length === 0) return;
		const end = last.offset + last.length;
		const bytes = end - first.offset;
		if (
			this.#lastEnd >= 0 &&
			Math.abs(first.offset - this.#lastEnd) <= SEQUENTIAL_SLACK
		) {
			this.#streak++;
			this.#streakBytes += bytes;
		} else {
			this.#streak = 0;
			this.#streakBytes = bytes;
			this.#aheadEnd = 0;
		}
		this.#lastEnd = end;
		const t = this.ctx.tuning;
		if (this.#streak < t.readAheadAfter) return;
		const window = Math.min(t.readAheadMaxBytes, this.#streakBytes);
		const from = Math.max(end, this.#aheadEnd);
		const to = end + window;
		if (from >= to) return;
		const ahead: { range: StoredRange; key: string; d: Deferred }[] = [];
		for (
			let i = lowerBound(this.#chunkMap, from);
			i < this.#chunkMap.length;
			i++
		) {
			const range = this.#chunkMap[i] as StoredRange;
			if (range.offset >= to) break;
			this.#aheadEnd = range.offset + range.length;
			const key = this.#key(range);
			if (this.#inflight.has(key)) continue;
			const d = deferred();
			d.promise.catch(() => {}); // speculation: a failure is retried on demand
			this.#track(key, d.promise);
			this.#speculative.add(d.promise);
			ahead.push({ range, key, d });
		}
		void Promise.all(
			ahead.map((a) => this.#cached(a.key, a.range.length)),
		).then(
			(hits) => {
				ahead.forEach((a, i) => {
					const hit = hits[i];
					if (hit && hit.length === a.range.length) a.d.resolve(hit);
					else
						this.#enqueue(a.range, a.key, "ahead").then(
							a.d.resolve,
							a.d.reject,
						);
				});
			},
			(e) => {
				for (const a of ahead) a.d.reject(e);
			},
		);
	}

	async close(): Promise<void> {}
}

/** First index whose range starts at or after `offset`. */
function lowerBound(ranges: readonly StoredRange[], offset: number): number {
	let lo = 0;
	let hi = ranges.length;
	while (lo < hi) {
		const mid = (lo + hi) >>> 1;
		if ((ranges[mid] as StoredRange).offset < offset) lo = mid + 1;
		else hi = mid;
	}
	return lo;
}

interface Deferred {
	promise: Promise<Buffer>;
	resolve: (b: Buffer) => void;
	reject: (e: unknown) => void;
}

function deferred(): Deferred {
	let resolve!: (b: Buffer) => void;
	let reject!: (e: unknown) => void;
	const promise = new Promise<Buffer>((res, rej) => {
		resolve = res;
		reject = rej;
	});
	return { promise, resolve, reject };
}
