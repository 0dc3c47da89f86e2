/**
 * Bounds how many fetches run at once, for the whole image. Demand fetches (a reader is waiting)
 * go before speculative ones (read-ahead, prefetch) in the wait queue, and speculation may never
 * hold the last `reserved` slots: a demand fetch finds a free slot unless other demand fetches
 * hold them, so a reader never queues behind speculation.
 */
export interface LimiterHooks {
	/** A demand fetch waited `ms` for a slot; `behindSpeculative`: speculation held a slot then. */
	demandWaited?: (ms: number, behindSpeculative: boolean) => void;
}

export class Limiter {
	#running = 0;
	#speculative = 0;
	readonly #demand: (() => void)[] = [];
	readonly #ahead: (() => void)[] = [];
	/** Slots speculation may never take (at least 2 when there are 3 or more slots). */
	readonly reserved: number;

	constructor(
		readonly max: number,
		readonly hooks: LimiterHooks = {},
		reserved = Math.min(2, Math.max(0, max - 1)),
	) {
		this.reserved = Math.min(Math.max(0, reserved), Math.max(0, max - 1));
	}

	async run<T>(fn: () => Promise<T>, speculative = false): Promise<T> {
		if (speculative) {
			if (this.#ahead.length > 0 || !this.#specFree())
				await new Promise<void>((r) => this.#ahead.push(r));
			else this.#running++;
			this.#speculative++;
		} else if (this.#demand.length > 0 || this.#running >= this.max) {
			const t0 = performance.now();
			const behind = this.#speculative > 0;
			await new Promise<void>((r) => this.#demand.push(r));
			this.hooks.demandWaited?.(performance.now() - t0, behind);
		} else this.#running++;
		try {
			return await fn();
		} finally {
			if (speculative) this.#speculative--;
			this.#running--;
			this.#pump();
		}
	}

	#specFree(): boolean {
		return this.#running < this.max - this.reserved;
	}

	/** Hands free slots to waiting demand first, then to speculation outside the reserve. */
	#pump(): void {
		while (this.#running < this.max) {
			const next = this.#demand.shift();
			if (!next) break;
			this.#running++;
			next();
		}
		while (this.#specFree()) {
			const next = this.#ahead.shift();
			if (!next) break;
			this.#running++;
			next();
		}
	}

	/** Fetches waiting for a slot. */
	get queued(): number {
		return this.#demand.length + this.#ahead.length;
	}

	/** Fetches holding a slot, and how many of them are speculative. */
	get running(): { all: number; speculative: number } {
		return { all: this.#running, speculative: this.#speculative };
	}
}
