/** The hedged, stall-bounded fetch on its own, with attempts scripted in the test. */
import { describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import {
	type AttemptContext,
	hedgedFetch,
	StallError,
} from "../src/lazy/hedged-fetch.js";
import { TransientError } from "../src/registry/retry.js";

const RETRY = {
	attempts: 4,
	baseDelayMs: 5,
	maxDelayMs: 20,
	maxRetryAfterMs: 1000,
};
const later = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** An attempt that never answers, until aborted. */
const hang = (c: AttemptContext) =>
	new Promise<string>((_, reject) =>
		c.signal.addEventListener("abort", () => reject(new Error("aborted"))),
	);

describe("hedgedFetch", () => {
	it("re-issues a request that makes no progress; the first answer wins and the other is aborted", async () => {
		const signals: AbortSignal[] = [];
		let stalls = 0;
		const got = await hedgedFetch(
			(c) => {
				signals.push(c.signal);
				return signals.length === 1 ? hang(c) : later(10).then(() => "twin");
			},
			{
				stallMs: 2000,
				hedgeMs: 50,
				retry: RETRY,
				what: "x",
				onStall: (hedged) => {
					expect(hedged).toBe(true);
					stalls++;
				},
			},
		);
		expect(got).toBe("twin");
		expect(signals).toHaveLength(2);
		expect(signals[0]?.aborted).toBe(true);
		expect(stalls).toBe(1);
	});

	it("does not hedge an attempt that keeps making progress, and does not time it out", async () => {
		let n = 0;
		const got = await hedgedFetch(
			async (c) => {
				n++;
				for (let i = 0; i < 15; i++) {
					await later(20);
					c.progress();
				}
				return "slow but steady";
			},
			{ stallMs: 100, hedgeMs: 60, retry: RETRY, what: "x" },
		);
		expect(got).toBe("slow but steady");
		expect(n).toBe(1);
	});

	it("fails with a StallError when nothing progresses for stallMs, even with hedging off", async () => {
		const started = performance.now();
		const err = await hedgedFetch(hang, {
			stallMs: 150,
			hedgeMs: 0,
			retry: RETRY,
			what: "blob b bytes 0-9",
		}).catch((e: unknown) => e);
		expect(err).toBeInstanceOf(StallError);
		expect((err as DadiError).code).toBe("NETWORK");
		expect((err as DadiError).message).toMatch(
			/^blob b bytes 0-9: the registry made no progress for 0\.2 s/,
		);
		expect(performance.now() - started).toBeLessThan(1000);
	});

	it("retries transient failures with backoff up to the attempts, then says how many", async () => {
		let n = 0;
		const retried: number[] = [];
		const err = await hedgedFetch(
			async () => {
				n++;
				throw new TransientError("NETWORK", "reset");
			},
			{
				stallMs: 5000,
				hedgeMs: 1000,
				retry: RETRY,
				what: "x",
				onRetry: (_e, d) => retried.push(d),
			},
		).catch((e: unknown) => e);
		expect(n).toBe(4);
		expect(retried).toHaveLength(3);
		expect((err as DadiError).message).toBe("reset (gave up after 4 attempts)");
	});

	it("a transient failure of one twin waits for the other", async () => {
		let n = 0;
		const got = await hedgedFetch(
			async (c) => {
				n++;
				if (n === 1) {
					await later(80); // stalls past hedgeMs, then breaks
					throw new TransientError("NETWORK", "reset");
				}
				await later(120);
				c.progress();
				return "second";
			},
			{ stallMs: 2000, hedgeMs: 30, retry: RETRY, what: "x" },
		);
		expect(got).toBe("second");
		expect(n).toBe(2);
	});

	it("passes a non-transient error through at once and aborts the twin", async () => {
		const signals: AbortSignal[] = [];
		const err = await hedgedFetch(
			async (c) => {
				signals.push(c.signal);
				if (signals.length === 1) return hang(c);
				throw new DadiError("REMOTE_DENIED", "no");
			},
			{ stallMs: 2000, hedgeMs: 30, retry: RETRY, what: "x" },
		).catch((e: unknown) => e);
		expect((err as DadiError).code).toBe("REMOTE_DENIED");
		expect(signals[0]?.aborted).toBe(true);
	});

	it("refuses a Retry-After beyond the policy's bound", async () => {
		const err = await hedgedFetch(
			async () => {
				throw new TransientError("NETWORK", "429", 60_000);
			},
			{ stallMs: 5000, hedgeMs: 0, retry: RETRY, what: "x" },
		).catch((e: unknown) => e);
		expect((err as DadiError).message).toMatch(
			/retry after 60 s, longer than the 1 s allowed/,
		);
	});
});
