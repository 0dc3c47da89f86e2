/**
 * What `dadi-guest serve` counts: reads asked of the exposure (NBD, FUSE) with a latency histogram,
 * plus the lazy reader's fetch statistics; rendered as JSON (`--stats FILE`) and as Prometheus text
 * (`--metrics tcp:HOST:PORT`).
 */

import { LatencyHistogram } from "../latency-histogram.js";
import type { LazyStats, LazyStatsJson } from "../lazy/stats.js";
import type { BlockSource } from "./block-source.js";

/** Upper bounds of the latency buckets, in seconds (Prometheus convention). */
export const LATENCY_BUCKETS = [
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
	10,
];

export interface GuestStatsJson {
	reads: number;
	readBytes: number;
	readErrors: number;
	readLatencyMs: { p50: number; p99: number; max: number };
	fetched?: LazyStatsJson;
	/** Start-up trace replay (--prefetch) and recording (--record-trace), when asked. */
	trace?: unknown;
	recording?: unknown;
	updatedAt: string;
}

export class GuestMetrics {
	reads = 0;
	readBytes = 0;
	readErrors = 0;
	readSeconds = 0;
	/** Prometheus histogram counts (not cumulative), one per LATENCY_BUCKETS bound. */
	readonly buckets = new Array<number>(LATENCY_BUCKETS.length).fill(0);
	/** Fine-grained latencies for the quantiles in --stats. */
	readonly latency = new LatencyHistogram();

	/** Extra members of the JSON (trace replay and recording state). */
	extra?: () => Pick<GuestStatsJson, "trace" | "recording">;

	constructor(readonly lazy?: LazyStats) {}

	observe(bytes: number, ms: number, ok: boolean): void {
		this.reads++;
		if (ok) this.readBytes += bytes;
		else this.readErrors++;
		const s = ms / 1000;
		this.readSeconds += s;
		this.latency.record(ms);
		const i = LATENCY_BUCKETS.findIndex((b) => s <= b);
		if (i >= 0) this.buckets[i] = (this.buckets[i] ?? 0) + 1;
	}

	/** A latency quantile in ms (within 0.5% of an observed latency, never above the maximum). */
	quantileMs(q: number): number {
		return this.latency.quantile(q);
	}

	toJSON(): GuestStatsJson {
		return {
			reads: this.reads,
			readBytes: this.readBytes,
			readErrors: this.readErrors,
			readLatencyMs: {
				p50: round(this.quantileMs(0.5)),
				p99: round(this.quantileMs(0.99)),
				max: round(this.latency.maxMs),
			},
			...(this.lazy ? { fetched: this.lazy.toJSON() } : {}),
			...this.extra?.(),
			updatedAt: new Date().toISOString(),
		};
	}

	/** Prometheus text exposition format 0.0.4. */
	toPrometheus(): string {
		const out: string[] = [];
		const counter = (name: string, help: string, v: number, labels = "") => {
			out.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`);
			out.push(`${name}${labels} ${v}`);
		};
		counter(
			"dadi_guest_reads_total",
			"Reads asked of the exposure.",
			this.reads,
		);
		counter(
			"dadi_guest_read_bytes_total",
			"Bytes returned by successful reads.",
			this.readBytes,
		);
		counter(
			"dadi_guest_read_errors_total",
			"Reads answered with EIO.",
			this.readErrors,
		);
		out.push(
			"# HELP dadi_guest_read_seconds Latency of reads asked of the exposure.",
			"# TYPE dadi_guest_read_seconds histogram",
		);
		let cumulative = 0;
		LATENCY_BUCKETS.forEach((b, i) => {
			cumulative += this.buckets[i] ?? 0;
			out.push(`dadi_guest_read_seconds_bucket{le="${b}"} ${cumulative}`);
		});
		out.push(`dadi_guest_read_seconds_bucket{le="+Inf"} ${this.reads}`);
		out.push(`dadi_guest_read_seconds_sum ${this.readSeconds}`);
		out.push(`dadi_guest_read_seconds_count ${this.reads}`);
		const l = this.lazy?.toJSON();
		if (l) {
			counter(
				"dadi_lazy_chunks_fetched_total",
				"Chunks fetched from the registry.",
				l.chunksFetched,
			);
			counter(
				"dadi_lazy_bytes_fetched_total",
				"Bytes fetched from the registry.",
				l.bytesFetched,
			);
			counter(
				"dadi_lazy_range_requests_total",
				"Range requests that carried chunk data.",
				l.rangeRequests,
			);
			out.push(
				"# HELP dadi_lazy_cache_hits_total Chunks served from a cache.",
				"# TYPE dadi_lazy_cache_hits_total counter",
				`dadi_lazy_cache_hits_total{cache="memory"} ${l.memoryHits}`,
				`dadi_lazy_cache_hits_total{cache="disk"} ${l.diskHits}`,
			);
			counter(
				"dadi_lazy_refetches_total",
				"Chunks fetched again because they did not authenticate.",
				l.refetches,
			);
			counter(
				"dadi_lazy_retries_total",
				"Registry requests retried.",
				l.retries,
			);
		}
		return `${out.join("\n")}\n`;
	}
}

/** Wraps a source so every read is counted. */
export function meteredSource(
	source: BlockSource,
	metrics: GuestMetrics,
): BlockSource {
	return {
		size: source.size,
		read: async (offset, length) => {
			const started = performance.now();
			try {
				const b = await source.read(offset, length);
				metrics.observe(length, performance.now() - started, true);
				return b;
			} catch (e) {
				metrics.observe(length, performance.now() - started, false);
				throw e;
			}
		},
	};
}

function round(ms: number): number {
	return Math.round(ms * 100) / 100;
}
