/**
 * Per-client token buckets: `rate` requests a second on average, bursts up to `burst`. The table
 * is bounded; when full, the idlest entries (least recently seen) are dropped, which can only
 * make a limit more lenient for a client, never lock one out. Pure; the clock comes in.
 */
export interface RateLimits {
	/** Requests per second; 0 turns limiting off. */
	rate: number;
	burst: number;
	maxClients?: number;
}

interface Bucket {
	tokens: number;
	lastMs: number;
}

export class RateLimiter {
	readonly #buckets = new Map<string, Bucket>();
	readonly #max: number;

	constructor(private readonly limits: RateLimits) {
		this.#max = limits.maxClients ?? 100_000;
	}

	/** 0 when the request may go ahead, else the seconds to wait (for Retry-After). */
	take(client: string, nowMs: number): number {
		const { rate, burst } = this.limits;
		if (rate <= 0) return 0;
		let b = this.#buckets.get(client);
		if (b) this.#buckets.delete(client);
		else {
			if (this.#buckets.size >= this.#max) {
				const oldest = this.#buckets.keys().next().value;
				if (oldest !== undefined) this.#buckets.delete(oldest);
			}
			b = { tokens: burst, lastMs: nowMs };
		}
		b.tokens = Math.min(burst, b.tokens + ((nowMs - b.lastMs) / 1000) * rate);
		b.lastMs = nowMs;
		this.#buckets.set(client, b); // most recent last
		if (b.tokens >= 1) {
			b.tokens -= 1;
			return 0;
		}
		return Math.max(1, Math.ceil((1 - b.tokens) / rate));
	}
}
