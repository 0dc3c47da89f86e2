/** The start-up trace flags of `dadi-guest serve` and `run`: recording and replay (issue 18). */
import { DadiError } from "../errors.js";
import { type PrefetchMode, parsePrefetchMode } from "../guest/trace-replay.js";
import { MEMORY_ONLY_PREFETCH_BYTES } from "../lazy/open-remote.js";
import { parseSize } from "./common.js";

/** The trace recording and replay flags, checked. */
export function traceFlags(opts: {
	recordTrace?: string;
	traceBudgetMs?: string;
	traceBudgetBytes?: string;
	prefetch?: string;
	prefetchBudget?: string;
	cacheDir?: string;
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
	const asked =
		opts.prefetchBudget === undefined
			? undefined
			: parseSize(opts.prefetchBudget, "--prefetch-budget");
	return {
		record: opts.recordTrace,
		budgetMs,
		budgetBytes,
		prefetch,
		// Without --cache-dir the prefetched chunks wait in the memory cache: more than fits would
		// push out what was prefetched first, before the start reads it.
		prefetchBudget:
			asked ??
			(prefetch === "none" || opts.cacheDir
				? undefined
				: MEMORY_ONLY_PREFETCH_BYTES),
	};
}
