/** The policy engine: documents, resource patterns, decisions, claims files, loading, the CLI. */
import { createHash } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Claims } from "../src/attest/claims.js";
import { DadiError } from "../src/errors.js";
import { parseClaims, parseClaimsJson } from "../src/policy/claims-input.js";
import { type CompiledPolicy, parsePolicy } from "../src/policy/document.js";
import {
	decide,
	type PolicyInput,
	SAMPLE_TEE_REFUSED,
	toCelValue,
} from "../src/policy/evaluate.js";
import {
	loadPolicyDir,
	loadPolicyFile,
	loadPolicyFiles,
} from "../src/policy/load.js";
import {
	matchesResource,
	parseResourcePath,
	parseResourcePattern,
} from "../src/policy/resource-pattern.js";
import {
	BIN,
	cleanupTempDirs,
	ROOT,
	rejection,
	runCli,
	tempDir,
	thrown,
} from "./helpers.js";

afterAll(cleanupTempDirs);

interface Rule {
	name: string;
	expr: string;
}

function doc(
	name: string,
	rules: Rule[],
	resources: string[] = ["default/*/*"],
	extra: Record<string, unknown> = {},
): string {
	return JSON.stringify({
		apiVersion: "dadi.dev/v1alpha1",
		kind: "KeyReleasePolicy",
		name,
		resources,
		rules,
		...extra,
	});
}

function policy(
	name: string,
	rules: Rule[] | string,
	resources?: string[],
): CompiledPolicy {
	const list =
		typeof rules === "string" ? [{ name: "only", expr: rules }] : rules;
	return parsePolicy(doc(name, list, resources), `${name}.json`);
}

const SAMPLE: Claims = {
	tee: "sample",
	debug: false,
	measurement: "",
	report_data: "ab".repeat(48),
	init_data: "",
	tcb: { svn: 1 },
	tcb_status: "",
	tee_specific: { insecure: true },
};

const MEASUREMENT = "5a".repeat(48);
const SNP: Claims = {
	tee: "snp",
	debug: false,
	measurement: MEASUREMENT,
	report_data: "cd".repeat(64),
	init_data: "01".repeat(32),
	tcb: { bootloader: 3, tee: 0, snp: 8, microcode: 115 },
	tcb_status: "UpToDate",
	tee_specific: {
		product: "Genoa",
		vmpl: 0,
		ratio: 0.75,
		flags: ["smt", "sme"],
	},
};

const SNP_POLICY = policy("snp-prod", [
	{ name: "is-snp", expr: "tee == 'snp'" },
	{ name: "no-debug", expr: "!claims.debug" },
	{
		name: "tcb-minimum",
		expr: "claims.tcb.bootloader >= 3 && claims.tcb.snp >= 8 && claims.tcb.microcode >= 115",
	},
	{ name: "measurement", expr: `claims.measurement in ['${MEASUREMENT}']` },
	{ name: "init-data", expr: `claims.init_data == '${"01".repeat(32)}'` },
]);

function input(
	claims: Claims,
	resource = "default/app/key",
	image = "",
): PolicyInput {
	return { claims, resource, request: { image } };
}

const STRICT = { insecureDev: false };
const DEV = { insecureDev: true };

describe("resource paths and patterns", () => {
	it("parses REPO/TYPE/TAG", () => {
		expect(parseResourcePath("default/my-image/key", "--resource")).toEqual({
			repository: "default",
			type: "my-image",
			tag: "key",
			path: "default/my-image/key",
		});
		expect(parseResourcePath("a.b/C_1/v-2.0", "x").tag).toBe("v-2.0");
	});

	it("rejects malformed paths with USAGE, or INPUT_INVALID on request", () => {
		for (const bad of [
			"",
			"a/b",
			"a/b/c/d",
			"a//c",
			"/a/b",
			"a/b/c/",
			"./b/c",
			"a/../c",
			"a/b/*",
			"a b/c/d",
			"ä/b/c",
			`${"x".repeat(129)}/b/c`,
		])
			expect(thrown(() => parseResourcePath(bad, "--resource")).code).toBe(
				"USAGE",
			);
		const e = thrown(() =>
			parseResourcePath("a/b", "the request", "INPUT_INVALID"),
		);
		expect(e.code).toBe("INPUT_INVALID");
		expect(e.message).toMatch(/^the request: "a\/b" is not a resource path/);
		expect(
			parseResourcePath(`${"x".repeat(128)}/b/c`, "x").repository,
		).toHaveLength(128);
	});

	it("matches whole-segment wildcards and literals", () => {
		expect(matchesResource("default/*/*", "default/app/key")).toBe(true);
		expect(matchesResource("default/*/*", "other/app/key")).toBe(false);
		expect(matchesResource("*/*/key", "a/b/key")).toBe(true);
		expect(matchesResource("*/*/key", "a/b/key2")).toBe(false);
		expect(matchesResource("default/app/key", "default/app/key")).toBe(true);
		expect(matchesResource("default/app/key", "default/app/Key")).toBe(false);
		expect(matchesResource("*/*/*", "a/b/c")).toBe(true);
		// a * is a whole segment, never a prefix or a glob across segments
		expect(matchesResource("default/app*/key", "default/app1/key")).toBe(false);
		expect(matchesResource("*", "a/b/c")).toBe(false);
		expect(matchesResource("*/*/*", "a/b")).toBe(false);
		expect(matchesResource("*/*/*", "a/../c")).toBe(false);
	});

	it("validates patterns with POLICY_INVALID", () => {
		expect(parseResourcePattern("default/*/*", "p")).toBe("default/*/*");
		for (const bad of ["default/**/x", "a/b", "a/../c", "a/b*/c", "*/*/*/*"])
			expect(thrown(() => parseResourcePattern(bad, "p")).code).toBe(
				"POLICY_INVALID",
			);
	});

	it("agrees with a reference implementation (property)", () => {
		const validSeg = (s: string) =>
			/^[A-Za-z0-9._-]{1,128}$/.test(s) && s !== "." && s !== "..";
		const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
		const reference = (pattern: string, path: string): boolean => {
			const ps = pattern.split("/");
			const xs = path.split("/");
			if (ps.length !== 3 || xs.length !== 3) return false;
			if (!xs.every(validSeg) || !ps.every((s) => s === "*" || validSeg(s)))
				return false;
			const re = new RegExp(
				`^${ps.map((s) => (s === "*" ? "[^/]+" : escapeRe(s))).join("/")}$`,
			);
			return re.test(path);
		};
		const seg = fc.oneof(
			fc.constantFrom("a", "b", "default", "*", ".", "..", "", "a.b", "x*"),
			fc.string({ maxLength: 4 }),
		);
		const text = fc
			.array(seg, { minLength: 1, maxLength: 4 })
			.map((s) => s.join("/"));
		fc.assert(
			fc.property(text, text, (pattern, path) => {
				expect(matchesResource(pattern, path)).toBe(reference(pattern, path));
			}),
			{ numRuns: 3000 },
		);
	});
});

describe("policy documents", () => {
	it("compiles a valid policy", () => {
		const text = doc("sample-dev", [
			{ name: "sample", expr: "tee == 'sample'" },
		]);
		const p = parsePolicy(text, "sample-dev.json");
		expect(p.name).toBe("sample-dev");
		expect(p.description).toBe("");
		expect(p.resources).toEqual(["default/*/*"]);
		expect(p.rules.map((r) => r.name)).toEqual(["sample"]);
		expect(p.digest).toBe(createHash("sha256").update(text).digest("hex"));
		expect(p.source).toBe("sample-dev.json");
		const d = parsePolicy(
			doc("d", [{ name: "r", expr: "true" }], ["a/b/c"], {
				description: "hello",
			}),
			"d.json",
		);
		expect(d.description).toBe("hello");
	});

	const cases: [string, string, RegExp][] = [
		["not JSON", "{", /not valid JSON/],
		["an array", "[]", /a policy is a JSON object/],
		[
			"an unknown top-level field",
			doc("p", [{ name: "r", expr: "true" }], undefined, { version: 2 }),
			/unknown field "version"/,
		],
		[
			"an unknown rule field",
			doc("p", [{ name: "r", expr: "true", effect: "allow" } as Rule]),
			/rule "r": unknown field "effect"/,
		],
		[
			"a wrong apiVersion",
			doc("p", [{ name: "r", expr: "true" }], undefined, {
				apiVersion: "v1",
			}),
			/"apiVersion" must be "dadi.dev\/v1alpha1"/,
		],
		[
			"a wrong kind",
			doc("p", [{ name: "r", expr: "true" }], undefined, { kind: "Policy" }),
			/"kind" must be "KeyReleasePolicy"/,
		],
		["an uppercase name", doc("Prod", [{ name: "r", expr: "true" }]), /"name"/],
		[
			"a name with a slash",
			doc("a/b", [{ name: "r", expr: "true" }]),
			/"name"/,
		],
		[
			"a name starting with a dash",
			doc("-p", [{ name: "r", expr: "true" }]),
			/"name"/,
		],
		[
			"a too long name",
			doc("p".repeat(64), [{ name: "r", expr: "true" }]),
			/"name"/,
		],
		["empty rules", doc("p", []), /"rules" must be a list of 1 to 64/],
		[
			"65 rules",
			doc(
				"p",
				Array.from({ length: 65 }, (_, i) => ({ name: `r${i}`, expr: "true" })),
			),
			/"rules" must be a list of 1 to 64/,
		],
		[
			"no resources",
			doc("p", [{ name: "r", expr: "true" }], []),
			/"resources" must be a list of 1 to 64/,
		],
		[
			"65 resources",
			doc(
				"p",
				[{ name: "r", expr: "true" }],
				Array.from({ length: 65 }, (_, i) => `a/b/c${i}`),
			),
			/"resources" must be a list of 1 to 64/,
		],
		[
			"a bad resource pattern",
			doc("p", [{ name: "r", expr: "true" }], ["default/**/key"]),
			/resources\[0\]: "default\/\*\*\/key" is not a resource pattern/,
		],
		[
			"a two-segment pattern",
			doc("p", [{ name: "r", expr: "true" }], ["default/*"]),
			/is not a resource pattern/,
		],
		[
			"duplicate rule names",
			doc("p", [
				{ name: "r", expr: "true" },
				{ name: "r", expr: "false" },
			]),
			/rule "r": the name is used by another rule/,
		],
		[
			"a bad rule name",
			doc("p", [{ name: "No Debug", expr: "true" }]),
			/rule "No Debug": "name" must be/,
		],
		[
			"an empty expression",
			doc("p", [{ name: "r", expr: "  " }]),
			/rule "r": "expr" must be a non-empty string/,
		],
		[
			"a non-string expression",
			JSON.stringify({
				apiVersion: "dadi.dev/v1alpha1",
				kind: "KeyReleasePolicy",
				name: "p",
				resources: ["a/b/c"],
				rules: [{ name: "r", expr: true }],
			}),
			/rule "r": "expr" must be a non-empty string/,
		],
		[
			"bad expression syntax",
			doc("p", [{ name: "r", expr: "tee == " }]),
			/rule "r": the expression does not parse/,
		],
		[
			"an unknown variable",
			doc("p", [{ name: "r", expr: "user.admin" }]),
			/rule "r": the expression does not type-check: Unknown variable: user/,
		],
		[
			"a misspelt claims field",
			doc("p", [{ name: "r", expr: "!claims.debgu" }]),
			/rule "r": the expression does not type-check: No such key: debgu/,
		],
		[
			"a type error",
			doc("p", [{ name: "r", expr: "tee + 1 == 2" }]),
			/rule "r": the expression does not type-check/,
		],
		[
			"a non-bool rule",
			doc("p", [{ name: "r", expr: "claims.tcb.snp" }]),
			/rule "r": the expression yields int, but a rule must yield a bool/,
		],
		[
			"matches()",
			doc("p", [{ name: "r", expr: "request.image.matches('^(a+)+$')" }]),
			/rule "r": matches\(\) is not allowed/,
		],
		[
			"a too long expression",
			doc("p", [{ name: "r", expr: `true${" && true".repeat(600)}` }]),
			/rule "r": "expr" is 4804 characters, more than the 4096 allowed/,
		],
		[
			"too deep nesting",
			doc("p", [
				{ name: "r", expr: `${"(".repeat(100)}true${")".repeat(100)}` },
			]),
			/rule "r": the expression does not parse: Exceeded maxDepth/,
		],
		[
			"huge text",
			doc("p", [{ name: "r", expr: "true" }], undefined, {
				description: "x".repeat(300 * 1024),
			}),
			/the policy is \d+ bytes, more than the 262144 allowed/,
		],
		[
			"a too long description",
			doc("p", [{ name: "r", expr: "true" }], undefined, {
				description: "x".repeat(1025),
			}),
			/"description" must be a string of at most 1024/,
		],
	];
	for (const [what, text, message] of cases)
		it(`rejects ${what} with POLICY_INVALID`, () => {
			const e = thrown(() => parsePolicy(text, "policies/p.json"));
			expect(e.code).toBe("POLICY_INVALID");
			expect(e.message.startsWith("policies/p.json: ")).toBe(true);
			expect(e.message).toMatch(message);
		});

	it("throws nothing but POLICY_INVALID for arbitrary strings (property)", () => {
		fc.assert(
			fc.property(fc.oneof(fc.string(), fc.json()), (text) => {
				try {
					parsePolicy(text, "x.json");
				} catch (e) {
					expect(e).toBeInstanceOf(DadiError);
					expect((e as DadiError).code).toBe("POLICY_INVALID");
				}
			}),
			{ numRuns: 2000 },
		);
	});

	it("throws nothing but POLICY_INVALID for arbitrary JSON values and near-policies (property)", () => {
		const snippet = fc.oneof(
			fc.string({ maxLength: 40 }),
			fc.constantFrom(
				"tee == 'snp'",
				"claims.tcb.snp >= 8",
				"claims.tee_specific.x",
				"claims.tcb",
				"request.image in ['a']",
				"resource.tag.startsWith('v')",
				"[1, 'a']",
				"1 / 0 == 1",
				"has(claims.tee_specific.y) && claims.tee_specific.y == true",
				"claims.tee_specific.flags.exists(f, f == 'smt')",
				"size(claims.measurement) == 96",
				"request.image.matches('a')",
				"cel.bind(x, 1, x == 1)",
				"dyn(1)",
				")(",
			),
		);
		/** Mostly `good`, sometimes any JSON value. */
		const mostly = <T>(good: fc.Arbitrary<T>) =>
			fc.oneof(
				{ arbitrary: good, weight: 9 },
				{ arbitrary: fc.jsonValue(), weight: 1 },
			);
		const nearPolicy = fc.record(
			{
				apiVersion: mostly(fc.constant("dadi.dev/v1alpha1")),
				kind: mostly(fc.constant("KeyReleasePolicy")),
				name: mostly(fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,62}$/)),
				description: mostly(fc.string({ maxLength: 20 })),
				resources: mostly(
					fc.array(
						mostly(fc.constantFrom("default/*/*", "a/b/c", "*/*/*", "a/*")),
						{ maxLength: 3 },
					),
				),
				rules: mostly(
					fc.array(
						fc.record(
							{
								name: mostly(fc.constantFrom("a", "b", "c")),
								expr: mostly(snippet),
							},
							{ requiredKeys: ["name", "expr"] },
						),
						{ maxLength: 4 },
					),
				),
			},
			{ requiredKeys: ["apiVersion", "kind", "name", "resources", "rules"] },
		);
		fc.assert(
			fc.property(fc.oneof(fc.jsonValue(), nearPolicy), (value) => {
				try {
					parsePolicy(JSON.stringify(value) ?? "", "x.json");
				} catch (e) {
					expect(e).toBeInstanceOf(DadiError);
					expect((e as DadiError).code).toBe("POLICY_INVALID");
				}
			}),
			{ numRuns: 2000 },
		);
	});
});

describe("decisions", () => {
	const sampleDev = policy("sample-dev", "tee == 'sample'");

	it("allows when every rule of a matching policy holds", () => {
		const d = decide([SNP_POLICY], input(SNP), STRICT);
		expect(d.allow).toBe(true);
		expect(d.policy).toBe("snp-prod");
		expect(d.reasons).toEqual([
			"allowed by policy snp-prod: all 5 rule(s) hold for default/app/key",
		]);
		expect(d.results).toEqual([
			{
				policy: "snp-prod",
				allow: true,
				rules: [
					{ rule: "is-snp", ok: true },
					{ rule: "no-debug", ok: true },
					{ rule: "tcb-minimum", ok: true },
					{ rule: "measurement", ok: true },
					{ rule: "init-data", ok: true },
				],
			},
		]);
	});

	it("denies when a rule fails, naming every failed rule", () => {
		const d = decide(
			[SNP_POLICY],
			input({ ...SNP, debug: true, tcb: { ...SNP.tcb, snp: 7 } }),
			STRICT,
		);
		expect(d.allow).toBe(false);
		expect(d.policy).toBeUndefined();
		expect(d.reasons).toEqual([
			"snp-prod/no-debug: failed (!claims.debug)",
			"snp-prod/tcb-minimum: failed (claims.tcb.bootloader >= 3 && claims.tcb.snp >= 8 && claims.tcb.microcode >= 115)",
		]);
		expect(d.results[0]?.rules.filter((r) => !r.ok).map((r) => r.rule)).toEqual(
			["no-debug", "tcb-minimum"],
		);
	});

	it("records a rule's error and counts it as false", () => {
		const p = policy("p", [
			{ name: "is-snp", expr: "tee == 'snp'" },
			{ name: "svn", expr: "claims.tcb.svn >= 1" },
		]);
		const d = decide([p], input(SNP), STRICT);
		expect(d.allow).toBe(false);
		const rule = d.results[0]?.rules[1];
		expect(rule?.ok).toBe(false);
		expect(rule?.error).toMatch(/No such key: svn/);
		expect(d.reasons).toEqual([
			"p/svn: error: No such key: svn (claims.tcb.svn >= 1)",
		]);
		// division by zero and overflow are errors too
		const q = policy("q", "claims.tcb.snp / claims.tcb.tee == 1");
		expect(decide([q], input(SNP), STRICT).results[0]?.rules[0]?.error).toMatch(
			/division by zero/,
		);
	});

	it("counts a non-bool result as false", () => {
		const p = policy("p", "claims.tee_specific.vmpl");
		const d = decide([p], input(SNP), STRICT);
		expect(d.allow).toBe(false);
		expect(d.results[0]?.rules[0]).toEqual({
			rule: "only",
			ok: false,
			error: "yielded int 0, not a bool",
		});
		const s = policy("s", "claims.tee_specific.product");
		expect(decide([s], input(SNP), STRICT).results[0]?.rules[0]?.error).toBe(
			'yielded string "Genoa", not a bool',
		);
	});

	it("denies by default when no policy covers the resource", () => {
		const d = decide([SNP_POLICY], input(SNP, "other/app/key"), STRICT);
		expect(d).toEqual({
			allow: false,
			reasons: ["no policy covers resource other/app/key (default: deny)"],
			results: [],
		});
		expect(decide([], input(SNP), STRICT).reasons).toEqual([
			"no policy covers resource default/app/key (default: deny)",
		]);
	});

	it("refuses the sample TEE without --insecure-dev, whatever the policies", () => {
		const allowAll = policy("allow-all", "true", ["*/*/*"]);
		const d = decide([sampleDev, allowAll], input(SAMPLE), STRICT);
		expect(d).toEqual({
			allow: false,
			reasons: [SAMPLE_TEE_REFUSED],
			results: [],
		});
		expect(SAMPLE_TEE_REFUSED).toBe(
			"the sample TEE is for development only and this broker runs without --insecure-dev",
		);
	});

	it("lets a policy allow the sample TEE with --insecure-dev", () => {
		const d = decide([sampleDev], input(SAMPLE), DEV);
		expect(d.allow).toBe(true);
		expect(d.policy).toBe("sample-dev");
		// --insecure-dev only lifts the gate: policies still decide
		expect(decide([SNP_POLICY], input(SAMPLE), DEV).allow).toBe(false);
		expect(decide([sampleDev], input(SNP), DEV).allow).toBe(false);
	});

	it("evaluates only the policies whose patterns match, with wildcards", () => {
		const keys = policy("keys", "true", ["*/*/key"]);
		const app = policy("app", "true", ["default/app/*"]);
		const exact = policy("exact", "true", ["team/db/v1"]);
		const names = (r: string) =>
			decide([keys, app, exact], input(SNP, r), STRICT).results.map(
				(x) => x.policy,
			);
		expect(names("default/app/key")).toEqual(["app", "keys"]);
		expect(names("other/x/key")).toEqual(["keys"]);
		expect(names("default/app/cert")).toEqual(["app"]);
		expect(names("team/db/v1")).toEqual(["exact"]);
		expect(names("team/db/v2")).toEqual([]);
	});

	it("allows when a second policy allows, evaluating in name order", () => {
		const strict = policy("a-strict", "claims.tcb.snp >= 99");
		const ok = policy("b-ok", "claims.tcb.snp >= 8");
		const alsoOk = policy("c-also", "true");
		const list = [alsoOk, ok, strict];
		const d = decide(list, input(SNP), STRICT);
		expect(d.allow).toBe(true);
		expect(d.policy).toBe("b-ok");
		expect(d.results.map((r) => [r.policy, r.allow])).toEqual([
			["a-strict", false],
			["b-ok", true],
			["c-also", true],
		]);
		expect(list.map((p) => p.name)).toEqual(["c-also", "b-ok", "a-strict"]);
	});

	it("compares TCB numbers as CEL ints", () => {
		const svn = policy("svn", "claims.tcb.svn >= 1");
		expect(decide([svn], input(SAMPLE), DEV).allow).toBe(true);
		expect(
			decide([svn], input({ ...SAMPLE, tcb: { svn: 0 } }), DEV).allow,
		).toBe(false);
		const snp = policy("snp", "claims.tcb.snp >= 8 && claims.tcb.snp < 9u");
		expect(decide([snp], input(SNP), STRICT).allow).toBe(true);
		expect(
			decide([snp], input({ ...SNP, tcb: { ...SNP.tcb, snp: 7 } }), STRICT)
				.allow,
		).toBe(false);
		const eq = policy(
			"eq",
			"claims.tcb.microcode == 115 && claims.tee_specific.vmpl == 0",
		);
		expect(decide([eq], input(SNP), STRICT).allow).toBe(true);
		const dbl = policy("dbl", "claims.tee_specific.ratio > 0.5");
		expect(decide([dbl], input(SNP), STRICT).allow).toBe(true);
		expect(toCelValue(3)).toBe(3n);
		expect(toCelValue(0.75)).toBe(0.75);
		expect(toCelValue({ a: [1, 2.5] })).toEqual({ a: [1n, 2.5] });
	});

	it("checks the requested image", () => {
		const img = `sha256:${"e3".repeat(32)}`;
		const p = policy("img", `request.image in ['${img}']`);
		expect(decide([p], input(SNP, "default/app/key", img), STRICT).allow).toBe(
			true,
		);
		expect(decide([p], input(SNP, "default/app/key", ""), STRICT).allow).toBe(
			false,
		);
		const named = policy(
			"named",
			"request.image != '' && request.image.startsWith('sha256:')",
		);
		expect(
			decide([named], input(SNP, "default/app/key", img), STRICT).allow,
		).toBe(true);
		expect(decide([named], input(SNP), STRICT).allow).toBe(false);
	});

	it("exposes the resource's parts", () => {
		const p = policy(
			"res",
			"resource.repository == 'default' && resource.type == 'app' && resource.tag == 'key' && resource.path == 'default/app/key'",
		);
		expect(decide([p], input(SNP), STRICT).allow).toBe(true);
	});

	it("denies an invalid resource path without throwing", () => {
		const allowAll = policy("allow-all", "true", ["*/*/*"]);
		for (const r of ["", "a/b", "../x/y", "a/b/c/d"]) {
			const d = decide([allowAll], input(SNP, r), STRICT);
			expect(d.allow).toBe(false);
			expect(d.reasons[0]).toMatch(/is not a resource path/);
		}
	});

	it("treats a __proto__ key as an ordinary key", () => {
		const claims = JSON.parse(
			JSON.stringify(SNP).replace(
				'"tee_specific":{',
				'"tee_specific":{"__proto__":"x",',
			),
		) as Claims;
		const p = policy("proto", "claims.tee_specific['__proto__'] == 'x'");
		expect(decide([p], input(claims), STRICT).allow).toBe(true);
		const q = policy("q", "has(claims.tee_specific.constructor)");
		expect(decide([q], input(SNP), STRICT).allow).toBe(false);
	});

	it("never throws and never lets the sample TEE through without --insecure-dev (property)", () => {
		const allowAll = policy("allow-all", "true", ["*/*/*"]);
		const policies = [
			allowAll,
			sampleDev,
			SNP_POLICY,
			policy("tcb", "claims.tcb.svn >= 1 || claims.tcb.snp >= 8", ["*/*/*"]),
			policy("specific", "claims.tee_specific.flags.exists(f, f == 'smt')", [
				"*/*/*",
			]),
			policy("image", "request.image in ['a'] || resource.tag == 'key'", [
				"*/*/*",
			]),
		];
		const key = fc.oneof(
			fc.string({ maxLength: 6 }),
			fc.constantFrom("__proto__", "constructor", "tee", "svn", "snp"),
		);
		const any = fc.anything({
			key,
			maxDepth: 3,
			withBigInt: true,
			withBoxedValues: true,
			withDate: true,
			withMap: true,
			withSet: true,
			withNullPrototype: true,
			withObjectString: true,
			withSparseArray: true,
			withTypedArray: true,
		});
		const claimsLike = fc.oneof(
			any,
			fc.record(
				{
					tee: fc.oneof(fc.constantFrom("sample", "snp", "tdx"), any),
					debug: fc.oneof(fc.boolean(), any),
					measurement: fc.oneof(fc.string(), any),
					report_data: fc.string(),
					init_data: fc.oneof(fc.string(), any),
					tcb: fc.oneof(
						fc.dictionary(
							key,
							fc.oneof(fc.integer(), fc.double(), fc.bigInt(), any),
						),
						any,
					),
					tcb_status: fc.string(),
					tee_specific: fc.oneof(fc.dictionary(key, any), any),
				},
				{ requiredKeys: [] },
			),
		);
		const resource = fc.oneof(
			fc.string(),
			fc.constantFrom("default/app/key", "a/b/c", "a/b", "*/*/*"),
			fc
				.array(fc.stringMatching(/^[A-Za-z0-9._-]{1,8}$/), {
					minLength: 3,
					maxLength: 3,
				})
				.map((s) => s.join("/")),
		);
		const request = fc.oneof(
			fc.record({ image: fc.oneof(fc.string(), any) }),
			any,
		);
		fc.assert(
			fc.property(
				claimsLike,
				resource,
				request,
				fc.boolean(),
				(claims, res, req, insecureDev) => {
					const d = decide(
						policies,
						{ claims, resource: res, request: req } as unknown as PolicyInput,
						{ insecureDev },
					);
					expect(typeof d.allow).toBe("boolean");
					expect(Array.isArray(d.reasons)).toBe(true);
					expect(d.reasons.length).toBeGreaterThan(0);
					const tee =
						typeof claims === "object" && claims !== null
							? (claims as { tee?: unknown }).tee
							: undefined;
					if (tee === "sample" && !insecureDev) {
						expect(d.allow).toBe(false);
						expect(d.reasons).toEqual([SAMPLE_TEE_REFUSED]);
					}
					if (d.allow) expect(d.policy).toBeTypeOf("string");
				},
			),
			{ numRuns: 3000 },
		);
	});
});

describe("claims files", () => {
	it("accepts well-formed claims and copies them", () => {
		const c = parseClaims(JSON.parse(JSON.stringify(SNP)), "c.json");
		expect(c).toEqual(SNP);
		expect(parseClaimsJson(JSON.stringify(SAMPLE), "s.json")).toEqual(SAMPLE);
	});

	const bad: [string, unknown, RegExp][] = [
		["not an object", [], /claims must be a JSON object/],
		["an unknown field", { ...SNP, extra: 1 }, /field "extra" is unknown/],
		[
			"a missing field",
			Object.fromEntries(Object.entries(SNP).filter(([k]) => k !== "tcb")),
			/field tcb is missing/,
		],
		[
			"an unknown TEE",
			{ ...SNP, tee: "sgx" },
			/field tee must be one of sample, snp, tdx/,
		],
		[
			"a string debug",
			{ ...SNP, debug: "false" },
			/field debug must be true or false/,
		],
		[
			"uppercase hex",
			{ ...SNP, measurement: "AB" },
			/field measurement must be lowercase hex/,
		],
		[
			"odd-length hex",
			{ ...SNP, init_data: "abc" },
			/field init_data must be lowercase hex/,
		],
		["a prefixed hex", { ...SNP, report_data: "0xab" }, /field report_data/],
		[
			"a string svn",
			{ ...SNP, tcb: { snp: "8" } },
			/field tcb.snp must be a number/,
		],
		["a list tcb", { ...SNP, tcb: [8] }, /field tcb must be an object/],
		["a numeric tcb_status", { ...SNP, tcb_status: 1 }, /field tcb_status/],
		[
			"a nested tee_specific",
			{ ...SNP, tee_specific: { x: { y: 1 } } },
			/field tee_specific.x must be a string, number, boolean or list of strings/,
		],
		[
			"a list of numbers in tee_specific",
			{ ...SNP, tee_specific: { "odd key": [1] } },
			/field tee_specific\["odd key"\]/,
		],
	];
	for (const [what, value, message] of bad)
		it(`rejects ${what} with INPUT_INVALID naming the field`, () => {
			const e = thrown(() => parseClaims(value, "claims.json"));
			expect(e.code).toBe("INPUT_INVALID");
			expect(e.message).toMatch(/^claims\.json: /);
			expect(e.message).toMatch(message);
		});

	it("rejects text that is not JSON", () => {
		expect(thrown(() => parseClaimsJson("{", "c.json")).code).toBe(
			"INPUT_INVALID",
		);
	});
});

describe("loading policies", () => {
	let dir: string;
	beforeAll(async () => {
		dir = await tempDir();
		await mkdir(join(dir, "pol"));
		await writeFile(
			join(dir, "pol", "b.json"),
			doc("beta", [{ name: "r", expr: "true" }]),
		);
		await writeFile(
			join(dir, "pol", "a.json"),
			doc("alpha", [{ name: "r", expr: "true" }]),
		);
		await writeFile(join(dir, "pol", "README.md"), "not a policy");
		await writeFile(join(dir, "pol", ".#a.json"), "editor lock file");
		await mkdir(join(dir, "pol", "sub.json"));
		await writeFile(
			join(dir, "dup.json"),
			doc("alpha", [{ name: "x", expr: "false" }]),
		);
		await writeFile(join(dir, "broken.json"), "{ nope");
	});

	it("loads *.json files of a directory in name order", async () => {
		const ps = await loadPolicyDir(join(dir, "pol"));
		expect(ps.map((p) => [p.name, p.source])).toEqual([
			["alpha", join(dir, "pol", "a.json")],
			["beta", join(dir, "pol", "b.json")],
		]);
	});

	it("loads the repository's policies", async () => {
		const ps = await loadPolicyDir(join(ROOT, "policies"));
		expect(ps.map((p) => p.name)).toContain("sample-dev");
		const sample = ps.find((p) => p.name === "sample-dev") as CompiledPolicy;
		expect(sample.resources).toEqual(["default/*/*"]);
		expect(decide(ps, input(SAMPLE), DEV).policy).toBe("sample-dev");
		expect(decide(ps, input(SAMPLE), STRICT).allow).toBe(false);
	});

	it("refuses duplicate policy names across files, naming both", async () => {
		const e = await rejection(
			loadPolicyFiles([join(dir, "pol", "a.json"), join(dir, "dup.json")]),
		);
		expect(e.code).toBe("POLICY_INVALID");
		expect(e.message).toContain(join(dir, "dup.json"));
		expect(e.message).toContain(join(dir, "pol", "a.json"));
	});

	it("names the file of an invalid policy", async () => {
		const e = await rejection(loadPolicyFile(join(dir, "broken.json")));
		expect(e.code).toBe("POLICY_INVALID");
		expect(e.message).toMatch(/broken\.json: not valid JSON/);
	});

	it("reports missing files and directories", async () => {
		expect((await rejection(loadPolicyDir(join(dir, "none")))).code).toBe(
			"INPUT_NOT_FOUND",
		);
		expect((await rejection(loadPolicyFile(join(dir, "none.json")))).code).toBe(
			"INPUT_NOT_FOUND",
		);
		expect((await rejection(loadPolicyDir(join(dir, "dup.json")))).code).toBe(
			"INPUT_INVALID",
		);
	});
});

describe("dadi-broker policy (CLI; needs dist built)", () => {
	let dir: string;
	const policies = join(ROOT, "policies");
	beforeAll(async () => {
		dir = await tempDir();
		await writeFile(join(dir, "sample.json"), JSON.stringify(SAMPLE));
		await writeFile(join(dir, "snp.json"), JSON.stringify(SNP));
		await writeFile(
			join(dir, "snp-policy.json"),
			doc("snp-prod", [
				{ name: "is-snp", expr: "tee == 'snp'" },
				{ name: "tcb", expr: "claims.tcb.snp >= 9" },
				{ name: "svn", expr: "claims.tcb.svn >= 1" },
			]),
		);
		await writeFile(
			join(dir, "bad-policy.json"),
			doc("bad", [{ name: "r", expr: "claims.nope" }]),
		);
	});

	const test = (...args: string[]) =>
		runCli(BIN.broker, ["policy", "test", ...args]);

	it("allows the sample TEE under sample-dev with --insecure-dev (exit 0)", async () => {
		const r = await test(
			"--policies",
			policies,
			"--claims",
			join(dir, "sample.json"),
			"--resource",
			"default/app/key",
			"--insecure-dev",
		);
		expect(r.code, r.stderr).toBe(0);
		expect(r.stdout).toMatch(/^ALLOW default\/app\/key \(policy sample-dev\)/);
		expect(r.stdout).toContain("✓ sample-tee: tee == 'sample'");
		expect(r.stderr).toBe("");
	});

	it("denies the sample TEE without --insecure-dev (exit 9, JSON)", async () => {
		const r = await test(
			"--policies",
			policies,
			"--claims",
			join(dir, "sample.json"),
			"--resource",
			"default/app/key",
			"--json",
		);
		expect(r.code).toBe(9);
		expect(r.stderr).toBe("");
		expect(JSON.parse(r.stdout)).toEqual({
			ok: true,
			allow: false,
			policy: null,
			reasons: [SAMPLE_TEE_REFUSED],
			results: [],
		});
	});

	it("explains a denial by failed and erroring rules", async () => {
		const args = [
			"--policy",
			join(dir, "snp-policy.json"),
			join(policies, "sample-dev.json"),
			"--claims",
			join(dir, "snp.json"),
			"--resource",
			"default/app/key",
		];
		const r = await test(...args);
		expect(r.code).toBe(9);
		expect(r.stdout).toMatch(/^DENY {2}default\/app\/key/);
		expect(r.stdout).toContain("✓ is-snp: tee == 'snp'");
		expect(r.stdout).toContain("✗ tcb: claims.tcb.snp >= 9");
		expect(r.stdout).toMatch(
			/✗ svn: claims\.tcb\.svn >= 1 .*error: No such key: svn/,
		);
		const j = await test(...args, "--json");
		expect(j.code).toBe(9);
		const out = JSON.parse(j.stdout);
		expect(out.allow).toBe(false);
		expect(out.reasons).toEqual([
			"sample-dev/sample-tee: failed (tee == 'sample')",
			"snp-prod/tcb: failed (claims.tcb.snp >= 9)",
			"snp-prod/svn: error: No such key: svn (claims.tcb.svn >= 1)",
		]);
		expect(out.results.map((x: { policy: string }) => x.policy)).toEqual([
			"sample-dev",
			"snp-prod",
		]);
	});

	it("denies a resource no policy covers", async () => {
		const r = await test(
			"--policies",
			policies,
			"--claims",
			join(dir, "sample.json"),
			"--resource",
			"other/app/key",
			"--insecure-dev",
		);
		expect(r.code).toBe(9);
		expect(r.stdout).toContain(
			"no policy covers resource other/app/key (default: deny)",
		);
	});

	it("fails bad inputs through the error path", async () => {
		const claims = join(dir, "sample.json");
		const badResource = await test(
			"--policies",
			policies,
			"--claims",
			claims,
			"--resource",
			"a/b",
		);
		expect(badResource.code).toBe(2);
		expect(badResource.stderr).toMatch(
			/--resource: "a\/b" is not a resource path.*\[USAGE\]/,
		);
		const none = await test("--claims", claims, "--resource", "a/b/c");
		expect(none.code).toBe(2);
		const missing = await test(
			"--policies",
			join(dir, "nope"),
			"--claims",
			claims,
			"--resource",
			"a/b/c",
		);
		expect(missing.code).toBe(3);
		expect(missing.stderr).toMatch(/\[INPUT_NOT_FOUND\]/);
		const badClaims = await test(
			"--policies",
			policies,
			"--claims",
			join(dir, "snp-policy.json"),
			"--resource",
			"a/b/c",
			"--json",
		);
		expect(badClaims.code).toBe(3);
		expect(JSON.parse(badClaims.stdout).error.code).toBe("INPUT_INVALID");
		const badPolicy = await test(
			"--policy",
			join(dir, "bad-policy.json"),
			"--claims",
			claims,
			"--resource",
			"a/b/c",
		);
		expect(badPolicy.code).toBe(3);
		expect(badPolicy.stderr).toMatch(
			/bad-policy\.json: policy "bad": rule "r".*\[POLICY_INVALID\]/,
		);
	});

	it("policy check reports each file and stops at an invalid one", async () => {
		const ok = await runCli(BIN.broker, [
			"policy",
			"check",
			join(policies, "sample-dev.json"),
			join(dir, "snp-policy.json"),
		]);
		expect(ok.code, ok.stderr).toBe(0);
		expect(ok.stdout).toContain(
			`${join(policies, "sample-dev.json")}: ok (sample-dev, 1 rule, resources default/*/*)`,
		);
		expect(ok.stdout).toContain(
			`${join(dir, "snp-policy.json")}: ok (snp-prod, 3 rules, resources default/*/*)`,
		);
		const bad = await runCli(BIN.broker, [
			"policy",
			"check",
			join(policies, "sample-dev.json"),
			join(dir, "bad-policy.json"),
		]);
		expect(bad.code).toBe(3);
		expect(bad.stderr.trimEnd().split("\n")).toHaveLength(1);
		expect(bad.stderr).toMatch(/No such key: nope/);
	});
});

describe("reference values", () => {
	const withValues = (values: unknown) =>
		parsePolicy(
			doc(
				"ref",
				[
					{
						name: "measurement",
						expr: "claims.measurement in values.measurements",
					},
					{ name: "snp-minimum", expr: "claims.tcb.snp >= values.min_snp" },
				],
				["default/*/*"],
				{ values },
			),
			"ref.json",
		);

	it("rules read the policy's own values: expected measurements, TCB minimums", () => {
		const ok = withValues({ measurements: ["00", MEASUREMENT], min_snp: 8 });
		expect(decide([ok], input(SNP), STRICT)).toMatchObject({
			allow: true,
			policy: "ref",
		});
		const newer = withValues({ measurements: [MEASUREMENT], min_snp: 9 });
		const d = decide([newer], input(SNP), STRICT);
		expect(d.allow).toBe(false);
		expect(d.reasons.join("\n")).toMatch(/ref\/snp-minimum: failed/);
		const other = withValues({ measurements: ["00"], min_snp: 1 });
		expect(decide([other], input(SNP), STRICT).reasons.join("\n")).toMatch(
			/ref\/measurement: failed/,
		);
	});

	it("a missing value is a failed rule with its error, and values must be an object", () => {
		const d = decide([withValues({ min_snp: 1 })], input(SNP), STRICT);
		expect(d.allow).toBe(false);
		expect(d.results[0]?.rules[0]?.error).toBeTruthy();
		for (const bad of [[], "x", 3, null])
			expect(thrown(() => withValues(bad)).code).toBe("POLICY_INVALID");
	});
});
