/**
 * A floor on how slowly a body may arrive: over every window of `windowMs` at least `minBytes`
 * must come (or the rest of the body, if less is left). A peer that drips one byte every few
 * seconds keeps a connection "alive" forever under idle timeouts alone; this ends it. Pure: the
 * clock comes in.
 */
export interface RateFloor {
	windowMs: number;
	minBytes: number;
}

/** 32 KiB per 30 s (about 1 KiB/s): far below any working link, far above a drip. */
export const DEFAULT_RATE_FLOOR: RateFloor = {
	windowMs: 30_000,
	minBytes: 32 << 10,
};

export class RateWatch {
	#windowStart: number;
	#inWindow = 0;

	constructor(
		private readonly floor: RateFloor,
		now: number,
		/** Bytes still expected, when known (the floor never asks for more than is left). */
		private remaining = Number.POSITIVE_INFINITY,
	) {
		this.#windowStart = now;
	}

	add(bytes: number): void {
		this.#inWindow += bytes;
		this.remaining -= bytes;
	}

	/** Whether the floor was missed in the window that ended by `now` (and starts the next). */
	tooSlow(now: number): boolean {
		if (now - this.#windowStart < this.floor.windowMs) return false;
		const need = Math.min(
			this.floor.minBytes,
			Math.max(1, this.remaining + this.#inWindow),
		);
		const slow = this.#inWindow < need;
		this.#windowStart = now;
		this.#inWindow = 0;
		return slow;
	}
}
