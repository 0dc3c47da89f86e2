/**
 * One fetch of a byte range with a bound on how long a reader can wait: every attempt reports
 * progress (response headers, body bytes); an attempt that makes none for `hedgeMs` is hedged by
 * a second, identical request (the first answer wins, the other is aborted); when no attempt has
 * made progress for `stallMs` the fetch fails with a NETWORK error at once, so the block device
 * answers EIO instead of hanging. Transient failures (resets, 429, 5xx, a wrong Content-Range)
 * are retried with backoff, hedges counting as attempts, up to the retry policy's attempts.
 * Nothing here trusts the bytes: the sealed layer authenticates them.
 */
import { DadiError } from "../errors.js";
import {
	backoffMs,
	isTransient,
	type RetryPolicy,
	type TransientError,
} from "../registry/retry.js";

export interface AttemptContext {
	/** Aborted when another attempt won, or the fetch gave up. */
	signal: AbortSignal;
	/** Call on response headers and on every piece of body received. */
	progress: () => void;
}

export interface HedgeOptions {
	/** No progress for this long on any attempt: the fetch fails. */
	stallMs: number;
	/** An attempt with no progress for this long gets a twin; 0 = never hedge. */
	hedgeMs: number;
	retry: RetryPolicy;
	/** What is fetched, for messages ("blob sha256:… bytes 0-65535"). */
	what: string;
	/** An attempt stalled past hedgeMs (`hedged`: a twin was started for it). */
	onStall?: (hedged: boolean) => void;
	onRetry?: (e: TransientError, delayMs: number) => void;
}

/** Raised when a fetch made no progress for `stallMs`. */
export class StallError extends DadiError {}

interface Running {
	ctrl: AbortController;
	last: number;
	stalled: boolean;
}

export function hedgedFetch<T>(
	attempt: (c: AttemptContext) => Promise<T>,
	o: HedgeOptions,
): Promise<T> {
	return new Promise<T>((resolve, reject) => {
		const running = new Set<Running>();
		let started = 0;
		let lastProgress = performance.now();
		let settled = false;
		let backoff: NodeJS.Timeout | undefined;
		const tickMs = Math.max(
			10,
			Math.min(250, (o.hedgeMs > 0 ? o.hedgeMs : o.stallMs) / 4),
		);
		const timer = setInterval(watch, tickMs);

		const finish = (ok: boolean, v: T | unknown) => {
			if (settled) return;
			settled = true;
			clearInterval(timer);
			clearTimeout(backoff);
			for (const r of running) r.ctrl.abort();
			running.clear();
			if (ok) resolve(v as T);
			else reject(v);
		};

		function start(): void {
			started++;
			const r: Running = {
				ctrl: new AbortController(),
				last: performance.now(),
				stalled: false,
			};
			running.add(r);
			const progress = () => {
				r.last = performance.now();
				lastProgress = r.last;
			};
			let p: Promise<T>;
			try {
				p = attempt({ signal: r.ctrl.signal, progress });
			} catch (e) {
				p = Promise.reject(e);
			}
			p.then(
				(v) => finish(true, v),
				(e) => {
					running.delete(r);
					if (settled || r.ctrl.signal.aborted) return;
					failed(e);
				},
			);
		}

		function failed(e: unknown): void {
			if (!isTransient(e)) {
				finish(false, e);
				return;
			}
			// A twin is still running: it may yet answer.
			if (running.size > 0) return;
			const tooLong =
				e.retryAfterMs !== undefined &&
				e.retryAfterMs > o.retry.maxRetryAfterMs;
			if (started >= o.retry.attempts || tooLong) {
				finish(
					false,
					new DadiError(
						e.code,
						tooLong
							? `${e.message} (the server asks to retry after ${Math.round((e.retryAfterMs ?? 0) / 1000)} s, longer than the ${o.retry.maxRetryAfterMs / 1000} s allowed)`
							: `${e.message} (gave up after ${started} attempt${started === 1 ? "" : "s"})`,
						{ cause: e },
					),
				);
				return;
			}
			const delay = e.retryAfterMs ?? backoffMs(o.retry, started - 1);
			o.onRetry?.(e, delay);
			// Waiting as asked is not a stall.
			lastProgress = performance.now() + delay;
			backoff = setTimeout(start, delay);
		}

		function watch(): void {
			if (settled) return;
			const now = performance.now();
			if (now - lastProgress >= o.stallMs) {
				finish(
					false,
					new StallError(
						"NETWORK",
						`${o.what}: the registry made no progress for ${seconds(o.stallMs)} (${started} request${started === 1 ? "" : "s"} tried); answering EIO (raise --stall-timeout if the registry is just slow)`,
					),
				);
				return;
			}
			if (o.hedgeMs <= 0) return;
			for (const r of running) {
				if (r.stalled || now - r.last < o.hedgeMs) continue;
				r.stalled = true;
				const hedge = running.size < 2 && started < o.retry.attempts;
				o.onStall?.(hedge);
				if (hedge) start();
			}
		}

		start();
	});
}

function seconds(ms: number): string {
	return `${Math.round(ms / 100) / 10} s`;
}
