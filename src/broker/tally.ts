/**
 * Counts per client key with the heaviest client found in O(1): what the fair-share limits
 * (sessions, connections) need to take room from whoever holds the most, so that a flood degrades
 * the flooder rather than everyone. Pure.
 */
export class Tally {
	readonly #counts = new Map<string, number>();
	/** Keys by count (counts ≥ 1); `#max` is the highest non-empty bucket. */
	readonly #buckets = new Map<number, Set<string>>();
	#max = 0;

	get(key: string): number {
		return this.#counts.get(key) ?? 0;
	}

	/** Distinct keys with a count above zero. */
	get keys(): number {
		return this.#counts.size;
	}

	add(key: string): void {
		const n = this.get(key);
		this.#move(key, n, n + 1);
	}

	sub(key: string): void {
		const n = this.get(key);
		if (n > 0) this.#move(key, n, n - 1);
	}

	/** A key holding the highest count (undefined when empty), skipping `except` if given. */
	heaviest(except?: (key: string) => boolean): [string, number] | undefined {
		for (let c = this.#max; c > 0; c--) {
			const b = this.#buckets.get(c);
			if (!b) continue;
			for (const k of b) if (!except?.(k)) return [k, c];
		}
		return undefined;
	}

	#move(key: string, from: number, to: number): void {
		if (from > 0) {
			const b = this.#buckets.get(from) as Set<string>;
			b.delete(key);
			if (b.size === 0) this.#buckets.delete(from);
		}
		if (to > 0) {
			let b = this.#buckets.get(to);
			if (!b) {
				b = new Set();
				this.#buckets.set(to, b);
			}
			b.add(key);
			this.#counts.set(key, to);
			if (to > this.#max) this.#max = to;
		} else this.#counts.delete(key);
		while (this.#max > 0 && !this.#buckets.has(this.#max)) this.#max--;
	}
}
