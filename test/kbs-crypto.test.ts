import {
	createHash,
	createPublicKey,
	generateKeyPairSync,
	type KeyObject,
	randomBytes,
} from "node:crypto";
import fc from "fast-check";
import {
	CompactEncrypt,
	calculateJwkThumbprint,
	compactDecrypt,
	FlattenedEncrypt,
	flattenedDecrypt,
	importJWK,
} from "jose";
import { describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import { canonicalJson } from "../src/kbs/canonical-json.js";
import {
	decryptFromBroker,
	encryptToTeeKey,
	type FlattenedJwe,
	MAX_CIPHERTEXT_BYTES,
	parseFlattenedJwe,
} from "../src/kbs/jwe.js";
import {
	parseHashAlgorithm,
	reportDataDigest,
	reportDataMatches,
} from "../src/kbs/report-data.js";
import {
	generateEphemeralKey,
	parseTeePubKey,
	type TeePubKey,
} from "../src/kbs/tee-pubkey.js";

const code = (fn: () => unknown): string => {
	try {
		fn();
		return "ok";
	} catch (e) {
		return e instanceof DadiError ? e.code : `crash: ${String(e)}`;
	}
};

const codeAsync = async (fn: () => Promise<unknown>): Promise<string> => {
	try {
		await fn();
		return "ok";
	} catch (e) {
		return e instanceof DadiError ? e.code : `crash: ${String(e)}`;
	}
};

const b64u = (b: Buffer | Uint8Array): string =>
	Buffer.from(b).toString("base64url");
const unb64u = (s: string): Buffer => Buffer.from(s, "base64url");

/**
 * An RSA public JWK for tests. The key is imported from DER rather than exported from a
 * generateKeyPairSync KeyObject: on Node 20 a JWK export of such a key can deadlock in GC.
 */
function rsaPublicJwk(bits: number, publicExponent = 65537) {
	const { publicKey } = generateKeyPairSync("rsa", {
		modulusLength: bits,
		publicExponent,
		publicKeyEncoding: { type: "spki", format: "der" },
		privateKeyEncoding: { type: "pkcs8", format: "der" },
	});
	return createPublicKey({
		key: publicKey,
		format: "der",
		type: "spki",
	}).export({ format: "jwk" }) as { kty: "RSA"; n: string; e: string };
}

// ---------------------------------------------------------------------------------------------

describe("canonical JSON (RFC 8785)", () => {
	it("sorts keys, drops whitespace, keeps array order", () => {
		expect(canonicalJson({ b: 1, a: [3, 1, 2], c: { z: null, y: true } })).toBe(
			'{"a":[3,1,2],"b":1,"c":{"y":true,"z":null}}',
		);
		expect(canonicalJson([])).toBe("[]");
		expect(canonicalJson({})).toBe("{}");
		expect(canonicalJson("")).toBe('""');
		expect(canonicalJson(null)).toBe("null");
		expect(canonicalJson(false)).toBe("false");
	});

	it("orders keys by UTF-16 code units, not by code points or locale", () => {
		// U+1F600 is D83D DE00 in UTF-16, so it sorts before U+FB33 although its code point is larger.
		const value = {
			"\ufb33": 6,
			"\ud83d\ude00": 5,
			"\u20ac": 4,
			"\u00f6": 3,
			"1": 2,
			"\r": 1,
			B: 7,
			a: 8,
			aa: 9,
			"": 0,
		};
		expect(canonicalJson(value)).toBe(
			'{"":0,"\\r":1,"1":2,"B":7,"a":8,"aa":9,"\u00f6":3,"\u20ac":4,"\ud83d\ude00":5,"\ufb33":6}',
		);
	});

	it("serialises numbers as ECMAScript does", () => {
		const cases: [number, string][] = [
			[0, "0"],
			[-0, "0"],
			[1, "1"],
			[-1.5, "-1.5"],
			[0.1, "0.1"],
			[0.000001, "0.000001"],
			[1e-7, "1e-7"],
			[1e21, "1e+21"],
			[1e20, "100000000000000000000"],
			[1e23, "1e+23"],
			[333333333.3333333, "333333333.3333333"],
			[4.5, "4.5"],
			[0.002, "0.002"],
			[1e-27, "1e-27"],
			[9007199254740991, "9007199254740991"],
			[5e-324, "5e-324"],
			[1.7976931348623157e308, "1.7976931348623157e+308"],
		];
		for (const [n, s] of cases) expect(canonicalJson(n)).toBe(s);
		expect(canonicalJson([1e30, 2e-3, 100])).toBe("[1e+30,0.002,100]");
	});

	it("escapes strings as JSON.stringify does", () => {
		const s = '\u0000\b\t\n\f\r"\\/\u001f\u007f\u2028é😀A';
		expect(canonicalJson(s)).toBe(
			'"\\u0000\\b\\t\\n\\f\\r\\"\\\\/\\u001f\u007f\u2028é😀A"',
		);
		expect(canonicalJson({ "\n": "\u000f" })).toBe('{"\\n":"\\u000f"}');
	});

	it("rejects values JSON cannot carry with INPUT_INVALID", () => {
		const cyclic: Record<string, unknown> = { a: 1 };
		cyclic.self = cyclic;
		const cyclicArray: unknown[] = [1];
		cyclicArray.push([cyclicArray]);
		let deep: unknown = 1;
		for (let i = 0; i < 1000; i++) deep = [deep];
		const bad: unknown[] = [
			Number.NaN,
			Number.POSITIVE_INFINITY,
			Number.NEGATIVE_INFINITY,
			undefined,
			{ a: undefined },
			[1, undefined],
			() => 1,
			{ f: () => 1 },
			10n,
			{ n: 10n },
			Symbol("s"),
			cyclic,
			cyclicArray,
			new Date(0),
			new Map(),
			Buffer.from("x"),
			// biome-ignore lint/suspicious/noSparseArray: a sparse array is the point
			[1, , 3],
			deep,
		];
		for (const v of bad)
			expect(code(() => canonicalJson(v))).toBe("INPUT_INVALID");
	});

	it("accepts shared (acyclic) references and null-prototype objects", () => {
		const shared = { x: 1 };
		expect(canonicalJson({ b: shared, a: shared })).toBe(
			'{"a":{"x":1},"b":{"x":1}}',
		);
		const np = Object.create(null) as Record<string, unknown>;
		np.k = "v";
		expect(canonicalJson(np)).toBe('{"k":"v"}');
	});

	it("round-trips arbitrary JSON, is idempotent and ignores key insertion order", () => {
		const reversed = (v: unknown): unknown => {
			if (Array.isArray(v)) return v.map(reversed);
			if (v !== null && typeof v === "object") {
				const out: Record<string, unknown> = {};
				for (const k of Object.keys(v).reverse())
					Object.defineProperty(out, k, {
						value: reversed((v as Record<string, unknown>)[k]),
						enumerable: true,
						writable: true,
						configurable: true,
					});
				return out;
			}
			return v;
		};
		fc.assert(
			fc.property(fc.jsonValue(), (v) => {
				const c = canonicalJson(v);
				expect(JSON.parse(c)).toEqual(JSON.parse(JSON.stringify(v)));
				expect(canonicalJson(JSON.parse(c))).toBe(c);
				expect(canonicalJson(reversed(v))).toBe(c);
				expect(c.length).toBeLessThanOrEqual(JSON.stringify(v).length);
			}),
			{ numRuns: 500 },
		);
	});

	it("never throws anything but DadiError INPUT_INVALID", () => {
		fc.assert(
			fc.property(
				fc.anything({ withBigInt: true, withMap: true, withSet: true }),
				(v) => {
					const r = code(() => canonicalJson(v));
					expect(["ok", "INPUT_INVALID"]).toContain(r);
				},
			),
			{ numRuns: 500 },
		);
	});
});

// ---------------------------------------------------------------------------------------------

describe("report data binding", () => {
	const ecJwk = {
		kty: "EC",
		crv: "P-256",
		alg: "ECDH-ES+A256KW",
		x: "wtGFJ5jyfIHGFqcw-4HuxWHL4GImEHDDQodIel9DEL8",
		y: "V679P6XH-QqrvdZ6NPlegeNwMZz9ISS28bbVkU4izGg",
	};
	const nonce = "9r3PCBkGXZ9yBSvxQ7lJgQ==";
	const expectedCanonical =
		'{"additional-evidence":"","nonce":"9r3PCBkGXZ9yBSvxQ7lJgQ==","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"wtGFJ5jyfIHGFqcw-4HuxWHL4GImEHDDQodIel9DEL8","y":"V679P6XH-QqrvdZ6NPlegeNwMZz9ISS28bbVkU4izGg"}}';

	it("hashes the exact canonical JSON (SHA-384 by default)", () => {
		const digest = reportDataDigest({ nonce, teePubKey: ecJwk });
		expect(digest.length).toBe(48);
		expect(digest).toEqual(
			createHash("sha384").update(expectedCanonical).digest(),
		);
		// Pinned with `openssl dgst -sha384` over the string above.
		expect(digest.toString("hex")).toBe(
			"d28f0dc2e185e5b74498cb7739709d1cc80c83a7237a77e373c30b8f8812c0a94334f62fda76720e7f6151de63fd8da4",
		);
		expect(
			reportDataDigest({ nonce, teePubKey: ecJwk, additionalEvidence: "" }),
		).toEqual(digest);
	});

	it("supports SHA-256 and SHA-512", () => {
		expect(
			reportDataDigest({ nonce, teePubKey: ecJwk, hash: "sha256" }).toString(
				"hex",
			),
		).toBe("0383c149a804e3d31b5a1f29a6bd50c7ece4face6cfcbd252d7cac026751ca14");
		expect(
			reportDataDigest({ nonce, teePubKey: ecJwk, hash: "sha512" }).toString(
				"hex",
			),
		).toBe(
			"a2034d7145eee235d0620999012a43fda1fe17683452c65c0f3b0f2bc4eaadb188314f8209a09c4e2e41b90991fe3031840becfdbc3c2ae3815ee8ed429de98b",
		);
	});

	it("binds additional evidence and an RSA key in member order", () => {
		const s =
			'{"additional-evidence":"{\\"svn\\":\\"1\\"}","nonce":"n","tee-pubkey":{"alg":"RSA-OAEP-256","e":"AQAB","kty":"RSA","n":"xyz"}}';
		const d = reportDataDigest({
			nonce: "n",
			teePubKey: { kty: "RSA", alg: "RSA-OAEP-256", n: "xyz", e: "AQAB" },
			additionalEvidence: '{"svn":"1"}',
		});
		expect(d).toEqual(createHash("sha384").update(s).digest());
		expect(d.toString("hex")).toBe(
			"e6e3b83244149cb86d54d455a447c61ddc46f7fcd82691fb1b3df52cc05211ce599f154448da474a7ecaad1472c7c37f",
		);
	});

	it("changes with every bound input", () => {
		const base = reportDataDigest({ nonce, teePubKey: ecJwk });
		expect(
			reportDataDigest({ nonce: `${nonce}x`, teePubKey: ecJwk }),
		).not.toEqual(base);
		expect(
			reportDataDigest({
				nonce,
				teePubKey: { ...ecJwk, x: ecJwk.y, y: ecJwk.x },
			}),
		).not.toEqual(base);
		expect(
			reportDataDigest({ nonce, teePubKey: ecJwk, additionalEvidence: "a" }),
		).not.toEqual(base);
	});

	it("rejects non-JSON inputs with INPUT_INVALID", () => {
		expect(
			code(() => reportDataDigest({ nonce, teePubKey: { x: undefined } })),
		).toBe("INPUT_INVALID");
		expect(
			code(() =>
				reportDataDigest({ nonce: 5 as unknown as string, teePubKey: {} }),
			),
		).toBe("INPUT_INVALID");
		expect(
			code(() =>
				reportDataDigest({
					nonce,
					teePubKey: {},
					hash: "md5" as unknown as "sha256",
				}),
			),
		).toBe("INPUT_INVALID");
	});

	it("parses hash algorithm names", () => {
		expect(parseHashAlgorithm("sha384", "h")).toBe("sha384");
		expect(parseHashAlgorithm("SHA-256", "h")).toBe("sha256");
		expect(parseHashAlgorithm("Sha512", "h")).toBe("sha512");
		for (const bad of [
			"",
			"md5",
			"sha1",
			"sha-1",
			"sha3-384",
			" sha384",
			"sha-",
		])
			expect(code(() => parseHashAlgorithm(bad, "h"))).toBe("INPUT_INVALID");
		expect(code(() => parseHashAlgorithm(7 as unknown as string, "h"))).toBe(
			"INPUT_INVALID",
		);
	});

	it("matches report_data: digest then zero padding, within the field size", () => {
		const digest = reportDataDigest({ nonce, teePubKey: ecJwk });
		const field = Buffer.concat([digest, Buffer.alloc(16)]);
		expect(reportDataMatches(field, digest, 64)).toBe(true);
		expect(reportDataMatches(field, digest)).toBe(true);
		expect(reportDataMatches(digest, digest, 64)).toBe(true);
		expect(reportDataMatches(Buffer.from(digest), digest)).toBe(true);
		for (const at of [48, 50, 63]) {
			const f = Buffer.from(field);
			f[at] = 1;
			expect(reportDataMatches(f, digest, 64)).toBe(false);
		}
		for (const at of [0, 20, 47]) {
			const f = Buffer.from(field);
			f[at] = (f[at] as number) ^ 0x80;
			expect(reportDataMatches(f, digest, 64)).toBe(false);
		}
		expect(reportDataMatches(digest.subarray(0, 47), digest, 64)).toBe(false);
		expect(reportDataMatches(Buffer.alloc(0), digest, 64)).toBe(false);
		const long = Buffer.concat([digest, Buffer.alloc(17)]);
		expect(reportDataMatches(long, digest, 64)).toBe(false);
		expect(reportDataMatches(long, digest)).toBe(true);
		expect(reportDataMatches(Buffer.alloc(64), Buffer.alloc(0), 64)).toBe(
			false,
		);
		// A digest of another algorithm's length is not a prefix match of a different digest.
		const d256 = reportDataDigest({ nonce, teePubKey: ecJwk, hash: "sha256" });
		expect(reportDataMatches(field, d256, 64)).toBe(false);
	});
});

// ---------------------------------------------------------------------------------------------

describe("tee-pubkey", () => {
	const ec = generateEphemeralKey("ec");
	const rsa = generateEphemeralKey("rsa");
	const ecJwk = ec.jwk as Extract<TeePubKey, { kty: "EC" }>;
	const rsaJwk = rsa.jwk as Extract<TeePubKey, { kty: "RSA" }>;

	it("parses a valid EC key and computes its RFC 7638 thumbprint", async () => {
		const p = parseTeePubKey(JSON.parse(JSON.stringify(ecJwk)), "tee-pubkey");
		expect(p.jwk).toEqual(ecJwk);
		expect(Object.keys(p.jwk).sort()).toEqual(["alg", "crv", "kty", "x", "y"]);
		expect(p.key).toBeUndefined(); // EC releases work from the checked raw point
		expect(p.thumbprint).toBe(
			await calculateJwkThumbprint({
				kty: "EC",
				crv: "P-256",
				x: ecJwk.x,
				y: ecJwk.y,
			}),
		);
	});

	it("parses a valid RSA key (3072 generated, 2048 imported)", async () => {
		const p = parseTeePubKey({ ...rsaJwk }, "tee-pubkey");
		expect(p.jwk).toEqual(rsaJwk);
		expect(p.key?.asymmetricKeyDetails?.modulusLength).toBe(3072);
		expect(p.thumbprint).toBe(
			await calculateJwkThumbprint({ kty: "RSA", n: rsaJwk.n, e: rsaJwk.e }),
		);
		for (const bits of [2048]) {
			const j = rsaPublicJwk(bits);
			const q = parseTeePubKey({ ...j, alg: "RSA-OAEP-256" }, "k");
			expect(q.key?.asymmetricKeyDetails?.modulusLength).toBe(bits);
		}
	}, 30_000);

	it("generates EC keys whose coordinates are always 32 bytes", () => {
		for (let i = 0; i < 300; i++) {
			const g = generateEphemeralKey("ec");
			if (g.jwk.kty !== "EC") throw new Error("kind");
			expect(g.jwk.x.length).toBe(43);
			expect(g.jwk.y.length).toBe(43);
			expect(g.privateKey.type).toBe("private");
			parseTeePubKey(g.jwk, "generated");
		}
	});

	it("rejects every invalid variant with INPUT_INVALID naming the input", () => {
		const other = generateEphemeralKey("ec").jwk as typeof ecJwk;
		const x = unb64u(ecJwk.x);
		const offCurveY = Buffer.from(unb64u(ecJwk.y));
		offCurveY[31] = (offCurveY[31] as number) ^ 1;
		const n = unb64u(rsaJwk.n);
		const lastCharFlip = (s: string) =>
			// The last character of 32 bytes (43 chars) carries 4 unused bits; "B" sets one.
			`${s.slice(0, -1)}${s.endsWith("B") ? "C" : "B"}`;
		const big = Buffer.alloc(1025, 0xff); // 8200 bits, odd
		const evenN = Buffer.from(n);
		evenN[evenN.length - 1] = (evenN[evenN.length - 1] as number) & 0xfe;
		const rsa1024 = rsaPublicJwk(1024);
		const rsaE3 = rsaPublicJwk(2048, 3);
		const variants: [string, unknown][] = [
			["null", null],
			["array", [ecJwk]],
			["string", JSON.stringify(ecJwk)],
			["number", 7],
			["empty", {}],
			["no kty", { ...ecJwk, kty: undefined }],
			["kty oct", { ...ecJwk, kty: "oct" }],
			["kty OKP", { kty: "OKP", crv: "X25519", x: ecJwk.x }],
			["kty lower case", { ...ecJwk, kty: "ec" }],
			["extra kid", { ...ecJwk, kid: "k" }],
			["extra use", { ...ecJwk, use: "enc" }],
			["private d", { ...ecJwk, d: ecJwk.x }],
			["rsa extra", { ...rsaJwk, key_ops: ["encrypt"] }],
			["rsa private", { ...rsaJwk, d: "AQAB" }],
			["missing alg", { kty: "EC", crv: "P-256", x: ecJwk.x, y: ecJwk.y }],
			["missing y", { kty: "EC", crv: "P-256", alg: ecJwk.alg, x: ecJwk.x }],
			["missing e", { kty: "RSA", alg: "RSA-OAEP-256", n: rsaJwk.n }],
			["wrong alg EC", { ...ecJwk, alg: "RSA-OAEP-256" }],
			["ECDH-ES direct", { ...ecJwk, alg: "ECDH-ES" }],
			["ECDH-ES+A128KW", { ...ecJwk, alg: "ECDH-ES+A128KW" }],
			["wrong alg RSA", { ...rsaJwk, alg: "ECDH-ES+A256KW" }],
			["RSA-OAEP sha1", { ...rsaJwk, alg: "RSA-OAEP" }],
			["RSA1_5", { ...rsaJwk, alg: "RSA1_5" }],
			["P-384", { ...ecJwk, crv: "P-384" }],
			["secp256k1", { ...ecJwk, crv: "secp256k1" }],
			["padding x", { ...ecJwk, x: `${ecJwk.x}=` }],
			["padding n", { ...rsaJwk, n: `${rsaJwk.n}==` }],
			["padding e", { ...rsaJwk, e: "AQAB=" }],
			["standard base64 x", { ...ecJwk, x: b64u(x).replace(/./, "+") }],
			["non-canonical trailing bits", { ...ecJwk, x: lastCharFlip(ecJwk.x) }],
			["whitespace", { ...ecJwk, y: ` ${ecJwk.y}` }],
			["x not a string", { ...ecJwk, x: 1 }],
			["off-curve point", { ...ecJwk, y: b64u(offCurveY) }],
			["mixed keys", { ...ecJwk, y: other.y }],
			["x 31 bytes", { ...ecJwk, x: b64u(x.subarray(1)) }],
			[
				"x 33 bytes",
				{ ...ecJwk, x: b64u(Buffer.concat([Buffer.alloc(1), x])) },
			],
			["y empty", { ...ecJwk, y: "" }],
			["1024-bit RSA", { ...rsa1024, alg: "RSA-OAEP-256" }],
			["e = 3", { ...rsaE3, alg: "RSA-OAEP-256" }],
			["e = 3 with AQAB claim", { ...rsaJwk, e: "Aw" }],
			["e with leading zero", { ...rsaJwk, e: "AAEAAQ" }],
			[
				"n leading zero",
				{ ...rsaJwk, n: b64u(Buffer.concat([Buffer.alloc(1), n])) },
			],
			["n even", { ...rsaJwk, n: b64u(evenN) }],
			["n 8200 bits", { ...rsaJwk, n: b64u(big) }],
			["n empty", { ...rsaJwk, n: "" }],
		];
		for (const [name, v] of variants) {
			let err: unknown;
			try {
				parseTeePubKey(v, "runtime-data tee-pubkey");
			} catch (e) {
				err = e;
			}
			expect(err, name).toBeInstanceOf(DadiError);
			expect((err as DadiError).code, name).toBe("INPUT_INVALID");
			expect((err as DadiError).message, name).toMatch(
				/^runtime-data tee-pubkey: /,
			);
			// Key material is never echoed.
			expect((err as DadiError).message, name).not.toContain(ecJwk.x);
			expect((err as DadiError).message, name).not.toContain(
				rsaJwk.n.slice(0, 40),
			);
		}
	}, 30_000);

	it("never throws anything but DadiError INPUT_INVALID (arbitrary JSON, mutated keys)", () => {
		const mutated = (base: Record<string, unknown>) =>
			fc
				.tuple(
					fc.constantFrom(...Object.keys(base), "kid", "d", "__proto__"),
					fc.option(
						fc.oneof(
							fc.jsonValue(),
							fc.base64String().map((s) => s.replace(/=+$/, "")),
							fc.uint8Array({ minLength: 0, maxLength: 40 }).map(b64u),
						),
					),
				)
				.map(([k, v]) => {
					const o: Record<string, unknown> = { ...base };
					if (v === null) delete o[k];
					else Object.defineProperty(o, k, { value: v, enumerable: true });
					return o;
				});
		fc.assert(
			fc.property(
				fc.oneof(
					fc.jsonValue(),
					mutated({ ...ecJwk }),
					mutated({ ...rsaJwk }),
					fc.record({
						kty: fc.constantFrom("EC", "RSA"),
						crv: fc.constant("P-256"),
						alg: fc.constantFrom("ECDH-ES+A256KW", "RSA-OAEP-256"),
						x: fc.uint8Array({ minLength: 32, maxLength: 32 }).map(b64u),
						y: fc.uint8Array({ minLength: 32, maxLength: 32 }).map(b64u),
					}),
				),
				(v) => {
					const r = code(() => parseTeePubKey(v, "k"));
					expect(["ok", "INPUT_INVALID"]).toContain(r);
				},
			),
			{ numRuns: 400 },
		);
	});

	it("refuses an unknown key kind", () => {
		expect(code(() => generateEphemeralKey("dsa" as "ec"))).toBe("USAGE");
	});
});

// ---------------------------------------------------------------------------------------------

describe("JWE to the tee-pubkey", () => {
	const ec = generateEphemeralKey("ec");
	const rsa = generateEphemeralKey("rsa");
	const ecTee = parseTeePubKey(ec.jwk, "ec");
	const rsaTee = parseTeePubKey(rsa.jwk, "rsa");
	const kinds = [
		{ name: "ECDH-ES+A256KW", g: ec, tee: ecTee },
		{ name: "RSA-OAEP-256", g: rsa, tee: rsaTee },
	] as const;
	const members = [
		"protected",
		"encrypted_key",
		"iv",
		"ciphertext",
		"tag",
	] as const;

	for (const { name, g, tee } of kinds) {
		describe(name, () => {
			it("round-trips through jose (decryptFromBroker), for many sizes", async () => {
				for (const size of [0, 1, 15, 16, 17, 32, 1000, 65536]) {
					const pt = randomBytes(size);
					const jwe = encryptToTeeKey(pt, tee);
					expect(Object.keys(jwe)).toEqual(members);
					for (const m of members) expect(jwe[m]).toMatch(/^[A-Za-z0-9_-]*$/);
					expect(unb64u(jwe.iv).length).toBe(12);
					expect(unb64u(jwe.tag).length).toBe(16);
					expect(unb64u(jwe.ciphertext).length).toBe(size);
					// Buffer.equals: vitest's deep equality is slow on large buffers.
					expect((await decryptFromBroker(jwe, g.privateKey)).equals(pt)).toBe(
						true,
					);
					expect(
						(await decryptFromBroker(jwe, g.privateKey, name)).equals(pt),
					).toBe(true);
				}
			});

			it("round-trips the largest allowed resource; refuses a larger one", async () => {
				const pt = randomBytes(MAX_CIPHERTEXT_BYTES);
				const jwe = encryptToTeeKey(pt, tee);
				const out = await decryptFromBroker(
					JSON.parse(JSON.stringify(jwe)),
					g.privateKey,
				);
				expect(out.length).toBe(pt.length);
				expect(out.equals(pt)).toBe(true);
				expect(
					code(() =>
						encryptToTeeKey(randomBytes(MAX_CIPHERTEXT_BYTES + 1), tee),
					),
				).toBe("INPUT_INVALID");
			});

			it("writes the protected header exactly as the guest re-serialises it", () => {
				const jwe = encryptToTeeKey(Buffer.from("k"), tee);
				const header = unb64u(jwe.protected).toString("utf8");
				expect(b64u(Buffer.from(header))).toBe(jwe.protected);
				if (name === "RSA-OAEP-256") {
					expect(header).toBe('{"alg":"RSA-OAEP-256","enc":"A256GCM"}');
					expect(unb64u(jwe.encrypted_key).length).toBe(384);
					return;
				}
				const m =
					/^\{"alg":"ECDH-ES\+A256KW","enc":"A256GCM","epk":\{"crv":"P-256","kty":"EC","x":"([A-Za-z0-9_-]{43})","y":"([A-Za-z0-9_-]{43})"\}\}$/.exec(
						header,
					);
				expect(m, header).not.toBeNull();
				const [, x, y] = m as unknown as [string, string, string];
				expect(header).toBe(
					`{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-256","kty":"EC","x":"${x}","y":"${y}"}}`,
				);
				// The guest's struct {alg, enc, ...rest sorted by key} serialised compactly.
				const parsed = JSON.parse(header) as Record<string, unknown>;
				const { alg, enc, ...rest } = parsed;
				const reserialised = JSON.stringify({
					alg,
					enc,
					...JSON.parse(canonicalJson(rest)),
				});
				expect(reserialised).toBe(header);
				// The ephemeral key is a valid point, fresh each time, and not the recipient's.
				createPublicKey({
					key: { kty: "EC", crv: "P-256", x, y },
					format: "jwk",
				});
				const again = unb64u(
					encryptToTeeKey(Buffer.from("k"), tee).protected,
				).toString();
				expect(again).not.toBe(header);
				expect(x).not.toBe((ec.jwk as { x: string }).x);
				expect(unb64u(jwe.encrypted_key).length).toBe(40);
			});

			it("decrypts on a second independent path (jose flattened and compact, CryptoKey)", async () => {
				const pt = randomBytes(100);
				const jwe = encryptToTeeKey(pt, tee);
				const privateJwk = g.privateKey.export({ format: "jwk" });
				const cryptoKey = await importJWK(privateJwk, name);
				const flat = await flattenedDecrypt(jwe, cryptoKey);
				expect(Buffer.from(flat.plaintext)).toEqual(pt);
				expect(flat.protectedHeader).toMatchObject({
					alg: name,
					enc: "A256GCM",
				});
				const compact = `${jwe.protected}.${jwe.encrypted_key}.${jwe.iv}.${jwe.ciphertext}.${jwe.tag}`;
				const c = await compactDecrypt(compact, cryptoKey, {
					keyManagementAlgorithms: [name],
					contentEncryptionAlgorithms: ["A256GCM"],
				});
				expect(Buffer.from(c.plaintext)).toEqual(pt);
			});

			it("gives AUTH_FAILED to an eavesdropper's key and to the other key type", async () => {
				const jwe = encryptToTeeKey(randomBytes(32), tee);
				const copy = JSON.parse(JSON.stringify(jwe)) as FlattenedJwe;
				const eve = generateEphemeralKey(
					name === "RSA-OAEP-256" ? "rsa" : "ec",
				);
				expect(
					await codeAsync(() => decryptFromBroker(copy, eve.privateKey)),
				).toBe("AUTH_FAILED");
				const otherKind = name === "RSA-OAEP-256" ? ec : rsa;
				expect(
					await codeAsync(() => decryptFromBroker(copy, otherKind.privateKey)),
				).toBe("AUTH_FAILED");
				const otherAlg =
					name === "RSA-OAEP-256" ? "ECDH-ES+A256KW" : "RSA-OAEP-256";
				expect(
					await codeAsync(() =>
						decryptFromBroker(copy, g.privateKey, otherAlg),
					),
				).toBe("AUTH_FAILED");
			}, 30_000);

			it("fails closed on any single flipped byte of any member", async () => {
				const pt = randomBytes(64);
				const jwe = encryptToTeeKey(pt, tee);
				let tried = 0;
				for (const m of members) {
					const bytes = unb64u(jwe[m]);
					const positions = new Set([
						0,
						1,
						bytes.length >> 1,
						bytes.length - 2,
						bytes.length - 1,
						...Array.from({ length: 3 }, () =>
							Math.floor(Math.random() * bytes.length),
						),
					]);
					for (const at of positions) {
						for (const mask of [0x01, 0x80]) {
							const b = Buffer.from(bytes);
							b[at] = (b[at] as number) ^ mask;
							const bad = { ...jwe, [m]: b64u(b) };
							let err: unknown;
							let out: unknown;
							try {
								out = await decryptFromBroker(bad, g.privateKey);
							} catch (e) {
								err = e;
							}
							expect(out, `${m}[${at}]^${mask}`).toBeUndefined();
							expect((err as DadiError)?.code, `${m}[${at}]^${mask}`).toBe(
								"AUTH_FAILED",
							);
							expect((err as DadiError).message).toBe(
								"the key broker's response: authentication failed: the data was modified, truncated or sealed under another key",
							);
							tried++;
						}
					}
				}
				expect(tried).toBeGreaterThan(40);
				// The original still decrypts: the failures were the flips.
				expect(await decryptFromBroker(jwe, g.privateKey)).toEqual(pt);
			});

			it("fails closed on swapped members between two responses", async () => {
				const a = encryptToTeeKey(randomBytes(32), tee);
				const b = encryptToTeeKey(randomBytes(32), tee);
				for (const m of members) {
					// RSA-OAEP-256 responses share one constant protected header.
					if (a[m] === b[m]) continue;
					expect(
						await codeAsync(() =>
							decryptFromBroker({ ...a, [m]: b[m] }, g.privateKey),
						),
						m,
					).toBe("AUTH_FAILED");
				}
			});
		});
	}

	it("refuses other algorithms even when the JWE is otherwise valid", async () => {
		const ecPublic = await importJWK({ ...ec.jwk }, "ECDH-ES+A256KW");
		const pt = new TextEncoder().encode("secret");

		// enc A128GCM: a valid JWE that unrestricted jose decrypts, but not our guest.
		const a128 = await new FlattenedEncrypt(pt)
			.setProtectedHeader({ alg: "ECDH-ES+A256KW", enc: "A128GCM" })
			.encrypt(ecPublic);
		const privateCryptoKey = await importJWK(
			ec.privateKey.export({ format: "jwk" }),
			"ECDH-ES+A256KW",
		);
		expect(
			Buffer.from((await flattenedDecrypt(a128, privateCryptoKey)).plaintext),
		).toEqual(Buffer.from(pt));
		const shaped = parseFlattenedJwe(a128, "a128");
		expect(
			await codeAsync(() => decryptFromBroker(shaped, ec.privateKey)),
		).toBe("AUTH_FAILED");

		// RSA-OAEP (SHA-1) to the RSA key.
		const rsaPublic = await importJWK(
			{ kty: "RSA", n: (rsa.jwk as { n: string }).n, e: "AQAB" },
			"RSA-OAEP",
		);
		const oaep1 = await new FlattenedEncrypt(pt)
			.setProtectedHeader({ alg: "RSA-OAEP", enc: "A256GCM" })
			.encrypt(rsaPublic);
		expect(
			await codeAsync(() =>
				decryptFromBroker(oaep1 as FlattenedJwe, rsa.privateKey),
			),
		).toBe("AUTH_FAILED");

		// ECDH-ES direct key agreement has no encrypted_key: refused by shape, and with one added
		// refused by algorithm.
		const direct = await new FlattenedEncrypt(pt)
			.setProtectedHeader({ alg: "ECDH-ES", enc: "A256GCM" })
			.encrypt(ecPublic);
		expect(
			await codeAsync(() =>
				decryptFromBroker(direct as FlattenedJwe, ec.privateKey),
			),
		).toBe("INPUT_INVALID");
		expect(
			await codeAsync(() =>
				decryptFromBroker(
					{ ...(direct as FlattenedJwe), encrypted_key: b64u(randomBytes(40)) },
					ec.privateKey,
				),
			),
		).toBe("AUTH_FAILED");

		// alg "dir" with a shared key.
		const cek = randomBytes(32);
		const dir = await new FlattenedEncrypt(pt)
			.setProtectedHeader({ alg: "dir", enc: "A256GCM" })
			.encrypt(cek);
		expect(
			await codeAsync(() =>
				decryptFromBroker(dir as FlattenedJwe, ec.privateKey),
			),
		).toBe("INPUT_INVALID");
		expect(
			await codeAsync(() =>
				decryptFromBroker(
					{ ...(dir as FlattenedJwe), encrypted_key: "AAAA" },
					ec.privateKey,
				),
			),
		).toBe("AUTH_FAILED");

		// Hand-written headers on an otherwise genuine response: alg none, enc none, dir, A128GCM.
		const real = encryptToTeeKey(Buffer.from(pt), ecTee);
		const realHeader = JSON.parse(unb64u(real.protected).toString()) as Record<
			string,
			unknown
		>;
		for (const header of [
			{ alg: "none", enc: "A256GCM" },
			{ ...realHeader, alg: "none" },
			{ ...realHeader, enc: "none" },
			{ ...realHeader, alg: "dir" },
			{ ...realHeader, enc: "A128GCM" },
			{ ...realHeader, enc: "A256CBC-HS512" },
			{ ...realHeader, zip: "DEF" },
			{ ...realHeader, crit: ["exp"], exp: 1 },
		]) {
			const forged = {
				...real,
				protected: b64u(Buffer.from(JSON.stringify(header))),
			};
			expect(
				await codeAsync(() => decryptFromBroker(forged, ec.privateKey)),
				JSON.stringify(header),
			).toBe("AUTH_FAILED");
		}

		// A compact JWE made by jose to our key (alg and enc allowed) does decrypt: the refusals
		// above are about the algorithms, not about jose-made JWEs.
		const ok = await new CompactEncrypt(pt)
			.setProtectedHeader({ alg: "ECDH-ES+A256KW", enc: "A256GCM" })
			.encrypt(ecPublic);
		const [p, k, iv, c, t] = ok.split(".") as [
			string,
			string,
			string,
			string,
			string,
		];
		expect(
			await decryptFromBroker(
				{ protected: p, encrypted_key: k, iv, ciphertext: c, tag: t },
				ec.privateKey,
			),
		).toEqual(Buffer.from(pt));
	});

	it("works with a private key straight from generateKeyPairSync", async () => {
		const { privateKey, publicKey } = generateKeyPairSync("ec", {
			namedCurve: "P-256",
		});
		const spki = publicKey.export({ format: "der", type: "spki" });
		const point = spki.subarray(spki.length - 65);
		const tee = parseTeePubKey(
			{
				kty: "EC",
				crv: "P-256",
				alg: "ECDH-ES+A256KW",
				x: b64u(point.subarray(1, 33)),
				y: b64u(point.subarray(33)),
			},
			"k",
		);
		const pt = randomBytes(40);
		expect(
			await decryptFromBroker(encryptToTeeKey(pt, tee), privateKey),
		).toEqual(pt);
	});

	it("refuses bad arguments to decryptFromBroker with USAGE", async () => {
		const jwe = encryptToTeeKey(randomBytes(8), ecTee);
		expect(
			await codeAsync(() => decryptFromBroker(jwe, ec.privateKey, "dir")),
		).toBe("USAGE");
		const publicKey = createPublicKey(ec.privateKey);
		expect(await codeAsync(() => decryptFromBroker(jwe, publicKey))).toBe(
			"USAGE",
		);
		expect(
			await codeAsync(() =>
				decryptFromBroker(jwe, undefined as unknown as KeyObject),
			),
		).toBe("USAGE");
	});

	describe("parseFlattenedJwe", () => {
		const jwe = encryptToTeeKey(randomBytes(32), ecTee);

		it("accepts a genuine response and returns only its members", () => {
			const p = parseFlattenedJwe(JSON.parse(JSON.stringify(jwe)), "r");
			expect(p).toEqual(jwe);
			expect(Object.keys(p)).toEqual(members);
		});

		it("rejects malformed shapes with INPUT_INVALID", () => {
			const huge = "A".repeat(Math.ceil((MAX_CIPHERTEXT_BYTES * 4) / 3) + 4);
			const variants: [string, unknown][] = [
				["null", null],
				["array", [jwe]],
				["string", JSON.stringify(jwe)],
				["aad member", { ...jwe, aad: "" }],
				["aad member undefined", { ...jwe, aad: undefined }],
				["header member", { ...jwe, header: { kid: "x" } }],
				["unprotected member", { ...jwe, unprotected: {} }],
				["recipients", { ...jwe, recipients: [] }],
				["missing protected", { ...jwe, protected: undefined }],
				...members.map((m): [string, unknown] => [
					`missing ${m}`,
					Object.fromEntries(Object.entries(jwe).filter(([k]) => k !== m)),
				]),
				...members.map((m): [string, unknown] => [
					`${m} not a string`,
					{ ...jwe, [m]: 5 },
				]),
				...members.map((m): [string, unknown] => [
					`${m} padded`,
					{ ...jwe, [m]: `${jwe[m]}=` },
				]),
				...members.map((m): [string, unknown] => [
					`${m} standard base64`,
					{ ...jwe, [m]: `+${jwe[m].slice(1)}` },
				]),
				["protected empty", { ...jwe, protected: "" }],
				["encrypted_key empty", { ...jwe, encrypted_key: "" }],
				["iv 16 bytes", { ...jwe, iv: b64u(randomBytes(16)) }],
				["iv 11 bytes", { ...jwe, iv: b64u(randomBytes(11)) }],
				["tag 12 bytes", { ...jwe, tag: b64u(randomBytes(12)) }],
				["tag 17 bytes", { ...jwe, tag: b64u(randomBytes(17)) }],
				["ciphertext over 1 MiB", { ...jwe, ciphertext: huge }],
				[
					"encrypted_key too long",
					{ ...jwe, encrypted_key: b64u(randomBytes(2048)) },
				],
				["protected too long", { ...jwe, protected: "A".repeat(8192) }],
				["non-canonical tag", { ...jwe, tag: `${jwe.tag.slice(0, -1)}B` }],
			];
			for (const [name, v] of variants) {
				expect(
					code(() => parseFlattenedJwe(v, "the response")),
					name,
				).toBe("INPUT_INVALID");
			}
		});

		it("never throws anything but DadiError (fuzz)", () => {
			const b64 = fc.uint8Array({ minLength: 0, maxLength: 64 }).map(b64u);
			const member = fc.oneof(b64, fc.string(), fc.jsonValue());
			fc.assert(
				fc.property(
					fc.oneof(
						fc.anything(),
						fc.record(
							{
								protected: member,
								encrypted_key: member,
								iv: member,
								ciphertext: member,
								tag: member,
								aad: member,
							},
							{ requiredKeys: [] },
						),
					),
					(v) => {
						const r = code(() => parseFlattenedJwe(v, "r"));
						expect(["ok", "INPUT_INVALID"]).toContain(r);
					},
				),
				{ numRuns: 500 },
			);
		});

		it("decryptFromBroker on fuzzed responses is only INPUT_INVALID or AUTH_FAILED", async () => {
			const bytes = (n: number) =>
				fc.uint8Array({ minLength: n, maxLength: n }).map(b64u);
			await fc.assert(
				fc.asyncProperty(
					fc.record({
						protected: fc.oneof(
							fc.constant(jwe.protected),
							fc
								.jsonValue()
								.map((v) => b64u(Buffer.from(JSON.stringify(v) ?? "null"))),
							fc
								.record({
									alg: fc.constantFrom(
										"ECDH-ES+A256KW",
										"RSA-OAEP-256",
										"dir",
										"none",
									),
									enc: fc.constantFrom("A256GCM", "A128GCM", "none"),
									epk: fc.oneof(fc.constant(undefined), fc.jsonValue()),
								})
								.map((h) => b64u(Buffer.from(JSON.stringify(h)))),
						),
						encrypted_key: fc.oneof(
							fc.constant(jwe.encrypted_key),
							bytes(40),
							bytes(1),
						),
						iv: fc.oneof(fc.constant(jwe.iv), bytes(12)),
						ciphertext: fc.oneof(
							fc.constant(jwe.ciphertext),
							bytes(32),
							bytes(0),
						),
						tag: fc.oneof(fc.constant(jwe.tag), bytes(16)),
					}),
					async (v) => {
						const same = members.every((m) => v[m] === jwe[m]);
						const r = await codeAsync(() =>
							decryptFromBroker(v, ec.privateKey),
						);
						expect(r).toBe(
							same
								? "ok"
								: v.protected.length > 4096
									? "INPUT_INVALID"
									: "AUTH_FAILED",
						);
					},
				),
				{ numRuns: 200 },
			);
		});
	});
});
