/**
 * The snapshotter's pure parts: containerd's filter language (examples and property tests: no input
 * crashes the parser, generated filters mean what they say), the metadata codec (round trip;
 * random and mutated files are refused with FORMAT_* codes), the operations' error codes in
 * containerd's order, and the overlay snapshotter's mount descriptions.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DadiError, isDadiError } from "../src/errors.js";
import {
	parseFilter,
	parseFilters,
	unquote,
} from "../src/snapshotter/filters.js";
import {
	decodeMetadata,
	encodeMetadata,
} from "../src/snapshotter/metadata-codec.js";
import * as model from "../src/snapshotter/model.js";
import { snapshotMounts } from "../src/snapshotter/mounts.js";
import type { Info } from "../src/snapshotter/types.js";

const T = new Date("2026-01-02T03:04:05.678Z");

function info(o: Partial<Info>): Info {
	return {
		name: "n",
		parent: "",
		kind: "committed",
		created: T,
		updated: T,
		labels: {},
		...o,
	};
}
function matches(filter: string, i: Info): boolean {
	return parseFilter(filter).match((p) => model.lookupField(i, p));
}
function code(fn: () => unknown): string | undefined {
	try {
		fn();
	} catch (e) {
		return isDadiError(e) ? e.code : `not a DadiError: ${String(e)}`;
	}
	return undefined;
}

describe("containerd filters", () => {
	const ref = "containerd.io/snapshot.ref";
	const claimed = info({
		name: "sha256:abc",
		parent: "default/3/sha256:def",
		labels: { [ref]: "sha256:abc", "a.b": "x y", plain: "v" },
	});

	it("the filter containerd's metadata layer sends for a remote snapshot", () => {
		expect(
			matches(
				`labels."${ref}"==sha256:abc,parent=="default/3/sha256:def"`,
				claimed,
			),
		).toBe(true);
		expect(matches(`labels."${ref}"==sha256:abc,parent==""`, claimed)).toBe(
			false,
		);
		expect(
			matches(
				`labels."${ref}"==sha256:abd,parent=="default/3/sha256:def"`,
				claimed,
			),
		).toBe(false);
		expect(
			matches(
				`labels."${ref}"==sha256:abc,parent==""`,
				info({ labels: { [ref]: "sha256:abc" } }),
			),
		).toBe(true);
	});

	it("operators, presence, dotted label keys, quoting, regular expressions", () => {
		expect(matches("kind==committed", claimed)).toBe(true);
		expect(matches("kind!=committed", claimed)).toBe(false);
		expect(matches("kind==active", info({ kind: "active" }))).toBe(true);
		expect(matches("labels.plain", claimed)).toBe(true);
		expect(matches("labels.missing", claimed)).toBe(false);
		expect(matches("labels.missing!=x", claimed)).toBe(true);
		expect(matches('labels.a.b=="x y"', claimed)).toBe(true); // a path a.b names label "a.b"
		expect(matches('labels."a.b"=="x y"', claimed)).toBe(true);
		expect(matches("name~=^sha256:", claimed)).toBe(true);
		expect(matches("name~=/^sha256:a/", claimed)).toBe(true);
		expect(matches("name~=|b+c$|", claimed)).toBe(true);
		expect(matches("name~=^default", claimed)).toBe(false);
		expect(matches("name~=(", claimed)).toBe(false); // does not compile: matches nothing
		expect(matches(" kind == committed", claimed)).toBe(true);
		expect(matches("kind==committed,labels.plain==v", claimed)).toBe(true);
		expect(matches("kind==committed,labels.plain==w", claimed)).toBe(false);
		expect(matches("", claimed)).toBe(true);
		expect(
			parseFilters(["kind==view", "labels.plain==v"]).match((p) =>
				model.lookupField(claimed, p),
			),
		).toBe(true);
		expect(parseFilters([]).match(() => undefined)).toBe(true);
		expect(
			matches('name=="sha256:\\x61bc"', info({ name: "sha256:abc" })),
		).toBe(true);
		expect(matches('name=="\\u00e9"', info({ name: "é" }))).toBe(true);
	});

	it("malformed filters are INPUT_INVALID", () => {
		for (const bad of [
			"name==",
			"==x",
			"name=x",
			"name===x",
			'name=="open',
			"name==a ,kind==view",
			"name==/x/",
			'name=="\\q"',
			"a..b",
			"name==x\0",
			",",
			"name==,",
			"name\uFFFD",
			'"a\nb"==c',
		])
			expect(
				code(() => parseFilter(bad)),
				bad,
			).toBe("INPUT_INVALID");
	});

	it("property: any text parses or fails with INPUT_INVALID, never otherwise", () => {
		const chars = fc.constantFrom(
			..."abc.,=!~\"'/|\\ _0x\n\t\u00e9\0:".split(""),
		);
		fc.assert(
			fc.property(
				fc.oneof(fc.string(), fc.string({ unit: chars, maxLength: 40 })),
				(s) => {
					const c = code(() => parseFilter(s).match(() => "v"));
					expect(c === undefined || c === "INPUT_INVALID").toBe(true);
				},
			),
			{ numRuns: 3000 },
		);
	});

	it("property: a generated == / != / presence filter means what it says", () => {
		const goQuote = (s: string) => JSON.stringify(s); // Go's %q for these characters
		const key = fc.string({
			unit: fc.constantFrom(..."ab.c/_-:"),
			minLength: 1,
			maxLength: 6,
		});
		const val = fc.string({
			unit: fc.constantFrom(...'ab ,"\\é:'),
			maxLength: 6,
		});
		fc.assert(
			fc.property(
				fc.dictionary(
					key,
					val.filter((v) => v !== ""),
					{ maxKeys: 4 },
				),
				key,
				val,
				fc.constantFrom("==", "!=", "present"),
				(labels, k, v, op) => {
					const i = info({ labels });
					const field = `labels.${goQuote(k)}`;
					const f = op === "present" ? field : `${field}${op}${goQuote(v)}`;
					const has = Object.hasOwn(labels, k);
					const want =
						op === "present"
							? has
							: op === "=="
								? has && labels[k] === v
								: (labels[k] ?? "") !== v;
					expect(matches(f, i)).toBe(want);
				},
			),
			{ numRuns: 1000 },
		);
	});

	it("unquote: Go escapes", () => {
		expect(unquote('"a\\tb"')).toBe("a\tb");
		expect(unquote('"\\101"')).toBe("A");
		expect(unquote('"\\U0001F600"')).toBe("😀");
		expect(unquote('"a')).toBeUndefined();
		expect(unquote('"\\777"')).toBeUndefined();
	});
});

function sample(): model.State {
	let s = model.emptyState();
	const add = (
		key: string,
		kind: model.SnapshotRecord["kind"],
		parent: string,
	) => {
		s = model.withRecord(
			s,
			key,
			model.newRecord(s, kind, parent, { k: "v" }, T),
		);
	};
	add("base", "committed", "");
	add("mid", "committed", "base");
	add("active", "active", "mid");
	add("view", "view", "mid");
	return s;
}

describe("operations: codes in containerd's order", () => {
	it("create: parent missing → NotFound, parent not committed → InvalidArgument, key taken → AlreadyExists", () => {
		const s = sample();
		expect(code(() => model.checkCreate(s, "base", "nope", {}))).toBe(
			"INPUT_NOT_FOUND",
		);
		expect(code(() => model.checkCreate(s, "new", "active", {}))).toBe(
			"INPUT_INVALID",
		);
		expect(code(() => model.checkCreate(s, "new", "view", {}))).toBe(
			"INPUT_INVALID",
		);
		expect(code(() => model.checkCreate(s, "mid", "base", {}))).toBe(
			"OUTPUT_EXISTS",
		);
		expect(code(() => model.checkCreate(s, "", "base", {}))).toBe(
			"INPUT_INVALID",
		);
		expect(
			code(() => model.checkCreate(s, "new", "base", { k: "x".repeat(4096) })),
		).toBe("INPUT_INVALID");
		expect(
			code(() => model.checkCreate(s, "new", "base", { k: "x".repeat(4095) })),
		).toBeUndefined();
		expect(code(() => model.checkCreate(s, "new", "", {}))).toBeUndefined();
	});

	it("commit: key missing → NotFound (also a repeated commit), name taken → AlreadyExists, not active → FailedPrecondition", () => {
		const s = sample();
		expect(code(() => model.checkCommit(s, "c", "nope", {}))).toBe(
			"INPUT_NOT_FOUND",
		);
		expect(code(() => model.checkCommit(s, "base", "active", {}))).toBe(
			"OUTPUT_EXISTS",
		);
		expect(code(() => model.checkCommit(s, "c", "view", {}))).toBe(
			"PRECONDITION_FAILED",
		);
		expect(code(() => model.checkCommit(s, "c", "mid", {}))).toBe(
			"PRECONDITION_FAILED",
		);
		const after = model.commit(
			s,
			"c",
			"active",
			{ n: "1", empty: "" },
			{ size: 4096, inodes: 1 },
			T,
		);
		expect(after.snapshots.has("active")).toBe(false);
		expect(after.snapshots.get("c")).toMatchObject({
			kind: "committed",
			parent: "mid",
			usage: { size: 4096, inodes: 1 },
		});
		expect({ ...after.snapshots.get("c")?.labels }).toEqual({ n: "1" }); // replaced, not inherited; empty dropped
		expect(after.snapshots.get("c")?.id).toBe(s.snapshots.get("active")?.id);
		expect(code(() => model.checkCommit(after, "c2", "active", {}))).toBe(
			"INPUT_NOT_FOUND",
		);
	});

	it("remove: NotFound, FailedPrecondition while it has children", () => {
		const s = sample();
		expect(code(() => model.remove(s, "nope"))).toBe("INPUT_NOT_FOUND");
		expect(code(() => model.remove(s, "mid"))).toBe("PRECONDITION_FAILED");
		const r = model.remove(
			model.remove(model.remove(s, "active").state, "view").state,
			"mid",
		);
		expect([...r.state.snapshots.keys()]).toEqual(["base"]);
	});

	it("update: labels, labels.KEY, other paths InvalidArgument, unknown NotFound", () => {
		const s = sample();
		const u = (paths: string[], labels: Record<string, string>) => ({
			...model.update(s, "base", labels, paths, T).snapshots.get("base")
				?.labels,
		});
		expect(u([], { a: "1" })).toEqual({ a: "1" });
		expect(u(["labels"], { a: "1" })).toEqual({ a: "1" });
		expect(u(["labels.a"], { a: "1", b: "2" })).toEqual({ k: "v", a: "1" });
		expect(u(["labels.k"], {})).toEqual({});
		expect(code(() => model.update(s, "base", {}, ["parent"], T))).toBe(
			"INPUT_INVALID",
		);
		expect(code(() => model.update(s, "nope", {}, [], T))).toBe(
			"INPUT_NOT_FOUND",
		);
		expect(
			code(() => model.update(s, "base", { a: "x".repeat(5000) }, [], T)),
		).toBe("INPUT_INVALID");
	});
});

describe("mounts as containerd's overlay snapshotter", () => {
	const o = { indexOff: true, userxattr: false };
	it("bind for no parents, read-only for a view", () => {
		expect(
			snapshotMounts(
				{ kind: "active", upper: "/r/1/fs", work: "/r/1/work", lowers: [] },
				o,
			),
		).toEqual([{ type: "bind", source: "/r/1/fs", options: ["rw", "rbind"] }]);
		expect(
			snapshotMounts(
				{ kind: "view", upper: "/r/1/fs", work: "/r/1/work", lowers: [] },
				o,
			),
		).toEqual([{ type: "bind", source: "/r/1/fs", options: ["ro", "rbind"] }]);
	});
	it("a view of one parent: ro bind of the parent; of more: overlay without upper", () => {
		expect(
			snapshotMounts(
				{ kind: "view", upper: "/u", work: "/w", lowers: ["/p1"] },
				o,
			),
		).toEqual([{ type: "bind", source: "/p1", options: ["ro", "rbind"] }]);
		expect(
			snapshotMounts(
				{ kind: "view", upper: "/u", work: "/w", lowers: ["/p1", "/p2"] },
				o,
			),
		).toEqual([
			{
				type: "overlay",
				source: "overlay",
				options: ["index=off", "lowerdir=/p1:/p2"],
			},
		]);
	});
	it("active over parents: overlay with work, upper and lower dirs, nearest first", () => {
		expect(
			snapshotMounts(
				{ kind: "active", upper: "/u", work: "/w", lowers: ["/p1", "/p2"] },
				{ indexOff: false, userxattr: true },
			),
		).toEqual([
			{
				type: "overlay",
				source: "overlay",
				options: ["userxattr", "workdir=/w", "upperdir=/u", "lowerdir=/p1:/p2"],
			},
		]);
	});
});

describe("metadata.json", () => {
	it("round trips", () => {
		const s = sample();
		const r = s.snapshots.get("base") as model.SnapshotRecord;
		r.remote = { layer: "sha256:x", n: [1, 2] };
		r.usage = { size: 8192, inodes: 3 };
		const back = decodeMetadata(encodeMetadata(s), "m");
		expect(back).toEqual(s);
		expect(encodeMetadata(back).equals(encodeMetadata(s))).toBe(true);
	});

	it("property: random and mutated files are refused with FORMAT_INVALID/FORMAT_UNSUPPORTED, never a crash", () => {
		const good = encodeMetadata(sample());
		fc.assert(
			fc.property(
				fc.oneof(
					fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
					fc
						.tuple(fc.nat(good.length - 1), fc.integer({ min: 1, max: 255 }))
						.map(([i, x]) => {
							const b = Buffer.from(good);
							b[i] = (b[i] as number) ^ x;
							return b;
						}),
					fc.nat(good.length).map((n) => good.subarray(0, n)),
					fc.json().map((j) => Buffer.from(j)),
				),
				(bytes) => {
					const c = code(() => decodeMetadata(bytes, "m"));
					expect([undefined, "FORMAT_INVALID", "FORMAT_UNSUPPORTED"]).toContain(
						c,
					);
					if (c === undefined) {
						// whatever decodes is consistent: parents exist and are committed
						const s = decodeMetadata(bytes, "m");
						for (const r of s.snapshots.values())
							if (r.parent)
								expect(s.snapshots.get(r.parent)?.kind).toBe("committed");
					}
				},
			),
			{ numRuns: 3000 },
		);
	});

	it("refuses an unknown version and a parent loop", () => {
		const doc = JSON.parse(encodeMetadata(sample()).toString());
		expect(
			code(() =>
				decodeMetadata(
					Buffer.from(JSON.stringify({ ...doc, version: 2 })),
					"m",
				),
			),
		).toBe("FORMAT_UNSUPPORTED");
		doc.snapshots.find((x: { key: string }) => x.key === "base").parent = "mid";
		expect(
			code(() => decodeMetadata(Buffer.from(JSON.stringify(doc)), "m")),
		).toBe("FORMAT_INVALID");
	});
});

it("DadiError is what every failure above is", () => {
	expect(new DadiError("PRECONDITION_FAILED", "x").code).toBe(
		"PRECONDITION_FAILED",
	);
});
