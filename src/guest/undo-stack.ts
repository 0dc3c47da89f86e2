/**
 * What a start-up set up, to be undone in reverse order — on a clean exit, a failure half-way, or
 * a signal. Each step is undone once; a step that fails to undo is logged and the rest go on.
 */
export class UndoStack {
	private readonly steps: { what: string; fn: () => Promise<void> | void }[] =
		[];
	private unwinding: Promise<void> | undefined;

	constructor(private readonly log: (line: string) => void) {}

	push(what: string, fn: () => Promise<void> | void): void {
		this.steps.push({ what, fn });
	}

	/** Undoes every step, last first; idempotent (a second call waits for the first). */
	unwind(): Promise<void> {
		this.unwinding ??= (async () => {
			for (let s = this.steps.pop(); s; s = this.steps.pop())
				try {
					await s.fn();
				} catch (e) {
					this.log(`cleanup (${s.what}) failed: ${(e as Error).message}`);
				}
		})();
		return this.unwinding;
	}
}
