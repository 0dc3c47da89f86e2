/**
 * Says when the registry stalls, without flooding the log: the first stalled request is logged at
 * once, later ones are counted and summed up at most once per interval.
 */
export class StallLog {
	#last = Number.NEGATIVE_INFINITY;
	#unreported = 0;

	constructor(
		private readonly log: ((line: string) => void) | undefined,
		private readonly intervalMs = 10_000,
	) {}

	stalled(what: string, afterMs: number, hedged: boolean): void {
		if (!this.log) return;
		const now = performance.now();
		if (now - this.#last < this.intervalMs) {
			this.#unreported++;
			return;
		}
		const more =
			this.#unreported > 0
				? ` (and ${this.#unreported} more stalled request${this.#unreported === 1 ? "" : "s"} since the last report)`
				: "";
		this.#unreported = 0;
		this.#last = now;
		this.log(
			`registry stalled: no answer to ${what} for ${Math.round(afterMs / 100) / 10} s; ${hedged ? "re-issued the request" : "still waiting"}${more}`,
		);
	}
}
