/**
 * The progress reporter (src/cli/progress.ts) and the debugfs echo counter, on a fake clock:
 * which lines a log gets, heartbeats for quiet phases, JSON events, and counting commands in
 * output cut anywhere.
 */
import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { describeProgress, Progress } from "../src/cli/progress.js";
import { echoCounter } from "../src/rootfs/debugfs.js";

let out: string[];
const make = (json = false, tty = false) =>
	new Progress(true, json, {
		tty,
		write: (s) => out.push(s),
		now: () => Date.now(),
	});

beforeEach(() => {
	vi.useFakeTimers();
	out = [];
});
afterEach(() => {
	vi.useRealTimers();
});

describe("progress lines", () => {
	it("in a log: one line per phase and quarter, the layer named, units and skipped blobs said", () => {
		const p = make();
		const layer = { number: 2, of: 3 };
		for (let d = 0; d <= 100; d += 5)
			p.report({ phase: "sealing", layer, done: d << 20, total: 100 << 20 });
		p.report({
			phase: "fixing inode times",
			layer,
			done: 3,
			total: 4,
			unit: "commands",
		});
		p.report({
			phase: "pushing",
			done: 10,
			total: 20,
			skipped: { exists: 1, mounted: 1, bytes: 3 << 20 },
		});
		p.done();
		expect(out).toEqual([
			"layer 2/3: sealing: 0% (0 B / 100.0 MiB)\n",
			"layer 2/3: sealing: 25% (25.0 MiB / 100.0 MiB)\n",
			"layer 2/3: sealing: 50% (50.0 MiB / 100.0 MiB)\n",
			"layer 2/3: sealing: 75% (75.0 MiB / 100.0 MiB)\n",
			"layer 2/3: sealing: 100% (100.0 MiB / 100.0 MiB)\n",
			"layer 2/3: fixing inode times: 75% (3 / 4 commands)\n",
			"pushing: 50% (10 B / 20 B); 2 blobs not sent (3.0 MiB): 1 already there, 1 mounted\n",
		]);
	});

	it("a quiet phase gets a heartbeat with its seconds every 5 s, with the latest measure", () => {
		const p = make();
		p.report({
			phase: "building ext4",
			layer: { number: 1, of: 1 },
			done: 0,
			total: 0,
		});
		vi.advanceTimersByTime(4900);
		expect(out).toEqual(["layer 1/1: building ext4…\n"]);
		p.report({
			phase: "building ext4",
			layer: { number: 1, of: 1 },
			done: 3 << 20,
			total: 0,
		});
		vi.advanceTimersByTime(200);
		expect(out[1]).toBe("layer 1/1: building ext4: 3.0 MiB so far [5 s]\n");
		vi.advanceTimersByTime(5000);
		expect(out[2]).toBe("layer 1/1: building ext4: 3.0 MiB so far [10 s]\n");
		p.done();
		vi.advanceTimersByTime(20_000);
		expect(out).toHaveLength(3);
	});

	it("JSON: one object per line, repeated states dropped, heartbeats marked", () => {
		const p = make(true);
		const e = { phase: "pushing", done: 5, total: 10 };
		p.report(e);
		p.report(e);
		p.report({ ...e, layer: { number: 1, of: 2 } });
		vi.advanceTimersByTime(5000);
		p.done();
		const events = out.map((l) => JSON.parse(l).progress);
		expect(events).toEqual([
			{ phase: "pushing", done: 5, total: 10, unit: "bytes", seconds: 0 },
			{
				phase: "pushing",
				layer: 1,
				layers: 2,
				done: 5,
				total: 10,
				unit: "bytes",
				seconds: 0,
			},
			{
				phase: "pushing",
				layer: 1,
				layers: 2,
				done: 5,
				total: 10,
				unit: "bytes",
				seconds: 5,
				heartbeat: true,
			},
		]);
	});

	it("on a terminal: one rewritten line, the seconds shown once a phase is slow, erased at the end", () => {
		const p = make(false, true);
		p.report({ phase: "pulling", done: 1, total: 4 });
		vi.advanceTimersByTime(2000);
		p.done();
		expect(out[0]).toBe("\rpulling: 25% (1 B / 4 B)\x1b[K");
		expect(out[1]).toBe("\rpulling: 25% (1 B / 4 B) [1 s]\x1b[K");
		expect(out[out.length - 1]).toBe("\r\x1b[K");
	});

	it("describes a phase with no measure by its name", () => {
		expect(describeProgress({ phase: "pushing", done: 0, total: 0 })).toBe(
			"pushing…",
		);
		expect(
			describeProgress({
				phase: "sealing",
				layer: { number: 3, of: 3, from: 1 },
				done: 0,
				total: 0,
			}),
		).toBe("layers 1–3/3: sealing…");
	});
});

describe("debugfs echo counter", () => {
	it("counts the 'debugfs: ' command echoes however the output is cut", () => {
		fc.assert(
			fc.property(
				fc.array(
					fc.oneof(
						fc.constantFrom('sif "/a" ctime @1', 'ls -p "/"'),
						fc.string(),
					),
					{ maxLength: 30 },
				),
				fc.array(fc.nat(40), { maxLength: 20 }),
				(commands, cuts) => {
					const text = commands
						.map((c, i) =>
							i % 2 === 0
								? `debugfs: ${c.replace(/\n/g, "")}\n`
								: `/12/100644/0/0/x${c.replace(/\n/g, "")}/5/\n`,
						)
						.join("");
					const want = commands.filter((_, i) => i % 2 === 0).length;
					const count = echoCounter();
					let at = 0;
					let got = 0;
					for (const n of cuts) {
						got = count(text.slice(at, at + n));
						at += n;
					}
					got = count(text.slice(at));
					expect(got).toBe(want);
				},
			),
		);
	});
});
