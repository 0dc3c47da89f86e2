import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import {
	type Challenge,
	formatChallenge,
	MAX_WWW_AUTHENTICATE,
	parseWwwAuthenticate,
} from "../src/registry/challenge.js";
import { thrown } from "./helpers.js";

const plain = (cs: Challenge[]) =>
	cs.map((c) => ({ ...c, params: { ...c.params } }));
const parse = (v: string) => plain(parseWwwAuthenticate(v));

describe("WWW-Authenticate parsing", () => {
	it("reads Docker Hub's bearer challenge", () => {
		expect(
			parse(
				'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"',
			),
		).toEqual([
			{
				scheme: "bearer",
				params: {
					realm: "https://auth.docker.io/token",
					service: "registry.docker.io",
					scope: "repository:library/busybox:pull",
				},
			},
		]);
	});

	it("reads distribution's bearer challenge with an error and several scopes", () => {
		expect(
			parse(
				'Bearer realm="http://127.0.0.1:5001/auth",service="Docker registry",scope="repository:a/b:pull,push",error="insufficient_scope"',
			),
		).toEqual([
			{
				scheme: "bearer",
				params: {
					realm: "http://127.0.0.1:5001/auth",
					service: "Docker registry",
					scope: "repository:a/b:pull,push",
					error: "insufficient_scope",
				},
			},
		]);
	});

	it("reads basic challenges, GHCR's, and schemes without parameters", () => {
		expect(parse('Basic realm="Registry Realm"')).toEqual([
			{ scheme: "basic", params: { realm: "Registry Realm" } },
		]);
		expect(
			parse(
				'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull"',
			),
		).toEqual([
			{
				scheme: "bearer",
				params: {
					realm: "https://ghcr.io/token",
					service: "ghcr.io",
					scope: "repository:user/image:pull",
				},
			},
		]);
		expect(parse("Negotiate")).toEqual([{ scheme: "negotiate", params: {} }]);
		expect(parse("")).toEqual([]);
		expect(parse("  ,  ")).toEqual([]);
	});

	it("splits several challenges in one value", () => {
		expect(
			parse(
				'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"',
			),
		).toEqual([
			{
				scheme: "newauth",
				params: { realm: "apps", type: "1", title: 'Login to "apps"' },
			},
			{ scheme: "basic", params: { realm: "simple" } },
		]);
		expect(parse('Negotiate, Basic realm="x" ,, Bearer abc==')).toEqual([
			{ scheme: "negotiate", params: {} },
			{ scheme: "basic", params: { realm: "x" } },
			{ scheme: "bearer", params: {}, token68: "abc==" },
		]);
	});

	it("lowercases schemes and names, keeps values, tolerates whitespace", () => {
		expect(
			parse(
				' \tBEARER   Realm = "https://A/T" ,\tSERVICE=Reg.Example ,  scope="x" ',
			),
		).toEqual([
			{
				scheme: "bearer",
				params: { realm: "https://A/T", service: "Reg.Example", scope: "x" },
			},
		]);
	});

	it("reads token68, escapes and obs-text", () => {
		expect(parse("Basic dXNlcjpwYXNz")).toEqual([
			{ scheme: "basic", params: {}, token68: "dXNlcjpwYXNz" },
		]);
		expect(parse("Custom a.b-c_d~e+f/g==  ")).toEqual([
			{ scheme: "custom", params: {}, token68: "a.b-c_d~e+f/g==" },
		]);
		expect(parse('X a="\\\\ \\a \\" caf\u00e9"')).toEqual([
			{ scheme: "x", params: { a: '\\ a " caf\u00e9' } },
		]);
		expect(parse('X a=""')).toEqual([{ scheme: "x", params: { a: "" } }]);
		// "realm=" alone is a token68 by the grammar, not an empty parameter
		expect(parse("Bearer realm=")).toEqual([
			{ scheme: "bearer", params: {}, token68: "realm=" },
		]);
	});

	it("gives a prototype-free params object", () => {
		const [c] = parseWwwAuthenticate('Basic constructor="x"');
		expect(c?.params.constructor).toBe("x");
		const [d] = parseWwwAuthenticate('Basic realm="x"');
		expect(d?.params.toString).toBeUndefined();
		expect(Object.getPrototypeOf(d?.params)).toBeNull();
	});

	it("refuses malformed values with REMOTE_PROTOCOL naming the problem", () => {
		const cases: [string, RegExp][] = [
			['Bearer realm="x', /quoted string is not closed/],
			['Bearer realm=,service="x"', /a parameter where an authentication/],
			['Bearer realm="x" service="y"', /expected a comma after a parameter/],
			['realm="x"', /a parameter where an authentication scheme should be/],
			['Bearer realm="x", realm="y"', /parameter "realm" given twice/],
			['Bearer realm="a\u0001"', /control character/],
			['Bearer realm="a\\\u0001"', /backslash/],
			['Bearer="x"', /a parameter where an authentication scheme/],
			['Basic"realm"', /expected a space after the authentication scheme/],
			["Basic abc def", /expected "=" after parameter "abc"/],
			['Basic abc="x" def', /expected a comma after a parameter/],
			["Basic abc, def ghi jkl", /expected "=" after parameter "ghi"/],
			['Basic abc=, x="y"', /a parameter where an authentication scheme/],
			["@", /expected an authentication scheme/],
			['Bearer realm=@"x"', /expected a value for parameter/],
		];
		for (const [v, re] of cases) {
			const e = thrown(() => parseWwwAuthenticate(v));
			expect(e.code, v).toBe("REMOTE_PROTOCOL");
			expect(e.message, v).toMatch(re);
			expect(e.message, v).toMatch(/^WWW-Authenticate header: /);
		}
		expect(
			thrown(() => parseWwwAuthenticate("Basic @", "registry.example")).message,
		).toMatch(/^registry\.example: .* at offset 6 \(near "@"\)/);
	});

	it("caps what it parses and what it quotes", () => {
		const long = `Bearer realm="${"a".repeat(MAX_WWW_AUTHENTICATE)}"`;
		const e = thrown(() => parseWwwAuthenticate(long));
		expect(e.code).toBe("REMOTE_PROTOCOL");
		expect(e.message.length).toBeLessThan(300);
		const bad = `Basic ${"x".repeat(5000)} @${"y".repeat(5000)}`;
		const f = thrown(() => parseWwwAuthenticate(bad));
		expect(f.code).toBe("REMOTE_PROTOCOL");
		expect(f.message.length).toBeLessThan(300);
	});

	it("stays fast on pathological inputs within the cap", () => {
		const inputs = [
			"a ".repeat(8000),
			",".repeat(16000),
			`X ${"a=b,".repeat(4000)}`,
			`X ${"a".repeat(16000)}`,
			`X ${"a ".repeat(8000)}=`,
			`X a="${"\\x".repeat(8000)}"`,
			`X ${Array.from({ length: 3000 }, (_, i) => `p${i}=v`).join(",")}`,
		];
		const t0 = performance.now();
		for (const v of inputs) {
			try {
				parseWwwAuthenticate(v);
			} catch (e) {
				expect(e).toBeInstanceOf(DadiError);
			}
		}
		expect(performance.now() - t0).toBeLessThan(500);
	});
});

describe("WWW-Authenticate properties", () => {
	it("never throws anything but DadiError on arbitrary text", () => {
		const alphabet = fc.constantFrom(
			...'Bb aA=,"\\\t\u0001\u00e9/+~.:-_=realm'.split(""),
		);
		fc.assert(
			fc.property(
				fc.oneof(
					fc.string({ unit: "binary", maxLength: 200 }),
					fc.string({ unit: alphabet, maxLength: 60 }),
				),
				(v) => {
					try {
						const cs = parseWwwAuthenticate(v);
						for (const c of cs) {
							expect(c.scheme).toBe(c.scheme.toLowerCase());
							for (const k of Object.keys(c.params))
								expect(k).toBe(k.toLowerCase());
						}
					} catch (e) {
						if (!(e instanceof DadiError)) throw e;
						expect(e.code).toBe("REMOTE_PROTOCOL");
					}
				},
			),
			{ numRuns: 3000 },
		);
	});

	const tchars = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz";
	const token = fc.string({
		unit: fc.constantFrom(...tchars.split("")),
		minLength: 1,
		maxLength: 12,
	});
	const token68 = fc
		.tuple(
			fc.string({
				unit: fc.constantFrom(..."ABCxyz019-._~+/".split("")),
				minLength: 1,
				maxLength: 20,
			}),
			fc.integer({ min: 0, max: 2 }),
		)
		.map(([t, n]) => t + "=".repeat(n));
	const value = fc.string({
		unit: fc.oneof(
			fc.constantFrom('"', "\\", "\t", " ", ",", "=", "\u00ff", "\u{1f600}"),
			fc.integer({ min: 0x21, max: 0x7e }).map((n) => String.fromCharCode(n)),
		),
		maxLength: 30,
	});
	const challenge: fc.Arbitrary<Challenge> = fc.oneof(
		fc.record({
			scheme: token,
			params: fc.dictionary(token, value, { maxKeys: 5 }),
		}),
		fc.record({ scheme: token, params: fc.constant({}), token68 }),
	);

	it("round-trips generated challenges through format and parse", () => {
		fc.assert(
			fc.property(
				fc.array(challenge, { maxLength: 4 }),
				fc.constantFrom(", ", ",", " ,\t"),
				(cs, sep) => {
					const text = cs.map(formatChallenge).join(sep);
					expect(parse(text)).toEqual(plain(cs));
				},
			),
			{ numRuns: 2000 },
		);
	});

	it("refuses to format what cannot be parsed back", () => {
		expect(
			thrown(() => formatChallenge({ scheme: "a b", params: {} })).code,
		).toBe("USAGE");
		expect(
			thrown(() => formatChallenge({ scheme: "x", params: { a: "\n" } })).code,
		).toBe("USAGE");
		expect(
			thrown(() =>
				formatChallenge({ scheme: "x", params: { a: "b" }, token68: "t" }),
			).code,
		).toBe("USAGE");
	});
});
