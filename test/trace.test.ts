/**
 * Start-up traces (issue 18): the plaintext format, its sealing under the image key bound to one
 * image, the recorder, and the referrer documents. Parsers of untrusted bytes get properties
 * (roundtrip; arbitrary and garbled bytes give only DadiError) plus examples.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { traceFlags } from "../src/cli/trace-options.js";
import {
	openTrace,
	sealTrace,
	type TraceBinding,
} from "../src/crypto/trace-seal.js";
import { DadiError } from "../src/errors.js";
import {
	checkTraceFits,
	decodeTrace,
	encodeTrace,
	MAX_TRACE_ENTRIES,
	type TraceEntry,
} from "../src/format/trace.js";
import {
	attachTrace,
	findTrace,
	LayoutReferrerStore,
	parseReferrersIndex,
	parseTraceArtifact,
	referrersTag,
	TRACE_ARTIFACT_TYPE,
	traceArtifactManifest,
} from "../src/image/trace-referrer.js";
import { TraceRecorder } from "../src/lazy/trace-recorder.js";
import { sha256Digest } from "../src/oci/digest.js";
import { OciLayout } from "../src/oci/layout.js";
import { MT_OCI_MANIFEST } from "../src/oci/media-types.js";

function codeOf(fn: () => unknown): string {
	try {
		fn();
		return "ok";
	} catch (e) {
		if (e instanceof DadiError) return e.code;
		throw e;
	}
}

/** Traces as the recorder makes them: unique (layer, chunk), times not decreasing. */
const traceArb = fc
	.uniqueArray(
		fc.record({
			layer: fc.integer({ min: 0, max: 0xffff }),
			chunk: fc.integer({ min: 0, max: 0xffff_ffff }),
		}),
		{ maxLength: 200, selector: (e) => `${e.layer}/${e.chunk}` },
	)
	.chain((pairs) =>
		fc
			.array(fc.integer({ min: 0, max: 1000 }), {
				minLength: pairs.length,
				maxLength: pairs.length,
			})
			.map((steps) => {
				let t = 0;
				return pairs.map((p, i) => {
					t += steps[i] as number;
					return { ...p, ms: t };
				});
			}),
	);

const key = Buffer.alloc(32, 7);
const binding: TraceBinding = {
	manifestDigest: `sha256:${"a".repeat(64)}`,
	sealId: "12".repeat(16),
	layerIds: ["cd".repeat(32), "ef".repeat(32)],
};

describe("trace format", () => {
	it("roundtrips (property)", () => {
		fc.assert(
			fc.property(traceArb, (entries) => {
				expect(decodeTrace(encodeTrace(entries))).toEqual(entries);
			}),
			{ numRuns: 300 },
		);
	});

	it("arbitrary bytes: a trace or a DadiError, never anything else (property)", () => {
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 300 }), (b) => {
				const buf = Buffer.from(b);
				// With the magic and version in place too, so the checks behind them are reached.
				const framed = Buffer.concat([
					Buffer.from("DTRC\x01", "latin1"),
					buf.subarray(0, 3),
					Buffer.from([0, 0, 0, Math.floor(buf.length / 10)]),
					buf.subarray(3),
				]);
				expect(["ok", "FORMAT_INVALID", "FORMAT_UNSUPPORTED"]).toContain(
					codeOf(() => decodeTrace(buf)),
				);
				expect(["ok", "FORMAT_INVALID", "FORMAT_UNSUPPORTED"]).toContain(
					codeOf(() => decodeTrace(framed)),
				);
			}),
			{ numRuns: 2000 },
		);
	});

	it("garbled traces: one flipped byte gives the same, another trace, or a DadiError (property)", () => {
		fc.assert(
			fc.property(
				traceArb,
				fc.nat(),
				fc.integer({ min: 1, max: 255 }),
				(entries, at, x) => {
					const b = encodeTrace(entries);
					const i = at % b.length;
					b[i] = (b[i] as number) ^ x;
					expect(["ok", "FORMAT_INVALID", "FORMAT_UNSUPPORTED"]).toContain(
						codeOf(() => decodeTrace(b)),
					);
				},
			),
			{ numRuns: 1000 },
		);
	});

	it("examples: refusals with clear messages", () => {
		const good = encodeTrace([
			{ layer: 0, chunk: 5, ms: 0 },
			{ layer: 1, chunk: 5, ms: 3 },
		]);
		expect(good.length).toBe(16 + 20);
		expect(() => decodeTrace(Buffer.alloc(3))).toThrow(
			/shorter than the header/,
		);
		const magic = Buffer.from(good);
		magic[0] = 0x58;
		expect(() => decodeTrace(magic)).toThrow(/bad magic/);
		const version = Buffer.from(good);
		version[4] = 2;
		expect(codeOf(() => decodeTrace(version))).toBe("FORMAT_UNSUPPORTED");
		const flags = Buffer.from(good);
		flags[5] = 1;
		expect(() => decodeTrace(flags)).toThrow(/unknown flags/);
		expect(() => decodeTrace(good.subarray(0, good.length - 1))).toThrow(
			/entries take/,
		);
		expect(() => decodeTrace(Buffer.concat([good, Buffer.alloc(1)]))).toThrow(
			/entries take/,
		);
		const huge = Buffer.from(good);
		huge.writeUInt32BE(MAX_TRACE_ENTRIES + 1, 8);
		expect(() => decodeTrace(huge)).toThrow(/more than/);
		const dup = encodeTrace([{ layer: 0, chunk: 5, ms: 0 }]);
		expect(() =>
			decodeTrace(
				Buffer.concat([
					Buffer.from([...dup.subarray(0, 8), 0, 0, 0, 2, 0, 0, 0, 0]),
					dup.subarray(16),
					dup.subarray(16),
				]),
			),
		).toThrow(/repeated/);
		const back = Buffer.from(good);
		back.writeUInt32BE(9, 16 + 6); // first entry later than the second
		expect(() => decodeTrace(back)).toThrow(/times go backwards/);
	});

	it("checkTraceFits: layer and chunk must be on the image", () => {
		const e: TraceEntry[] = [{ layer: 1, chunk: 9, ms: 0 }];
		expect(() => checkTraceFits(e, 2, 10)).not.toThrow();
		expect(codeOf(() => checkTraceFits(e, 1, 10))).toBe("FORMAT_INVALID");
		expect(() => checkTraceFits(e, 2, 9)).toThrow(/outside the image/);
	});
});

describe("sealed trace", () => {
	it("opens under the same key and binding (property), hides the exact length", () => {
		fc.assert(
			fc.property(traceArb, (entries) => {
				const plain = encodeTrace(entries);
				const sealed = sealTrace(key, binding, plain);
				expect(openTrace(key, binding, sealed)).toEqual(plain);
				expect(sealed.length).toBeGreaterThanOrEqual(20 + 512 + 16);
			}),
			{ numRuns: 100 },
		);
	});

	it("another image, key, seal or layer list, or any changed byte: AUTH_FAILED", () => {
		const plain = encodeTrace([{ layer: 0, chunk: 1, ms: 0 }]);
		const sealed = sealTrace(key, binding, plain);
		const others: TraceBinding[] = [
			{ ...binding, manifestDigest: `sha256:${"b".repeat(64)}` },
			{ ...binding, sealId: "34".repeat(16) },
			{ ...binding, layerIds: [binding.layerIds[0] as string] },
		];
		for (const b of others)
			expect(codeOf(() => openTrace(key, b, sealed))).toBe("AUTH_FAILED");
		expect(codeOf(() => openTrace(Buffer.alloc(32, 8), binding, sealed))).toBe(
			"AUTH_FAILED",
		);
		for (let i = 5; i < sealed.length; i += 7) {
			const t = Buffer.from(sealed);
			t[i] = (t[i] as number) ^ 1;
			expect(codeOf(() => openTrace(key, binding, t))).toBe("AUTH_FAILED");
		}
		expect(codeOf(() => openTrace(key, binding, sealed.subarray(0, 40)))).toBe(
			"AUTH_FAILED",
		);
	});

	it("arbitrary bytes never open and never crash (property)", () => {
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 700 }), (b) => {
				const blob = Buffer.concat([
					Buffer.from("DTRE\x01", "latin1"),
					Buffer.from(b),
				]);
				expect([
					"FORMAT_INVALID",
					"FORMAT_UNSUPPORTED",
					"AUTH_FAILED",
				]).toContain(codeOf(() => openTrace(key, binding, Buffer.from(b))));
				expect(["FORMAT_INVALID", "AUTH_FAILED"]).toContain(
					codeOf(() => openTrace(key, binding, blob)),
				);
			}),
			{ numRuns: 1000 },
		);
	});
});

describe("trace recorder", () => {
	const run = (layer: number, first: number, count: number) => ({
		kind: "data" as const,
		layer,
		first,
		count,
		pieces: [],
	});

	it("records each (layer, chunk) once, in first-read order, with times", () => {
		let t = 100;
		const r = new TraceRecorder(4096, { now: () => t });
		r.observe(run(0, 3, 2));
		t = 105;
		r.observe(run(0, 4, 2));
		r.observe(run(1, 3, 1));
		r.stop("close");
		r.observe(run(0, 9, 1));
		expect(r.entries).toEqual([
			{ layer: 0, chunk: 3, ms: 0 },
			{ layer: 0, chunk: 4, ms: 0 },
			{ layer: 0, chunk: 5, ms: 5 },
			{ layer: 1, chunk: 3, ms: 5 },
		]);
		expect(r.stoppedBy).toBe("close");
		expect(decodeTrace(encodeTrace(r.entries))).toEqual(r.entries);
	});

	it("stops at the byte and time budgets", () => {
		let t = 0;
		const stops: string[] = [];
		const bytes = new TraceRecorder(4096, {
			budgetBytes: 3 * 4096,
			now: () => t,
			onStop: (w) => stops.push(w),
		});
		bytes.observe(run(0, 0, 10));
		expect(bytes.entries.length).toBe(3);
		expect(bytes.stoppedBy).toBe("bytes");
		const time = new TraceRecorder(4096, {
			budgetMs: 50,
			now: () => t,
			onStop: (w) => stops.push(w),
		});
		time.observe(run(0, 0, 1));
		t = 60;
		time.observe(run(0, 1, 1));
		expect(time.entries.length).toBe(1);
		expect(stops).toEqual(["bytes", "time"]);
	});
});

describe("trace referrer documents", () => {
	const subject = {
		mediaType: MT_OCI_MANIFEST,
		digest: `sha256:${"c".repeat(64)}`,
		size: 1234,
	};
	const blob = {
		mediaType: "application/vnd.dadi.trace.v1.sealed",
		digest: sha256Digest(Buffer.from("x")),
		size: 1,
	};

	it("the artifact manifest names its subject; another subject is refused", () => {
		const m = traceArtifactManifest(subject, blob);
		const doc = JSON.parse(m.toString());
		expect(doc.artifactType).toBe(TRACE_ARTIFACT_TYPE);
		expect(doc.config.mediaType).toBe("application/vnd.oci.empty.v1+json");
		expect(doc.subject.digest).toBe(subject.digest);
		expect(parseTraceArtifact(m, subject.digest, "t")).toEqual(blob);
		expect(
			codeOf(() => parseTraceArtifact(m, `sha256:${"d".repeat(64)}`, "t")),
		).toBe("AUTH_FAILED");
		expect(referrersTag(subject.digest)).toBe(`sha256-${"c".repeat(64)}`);
	});

	it("arbitrary JSON never crashes the index and artifact parsers (property)", () => {
		fc.assert(
			fc.property(fc.jsonValue(), (v) => {
				const b = Buffer.from(JSON.stringify(v) ?? "null");
				expect(["ok", "LAYOUT_INVALID"]).toContain(
					codeOf(() => parseReferrersIndex(b, "i")),
				);
				expect(["ok", "LAYOUT_INVALID", "AUTH_FAILED"]).toContain(
					codeOf(() => parseTraceArtifact(b, subject.digest, "a")),
				);
			}),
			{ numRuns: 1000 },
		);
		expect(codeOf(() => parseReferrersIndex(Buffer.from("{"), "i"))).toBe(
			"LAYOUT_INVALID",
		);
	});

	const dirs: string[] = [];
	afterAll(async () => {
		for (const d of dirs) await rm(d, { recursive: true, force: true });
	});

	it("a layout: attach, find, re-attach replaces the trace and keeps other referrers", async () => {
		const dir = await mkdtemp(join(tmpdir(), "dadi-trace-test-"));
		dirs.push(dir);
		const layout = await OciLayout.openOrCreate(dir);
		const store = new LayoutReferrerStore(layout);
		expect(await findTrace(store, subject.digest)).toBeUndefined();
		// Another tool's referrer already listed under the tag.
		const other = await layout.writeBlob(Buffer.from("{}"), MT_OCI_MANIFEST);
		const idx = {
			schemaVersion: 2,
			mediaType: "application/vnd.oci.image.index.v1+json",
			manifests: [{ ...other, artifactType: "application/example" }],
		};
		await store.putManifest(
			Buffer.from(JSON.stringify(idx)),
			"application/vnd.oci.image.index.v1+json",
			referrersTag(subject.digest),
		);
		const a = await attachTrace(store, subject, Buffer.from("first"));
		expect(a.replaced).toBe(0);
		const b = await attachTrace(store, subject, Buffer.from("second"));
		expect(b.replaced).toBe(1);
		const found = await findTrace(store, subject.digest);
		expect(found?.sealed.toString()).toBe("second");
		expect(found?.manifest.digest).toBe(b.manifest.digest);
		const index = parseReferrersIndex(
			(await store.getTagged(referrersTag(subject.digest))) as Buffer,
			"i",
		);
		expect(index.map((d) => d.artifactType)).toEqual([
			"application/example",
			TRACE_ARTIFACT_TYPE,
		]);
	});
});

describe("trace flags", () => {
	it("recording implies --prefetch none; contradictions are USAGE", () => {
		// without a disk cache the replay is bounded by what the memory cache holds
		expect(traceFlags({})).toMatchObject({
			prefetch: "auto",
			prefetchBudget: 48 << 20,
		});
		expect(traceFlags({ cacheDir: "/c" }).prefetchBudget).toBeUndefined();
		expect(
			traceFlags({
				recordTrace: "/x",
				traceBudgetMs: "5000",
				traceBudgetBytes: "1M",
			}),
		).toEqual({
			record: "/x",
			budgetMs: 5000,
			budgetBytes: 1 << 20,
			prefetch: "none",
			prefetchBudget: undefined,
		});
		expect(
			traceFlags({ prefetch: "trace", prefetchBudget: "64k" }),
		).toMatchObject({ prefetch: "trace", prefetchBudget: 65536 });
		for (const bad of [
			{ prefetch: "always" },
			{ traceBudgetMs: "10" },
			{ recordTrace: "/x", prefetch: "auto" },
			{ recordTrace: "/x", traceBudgetMs: "0" },
			{ recordTrace: "/x", traceBudgetMs: "1.5" },
			{ prefetch: "none", prefetchBudget: "1M" },
			{ prefetchBudget: "lots" },
		])
			expect(
				codeOf(() => traceFlags(bad)),
				JSON.stringify(bad),
			).toBe("USAGE");
	});
});
