/**
 * Progress on stderr. Text: on a terminal one line rewritten at most five times a second; in a
 * pipe or a log, a line when the phase changes or its percentage enters a new quarter. JSON (with
 * --json): one object per line, `{"progress": {...}}`, at most five a second per phase. In every
 * mode a phase that has printed nothing for a while gets a heartbeat — the last state again with
 * the seconds spent in the phase — so long steps never look stuck. Silent with --quiet.
 */
import { layerLabel } from "../layer-label.js";
import type { ProgressEvent } from "../progress.js";
import { formatBytes } from "./common.js";

export type ProgressMode = "text" | "json" | "off";

export interface ProgressOptions {
	/** Default: text on a terminal or not as stderr is. */
	tty?: boolean;
	/** How long a phase may stay silent before a heartbeat (default 5 s, 1 s on a terminal). */
	heartbeatMs?: number;
	write?: (s: string) => void;
	now?: () => number;
}

const REWRITE_MS = 200;

/** "layer 2/3: sealing", or just the phase. */
export function progressLabel(e: ProgressEvent): string {
	return e.layer ? `${layerLabel(e.layer)}: ${e.phase}` : e.phase;
}

function amount(n: number, e: ProgressEvent): string {
	return !e.unit || e.unit === "bytes" ? formatBytes(n) : String(n);
}

function skippedText(e: ProgressEvent): string {
	const s = e.skipped;
	if (!s || s.exists + s.mounted === 0) return "";
	const n = s.exists + s.mounted;
	return `; ${n} blob${n === 1 ? "" : "s"} not sent (${formatBytes(s.bytes)}): ${s.exists} already there, ${s.mounted} mounted`;
}

/** One line of text for an event (pure). */
export function describeProgress(e: ProgressEvent): string {
	const unit = e.unit && e.unit !== "bytes" ? ` ${e.unit}` : "";
	const head = progressLabel(e);
	if (e.total > 0) {
		const pct = Math.min(100, Math.floor((e.done / e.total) * 100));
		return `${head}: ${pct}% (${amount(e.done, e)} / ${amount(e.total, e)}${unit})${skippedText(e)}`;
	}
	if (e.done > 0)
		return `${head}: ${amount(e.done, e)}${unit} so far${skippedText(e)}`;
	return `${head}…${skippedText(e)}`;
}

/** The JSON line's object for an event (pure). */
export function progressJson(
	e: ProgressEvent,
	seconds: number,
	heartbeat: boolean,
): Record<string, unknown> {
	return {
		progress: {
			phase: e.phase,
			...(e.layer
				? {
						layer: e.layer.number,
						layers: e.layer.of,
						...(e.layer.from !== undefined ? { fromLayer: e.layer.from } : {}),
					}
				: {}),
			done: e.done,
			total: e.total,
			unit: e.unit ?? "bytes",
			...(e.skipped ? { skipped: e.skipped } : {}),
			seconds: Math.round(seconds * 10) / 10,
			...(heartbeat ? { heartbeat: true } : {}),
		},
	};
}

export class Progress {
	readonly #mode: ProgressMode;
	readonly #tty: boolean;
	readonly #heartbeatMs: number;
	readonly #write: (s: string) => void;
	readonly #now: () => number;
	#current?: ProgressEvent;
	#label = "";
	#phaseStarted = 0;
	#lastWrite = 0;
	#lastStep = -1;
	#timer?: NodeJS.Timeout;

	/** `enabled` false (--quiet) prints nothing; `json` prints JSON lines. */
	constructor(enabled: boolean, json = false, o: ProgressOptions = {}) {
		this.#mode = enabled ? (json ? "json" : "text") : "off";
		this.#tty = o.tty ?? Boolean(process.stderr.isTTY);
		this.#heartbeatMs = o.heartbeatMs ?? (this.#tty && !json ? 1000 : 5000);
		this.#write = o.write ?? ((s) => process.stderr.write(s));
		this.#now = o.now ?? Date.now;
	}

	/** For callers that count plain bytes of one phase. */
	update(phase: string, done: number, total: number): void {
		this.report({ phase, done, total });
	}

	report(e: ProgressEvent): void {
		if (this.#mode === "off") return;
		const now = this.#now();
		const label = progressLabel(e);
		const changed = label !== this.#label;
		if (changed) {
			this.#label = label;
			this.#phaseStarted = now;
			this.#lastStep = -1;
		}
		const same =
			!changed &&
			this.#current !== undefined &&
			JSON.stringify(this.#current) === JSON.stringify(e);
		this.#current = e;
		this.#startTimer();
		if (same) return; // nothing new: heartbeats keep it alive
		const finished = e.total > 0 && e.done >= e.total;
		if (this.#mode === "json" || this.#tty) {
			if (changed || finished || now - this.#lastWrite >= REWRITE_MS)
				this.#emit(e, now, false);
			return;
		}
		const step =
			e.total > 0
				? Math.floor(Math.min(100, (e.done / e.total) * 100) / 25)
				: -1;
		if (changed || step !== this.#lastStep) {
			this.#lastStep = step;
			this.#emit(e, now, false);
		}
	}

	/** Stops the heartbeat and clears the terminal line. */
	done(): void {
		if (this.#timer) clearInterval(this.#timer);
		this.#timer = undefined;
		if (this.#mode === "text" && this.#tty && this.#label !== "")
			this.#write("\r\x1b[K");
		this.#current = undefined;
		this.#label = "";
	}

	#startTimer(): void {
		if (this.#timer) return;
		const tick = Math.min(this.#heartbeatMs, 1000);
		this.#timer = setInterval(() => this.#heartbeat(), tick);
		this.#timer.unref();
	}

	#heartbeat(): void {
		const e = this.#current;
		if (!e) return;
		const now = this.#now();
		if (now - this.#lastWrite >= this.#heartbeatMs) this.#emit(e, now, true);
	}

	#emit(e: ProgressEvent, now: number, heartbeat: boolean): void {
		this.#lastWrite = now;
		const seconds = (now - this.#phaseStarted) / 1000;
		if (this.#mode === "json") {
			this.#write(`${JSON.stringify(progressJson(e, seconds, heartbeat))}\n`);
			return;
		}
		const text =
			heartbeat || (this.#tty && seconds >= 2)
				? `${describeProgress(e)} [${Math.floor(seconds)} s]`
				: describeProgress(e);
		this.#write(this.#tty ? `\r${text}\x1b[K` : `${text}\n`);
	}
}
