/**
 * What the lazy reader did, for `--stats FILE`, tests and benchmarks: what came from the registry
 * (chunks, bytes, requests, their latency), what came from the caches, and what had to be fetched
 * again because it did not authenticate.
 */
import { LatencyHistogram } from "../latency-histogram.js";

export interface LazyStatsJson {
	/** Range GETs that returned chunk data. */
	rangeRequests: number;
	/** Chunks fetched from the registry (read-ahead included). */
	chunksFetched: number;
	/** Bytes of chunk data fetched from the registry. */
	chunkBytesFetched: number;
	/** Header, trailer and index bytes fetched (metadata). */
	metadataBytesFetched: number;
	metadataRequests: number;
	/** All body bytes from the registry: manifests, configs, metadata, chunks. */
	bytesFetched: number;
	/** All HTTP exchanges with the registry, token server excluded. */
	requests: number;
	/** Chunks served from memory (read-ahead or recent reads) and from the disk cache. */
	memoryHits: number;
	diskHits: number;
	/** Chunk reads that joined a fetch already in flight. */
	sharedFetches: number;
	/** Chunks fetched ahead of demand by sequential read-ahead. */
	readAheadChunks: number;
	/** Chunks, bytes and range requests fetched by prefetch (src/lazy/prefetch.ts). */
	prefetchChunks: number;
	prefetchBytes: number;
	prefetchRequests: number;
	/** Prefetched chunks later read on demand (from the caches or by joining the prefetch). */
	prefetchUsed: number;
	/** Demand fetches that found every slot taken and waited: count and total ms. */
	demandWaitedForSlot: { count: number; ms: number };
	/** Of those, waits that began while speculation (read-ahead, prefetch) held a slot. */
	demandWaitedBehindSpeculative: number;
	/** Chunk reads that joined a speculative fetch in flight (also counted in sharedFetches). */
	demandJoinedSpeculative: number;
	/**
	 * Of those, reads whose speculative fetch had not answered within the promotion delay (or
	 * failed), so they issued their own demand request for just their chunk (first answer wins).
	 */
	demandPromoted: number;
	/** Chunks (or metadata) fetched again from the origin because they failed to authenticate. */
	refetches: number;
	/** Failed attempts that were retried (429, 5xx, resets, bad Content-Range). */
	retries: number;
	/** Range requests that made no progress for --hedge-after, and how many were re-issued. */
	stalls: number;
	hedges: number;
	/** Fetches that failed because nothing progressed for --stall-timeout (reads got EIO). */
	stallFailures: number;
	/**
	 * The file-system metadata prefetch started at open (`dadi-guest serve`/`run`,
	 * --prefetch-metadata): stoppedBy "running" until it ends, then its result
	 * (src/lazy/prefetch.ts MetadataPrefetchResult). Absent when none was started.
	 */
	metadataPrefetch?: MetadataPrefetchJson;
	latencyMs: {
		p50: number;
		p90: number;
		p99: number;
		max: number;
		count: number;
	};
}

/** MetadataPrefetchResult, or its start while it runs. */
export type MetadataPrefetchJson =
	| { fsType: string; stoppedBy: "running" }
	| {
			fsType: string;
			metadataChunks: number;
			chunks: number;
			bytes: number;
			requests: number;
			alreadyHad: number;
			stoppedBy: "done" | "budget" | "abort" | "error";
			ms: number;
			error?: string;
	  };

export class LazyStats {
	rangeRequests = 0;
	chunksFetched = 0;
	chunkBytesFetched = 0;
	metadataBytesFetched = 0;
	metadataRequests = 0;
	bytesFetched = 0;
	requests = 0;
	memoryHits = 0;
	diskHits = 0;
	sharedFetches = 0;
	readAheadChunks = 0;
	prefetchChunks = 0;
	prefetchBytes = 0;
	prefetchRequests = 0;
	prefetchUsed = 0;
	demandWaits = 0;
	demandWaitMs = 0;
	demandWaitedBehindSpeculative = 0;
	demandJoinedSpeculative = 0;
	demandPromoted = 0;
	refetches = 0;
	retries = 0;
	stalls = 0;
	hedges = 0;
	stallFailures = 0;
	metadataPrefetch?: MetadataPrefetchJson;
	readonly #latency = new LatencyHistogram();

	/** Records a demand fetch's wait for a limiter slot (LimiterHooks.demandWaited). */
	demandWaited(ms: number, behindSpeculative: boolean): void {
		this.demandWaits++;
		this.demandWaitMs += ms;
		if (behindSpeculative) this.demandWaitedBehindSpeculative++;
	}

	#typical = 0;
	#typicalAt = -1;

	/**
	 * The median range-request latency (ms), recomputed every 16 samples: what a request usually
	 * takes here (the promotion delay of a demand read scales with it).
	 */
	typicalLatencyMs(): number {
		const n = this.#latency.count;
		if (this.#typicalAt < 0 || n - this.#typicalAt >= 16) {
			this.#typical = this.#latency.quantile(0.5);
			this.#typicalAt = n;
		}
		return this.#typical;
	}

	/** Records one exchange's latency (ms). */
	latency(ms: number): void {
		this.#latency.record(ms);
	}

	toJSON(): LazyStatsJson {
		return {
			rangeRequests: this.rangeRequests,
			chunksFetched: this.chunksFetched,
			chunkBytesFetched: this.chunkBytesFetched,
			metadataBytesFetched: this.metadataBytesFetched,
			metadataRequests: this.metadataRequests,
			bytesFetched: this.bytesFetched,
			requests: this.requests,
			memoryHits: this.memoryHits,
			diskHits: this.diskHits,
			sharedFetches: this.sharedFetches,
			readAheadChunks: this.readAheadChunks,
			prefetchChunks: this.prefetchChunks,
			prefetchBytes: this.prefetchBytes,
			prefetchRequests: this.prefetchRequests,
			prefetchUsed: this.prefetchUsed,
			demandWaitedForSlot: {
				count: this.demandWaits,
				ms: Math.round(this.demandWaitMs * 10) / 10,
			},
			demandWaitedBehindSpeculative: this.demandWaitedBehindSpeculative,
			demandJoinedSpeculative: this.demandJoinedSpeculative,
			demandPromoted: this.demandPromoted,
			refetches: this.refetches,
			retries: this.retries,
			stalls: this.stalls,
			hedges: this.hedges,
			stallFailures: this.stallFailures,
			...(this.metadataPrefetch
				? { metadataPrefetch: { ...this.metadataPrefetch } }
				: {}),
			latencyMs: this.#latency.quantiles(),
		};
	}
}
