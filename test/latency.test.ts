import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { GuestMetrics } from "../src/guest/metrics.js";
import { LatencyHistogram } from "../src/latency-histogram.js";
import { LazyStats } from "../src/lazy/stats.js";

/** Nearest-rank quantile of the samples themselves. */
function exact(samples: number[], q: number): number {
	const s = [...samples].sort((a, b) => a - b);
	return s[Math.max(1, Math.ceil(q * s.length)) - 1] as number;
}

const latency = fc.double({
	min: 0.0005,
	max: 120_000,
	noNaN: true,
	noDefaultInfinity: true,
});

describe("latency quantiles", () => {
	it("are within 1% of the true nearest-rank quantile and never outside [min, max] (property)", () => {
		fc.assert(
			fc.property(
				fc.array(latency, { minLength: 1, maxLength: 400 }),
				fc.constantFrom(0.5, 0.9, 0.99, 1),
				(samples, q) => {
					const h = new LatencyHistogram();
					for (const s of samples) h.record(s);
					const got = h.quantile(q);
					const want = exact(samples, q);
					expect(got).toBeLessThanOrEqual(Math.max(...samples));
					expect(got).toBeGreaterThanOrEqual(Math.min(...samples));
					expect(Math.abs(got - want)).toBeLessThanOrEqual(
						Math.max(want * 0.01, 0.001),
					);
				},
			),
		);
	});

	it("of the reads between two snapshots are those reads' quantiles", () => {
		const h = new LatencyHistogram();
		for (let i = 0; i < 1000; i++) h.record(0.2);
		const before = h.snapshot();
		for (let i = 0; i < 100; i++) h.record(40 + i / 10);
		const d = h.since(before);
		expect(d.count).toBe(100);
		expect(Math.abs(d.quantile(0.5) - 44.9)).toBeLessThan(0.5);
		expect(d.quantile(0.99)).toBeLessThanOrEqual(49.9 * 1.01);
		expect(d.quantile(0.99)).toBeGreaterThan(49);
	});

	it("--stats never reports p99 above max (the guest's read latencies)", () => {
		const m = new GuestMetrics();
		// 3 ms reads: the Prometheus bucket holding them ends at 5 ms, which was reported as p99.
		for (let i = 0; i < 100; i++) m.observe(4096, 3, true);
		const j = m.toJSON().readLatencyMs;
		expect(j.max).toBe(3);
		expect(j.p99).toBe(3);
		expect(j.p50).toBe(3);
		// Prometheus buckets are unchanged by this: cumulative counts at their bounds.
		expect(m.toPrometheus()).toContain(
			'dadi_guest_read_seconds_bucket{le="0.005"} 100',
		);
	});

	it("the lazy reader's range latencies keep bounded memory and exact max", () => {
		const s = new LazyStats();
		for (let i = 1; i <= 10_000; i++) s.latency(i / 100);
		const l = s.toJSON().latencyMs;
		expect(l.count).toBe(10_000);
		expect(l.max).toBe(100);
		expect(Math.abs(l.p50 - 50)).toBeLessThanOrEqual(0.5);
		expect(l.p99).toBeLessThanOrEqual(100);
		expect(l.p99).toBeGreaterThanOrEqual(98.5);
	});
});
