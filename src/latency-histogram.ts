/**
 * Latency quantiles in bounded memory: a log-bucketed histogram whose buckets are 1% wide, so any
 * quantile it reports is within 0.5% of a latency that was really observed at that rank, and never
 * below the smallest or above the largest latency recorded (both kept exactly). Memory is fixed
 * (about 2,300 counters from 1 µs to 1 hour) however long a server runs, unlike a list of samples.
 * Latencies outside that span are clamped into the edge buckets; min and max stay exact.
 */

/** Smallest latency with a bucket of its own, in ms. */
const FLOOR_MS = 0.001;
/** Bucket growth factor: each bucket's upper bound is 1% above its lower bound. */
const GROWTH = 1.01;
const LOG_GROWTH = Math.log(GROWTH);
/** Buckets from FLOOR_MS to one hour. */
const BUCKETS = Math.ceil(Math.log(3_600_000 / FLOOR_MS) / LOG_GROWTH) + 1;

export interface Quantiles {
	p50: number;
	p90: number;
	p99: number;
	max: number;
	count: number;
}

export class LatencyHistogram {
	readonly #counts = new Uint32Array(BUCKETS);
	#count = 0;
	#min = Number.POSITIVE_INFINITY;
	#max = 0;
	#sum = 0;

	get count(): number {
		return this.#count;
	}

	/** Sum of all latencies recorded, in ms. */
	get sumMs(): number {
		return this.#sum;
	}

	get maxMs(): number {
		return this.#max;
	}

	record(ms: number): void {
		if (!Number.isFinite(ms) || ms < 0) return;
		const i = bucketOf(ms);
		this.#counts[i] = (this.#counts[i] ?? 0) + 1;
		this.#count++;
		this.#sum += ms;
		if (ms < this.#min) this.#min = ms;
		if (ms > this.#max) this.#max = ms;
	}

	/**
	 * The latency at quantile `q` (0 < q <= 1), in ms: the nearest-rank sample's bucket midpoint,
	 * clamped to the observed [min, max]; 0 when nothing was recorded.
	 */
	quantile(q: number): number {
		if (this.#count === 0) return 0;
		const want = Math.max(1, Math.ceil(q * this.#count));
		let seen = 0;
		for (let i = 0; i < BUCKETS; i++) {
			seen += this.#counts[i] ?? 0;
			if (seen >= want)
				return Math.min(this.#max, Math.max(this.#min, midpoint(i)));
		}
		return this.#max;
	}

	quantiles(): Quantiles {
		return {
			p50: round(this.quantile(0.5)),
			p90: round(this.quantile(0.9)),
			p99: round(this.quantile(0.99)),
			max: round(this.#max),
			count: this.#count,
		};
	}

	/** A copy, to subtract later (`since`) and get the quantiles of what happened in between. */
	snapshot(): LatencyHistogram {
		const h = new LatencyHistogram();
		h.#counts.set(this.#counts);
		h.#count = this.#count;
		h.#min = this.#min;
		h.#max = this.#max;
		h.#sum = this.#sum;
		return h;
	}

	/**
	 * What was recorded here after `earlier` (a snapshot of this histogram). Min and max of the
	 * difference are bounded by the difference's own buckets, clamped to this histogram's span.
	 */
	since(earlier: LatencyHistogram): LatencyHistogram {
		const h = new LatencyHistogram();
		let lo = -1;
		let hi = -1;
		for (let i = 0; i < BUCKETS; i++) {
			const n = (this.#counts[i] ?? 0) - (earlier.#counts[i] ?? 0);
			h.#counts[i] = Math.max(0, n);
			if (n > 0) {
				if (lo < 0) lo = i;
				hi = i;
			}
		}
		h.#count = Math.max(0, this.#count - earlier.#count);
		h.#sum = Math.max(0, this.#sum - earlier.#sum);
		if (lo >= 0) {
			h.#min = Math.max(this.#min, lowerBound(lo));
			h.#max = Math.min(this.#max, upperBound(hi));
		}
		return h;
	}
}

function bucketOf(ms: number): number {
	if (ms <= FLOOR_MS) return 0;
	const i = Math.floor(Math.log(ms / FLOOR_MS) / LOG_GROWTH) + 1;
	return Math.min(BUCKETS - 1, i);
}

function lowerBound(i: number): number {
	return i === 0 ? 0 : FLOOR_MS * GROWTH ** (i - 1);
}

function upperBound(i: number): number {
	return FLOOR_MS * GROWTH ** i;
}

function midpoint(i: number): number {
	return i === 0 ? FLOOR_MS / 2 : Math.sqrt(lowerBound(i) * upperBound(i));
}

function round(ms: number): number {
	return Math.round(ms * 100) / 100;
}
