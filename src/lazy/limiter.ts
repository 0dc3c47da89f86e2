/**
 * Bounds how many fetches run at once. Demand fetches go before read-ahead: a reader waiting for
 * a block never queues behind speculation.
 */
export class Limiter {
	#running = 0;
	readonly #demand: (() => void)[] = [];
	readonly #ahead: (() => void)[] = [];

	constructor(readonly max: number) {}

	async run<T>(fn: () => Promise<T>, speculative = false): Promise<T> {
		if (this.#running >= this.max)
			await new Promise<void>((r) =>
				(speculative ? this.#ahead : this.#demand).push(r),
			);
		else this.#running++;
		try {
			return await fn();
		} finally {
			const next = this.#demand.shift() ?? this.#ahead.shift();
			if (next) next();
			else this.#running--;
		}
	}

	/** Fetches waiting for a slot. */
	get queued(): number {
		return this.#demand.length + this.#ahead.length;
	}
}
