/**
 * Bounded retries with exponential backoff and jitter. Only errors marked transient are retried
 * (connection resets, timeouts, 429 and 5xx answers, broken bodies); a `Retry-After` the server
 * sends is honoured up to a cap. When the attempts run out the last error is thrown, saying how
 * many attempts were made.
 */
import { DadiError, type ErrorCode } from "../errors.js";

export interface RetryPolicy {
	/** Attempts in all, at least 1. */
	attempts: number;
	/** First backoff; doubled per attempt. */
	baseDelayMs: number;
	maxDelayMs: number;
	/** Longest Retry-After we wait for; a longer one fails at once. */
	maxRetryAfterMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = {
	attempts: 5,
	baseDelayMs: 200,
	maxDelayMs: 5000,
	maxRetryAfterMs: 30_000,
};

/** An error worth another attempt. */
export class TransientError extends DadiError {
	constructor(
		code: ErrorCode,
		message: string,
		readonly retryAfterMs?: number,
		options?: { cause?: unknown },
	) {
		super(code, message, options);
	}
}

export function isTransient(e: unknown): e is TransientError {
	return e instanceof TransientError;
}

/** Parses a Retry-After value (seconds or an HTTP date) into milliseconds from `now`. */
export function parseRetryAfter(
	value: string | undefined,
	now = Date.now(),
): number | undefined {
	if (value === undefined) return undefined;
	const v = value.trim();
	if (/^\d{1,9}$/.test(v)) return Number(v) * 1000;
	const t = Date.parse(v);
	if (Number.isNaN(t)) return undefined;
	return Math.max(0, t - now);
}

export function backoffMs(policy: RetryPolicy, attempt: number): number {
	const exp = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** attempt);
	return exp / 2 + Math.random() * (exp / 2);
}

export async function withRetries<T>(
	policy: RetryPolicy,
	fn: (attempt: number) => Promise<T>,
	onRetry?: (attempt: number, e: TransientError, delayMs: number) => void,
	/** All attempts and waits together may take at most this long (ms). */
	budgetMs = Number.POSITIVE_INFINITY,
): Promise<T> {
	const started = performance.now();
	for (let attempt = 0; ; attempt++) {
		try {
			return await fn(attempt);
		} catch (e) {
			if (!isTransient(e)) throw e;
			const delayWanted = e.retryAfterMs ?? backoffMs(policy, attempt);
			const spent = performance.now() - started;
			const last =
				attempt + 1 >= policy.attempts || spent + delayWanted > budgetMs;
			const tooLong =
				e.retryAfterMs !== undefined && e.retryAfterMs > policy.maxRetryAfterMs;
			if (last || tooLong)
				throw new DadiError(
					e.code,
					tooLong
						? `${e.message} (the server asks to retry after ${Math.round((e.retryAfterMs ?? 0) / 1000)} s, longer than the ${policy.maxRetryAfterMs / 1000} s allowed)`
						: `${e.message} (gave up after ${attempt + 1} attempt${attempt === 0 ? "" : "s"}${spent + delayWanted > budgetMs ? ` in ${(spent / 1000).toFixed(1)} s` : ""})`,
					{ cause: e },
				);
			const delay = delayWanted;
			onRetry?.(attempt, e, delay);
			await new Promise((r) => setTimeout(r, delay));
		}
	}
}
