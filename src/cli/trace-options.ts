/** The start-up trace flags of `dadi-guest serve` and `run`: recording and replay (issue 18). */
import { DadiError } from "../errors.js";
import { type PrefetchMode, parsePrefetchMode } from "../guest/trace-replay.js";
import { parseSize } from "./common.js";

/** The trace recording and replay flags, checked. */
export function traceFlags(opts: {
	recordTrace?: string;
	traceBudgetMs?: string;
	traceBudgetBytes?: string;
	prefetch?: string;
	prefetchBudget?: string;
}): {
	record?: string;
	budgetMs?: number;
	budgetBytes?: number;
	prefetch: PrefetchMode;
	prefetchBudget?: number;
} {
	if (!opts.recordTrace && (opts.traceBudgetMs || opts.traceBudgetBytes))
		throw new DadiError(
			"USAGE",
			"--trace-budget-ms and --trace-budget-bytes apply with --record-trace",
		);
	let budgetMs: number | undefined;
	if (opts.traceBudgetMs !== undefined) {
		budgetMs = Number(opts.traceBudgetMs);
		if (
			!/^\d{1,10}$/.test(opts.traceBudgetMs) ||
			budgetMs < 1 ||
			budgetMs > 86_400_000
		)
			throw new DadiError(
				"USAGE",
				`--trace-budget-ms "${opts.traceBudgetMs}": whole milliseconds, 1 to 86400000`,
			);
	}
	const budgetBytes =
		opts.traceBudgetBytes === undefined
			? undefined
			: parseSize(opts.traceBudgetBytes, "--trace-budget-bytes");
	// Recording measures a cold start: replaying a trace would put its chunks into the new one.
	const prefetch =
		opts.prefetch === undefined && opts.recordTrace
			? "none"
			: parsePrefetchMode(opts.prefetch);
	if (opts.recordTrace && prefetch !== "none")
		throw new DadiError(
			"USAGE",
			"--record-trace records a cold start: give it with --prefetch none (or without --prefetch)",
		);
	if (opts.prefetchBudget !== undefined && prefetch === "none")
		throw new DadiError(
			"USAGE",
			"--prefetch-budget applies when a trace is replayed (--prefetch auto|trace)",
		);
	return {
		record: opts.recordTrace,
		budgetMs,
		budgetBytes,
		prefetch,
		prefetchBudget:
			opts.prefetchBudget === undefined
				? undefined
				: parseSize(opts.prefetchBudget, "--prefetch-budget"),
	};
}
