/**
 * Bounds the audit records (and log lines) a flood of denials produces: per client key and window
 * (10 s), the first `full` (5) denials are written as they are; the rest are only counted, and one
 * summary record — the last denial's fields, `count` = how many it stands for, and a detail saying
 * so — is written when the window ends. A client being refused therefore costs at most `full` + 1
 * records per window, however fast it asks; releases and admin actions are never coalesced. The
 * table of clients is bounded too: the oldest window is closed (summarised) early to make room.
 * Pure; the clock comes in.
 */
import type { AuditRecord } from "./audit-record.js";

export interface CoalescerOptions {
	windowMs: number;
	/** Denials per client and window written one by one. */
	full: number;
	/** Clients tracked at once. */
	maxClients: number;
}

export const DEFAULT_COALESCING: CoalescerOptions = {
	windowMs: 10_000,
	full: 5,
	maxClients: 10_000,
};

interface Window {
	key: string;
	startMs: number;
	written: number;
	counted: number;
	last?: AuditRecord;
	lastMs: number;
}

export class DenialCoalescer {
	/** Open windows in order of their start (re-inserted when a new window starts). */
	readonly #windows = new Map<string, Window>();

	constructor(private readonly o: CoalescerOptions = DEFAULT_COALESCING) {}

	/** Open windows (for tests). */
	get size(): number {
		return this.#windows.size;
	}

	/**
	 * A denial of the client with this key: the records to write now, in order — the denial
	 * itself, or nothing when it is only counted; before it, the summary of the client's previous
	 * window or of a window closed early for room.
	 */
	offer(key: string, r: AuditRecord, nowMs: number): AuditRecord[] {
		const out: AuditRecord[] = [];
		let w = this.#windows.get(key);
		if (w && nowMs >= w.startMs + this.o.windowMs) {
			this.#close(w, out);
			w = undefined;
		}
		if (!w) {
			while (this.#windows.size >= this.o.maxClients) {
				const oldest = this.#windows.values().next().value as Window;
				this.#close(oldest, out);
			}
			w = { key, startMs: nowMs, written: 0, counted: 0, lastMs: nowMs };
			this.#windows.set(key, w);
		}
		if (w.written < this.o.full) {
			w.written++;
			out.push(r);
		} else {
			w.counted++;
			w.last = r;
			w.lastMs = nowMs;
		}
		return out;
	}

	/** Summaries of the windows that ended by `nowMs`. */
	due(nowMs: number): AuditRecord[] {
		const out: AuditRecord[] = [];
		for (const w of this.#windows.values()) {
			if (nowMs < w.startMs + this.o.windowMs) break;
			this.#close(w, out);
		}
		return out;
	}

	/** Summaries of every open window (at shutdown). */
	drain(): AuditRecord[] {
		const out: AuditRecord[] = [];
		for (const w of [...this.#windows.values()]) this.#close(w, out);
		return out;
	}

	#close(w: Window, out: AuditRecord[]): void {
		this.#windows.delete(w.key);
		if (w.counted === 0 || !w.last) return;
		const last = w.last;
		const what = last.detail ?? last.reasons?.join("; ") ?? "";
		out.push({
			...last,
			count: w.counted,
			detail: `${w.counted} more denial${w.counted === 1 ? "" : "s"} of this client in ${Math.max(1, Math.round((w.lastMs - w.startMs) / 1000))} s, counted, not written one by one; the last: ${what}`,
		});
	}
}
