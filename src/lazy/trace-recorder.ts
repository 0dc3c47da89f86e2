/**
 * Recording a start-up trace (`dadi-guest serve --record-trace`): every chunk of the virtual disk
 * the workload reads, once, in first-read order, with the time since recording began — until a
 * time budget, a byte budget (chunks × chunk size) or an explicit stop.
 */

import { MAX_TRACE_ENTRIES, type TraceEntry } from "../format/trace.js";
import type { Run, VirtualDisk } from "../storage/virtual-disk.js";

export interface TraceRecorderOptions {
	/** Stop recording this many ms after the start (default 30 000). */
	budgetMs?: number;
	/** Stop once this many bytes of chunks are recorded. */
	budgetBytes?: number;
	/** Clock (tests). */
	now?: () => number;
	/** Told once when recording stops and why. */
	onStop?: (why: TraceStop) => void;
}

export type TraceStop = "time" | "bytes" | "entries" | "signal" | "close";

export const DEFAULT_TRACE_BUDGET_MS = 30_000;

export class TraceRecorder {
	readonly #entries: TraceEntry[] = [];
	readonly #seen = new Set<number>();
	readonly #start: number;
	readonly #now: () => number;
	readonly #budgetMs: number;
	readonly #budgetBytes: number;
	readonly #timer: NodeJS.Timeout;
	#stopped: TraceStop | undefined;

	constructor(
		readonly chunkSize: number,
		readonly o: TraceRecorderOptions = {},
	) {
		this.#now = o.now ?? (() => performance.now());
		this.#start = this.#now();
		this.#budgetMs = o.budgetMs ?? DEFAULT_TRACE_BUDGET_MS;
		this.#budgetBytes = o.budgetBytes ?? Number.POSITIVE_INFINITY;
		this.#timer = setTimeout(() => this.stop("time"), this.#budgetMs);
		this.#timer.unref();
	}

	/** Records the chunks of a run (layer, virtual-disk chunk) not seen before. */
	observe(run: Run & { kind: "data" }): void {
		if (this.#stopped) return;
		const ms = Math.max(0, Math.floor(this.#now() - this.#start));
		if (ms >= this.#budgetMs) {
			this.stop("time");
			return;
		}
		for (let c = run.first; c < run.first + run.count; c++) {
			const k = run.layer * 2 ** 32 + c;
			if (this.#seen.has(k)) continue;
			const full =
				this.#entries.length >= MAX_TRACE_ENTRIES
					? "entries"
					: (this.#entries.length + 1) * this.chunkSize > this.#budgetBytes
						? "bytes"
						: undefined;
			if (full) {
				this.stop(full);
				return;
			}
			this.#seen.add(k);
			this.#entries.push({ layer: run.layer, chunk: c, ms });
		}
	}

	/** Hooks the recorder into a disk's reads; the returned function unhooks it. */
	attach(disk: VirtualDisk): () => void {
		const prev = disk.onRun;
		disk.onRun = (run) => {
			prev?.(run);
			this.observe(run);
		};
		return () => {
			disk.onRun = prev;
		};
	}

	stop(why: TraceStop): void {
		if (this.#stopped) return;
		this.#stopped = why;
		clearTimeout(this.#timer);
		this.o.onStop?.(why);
	}

	get stoppedBy(): TraceStop | undefined {
		return this.#stopped;
	}

	get entries(): readonly TraceEntry[] {
		return this.#entries;
	}
}
