/**
 * Unit and property tests of the broker's pure parts: the KBS request parsers, the sample
 * verifier, the session table, the rate limiter and the attestation-token signer.
 */
import { createHash, createHmac, createPrivateKey, sign } from "node:crypto";
import fc from "fast-check";
import { jwtVerify } from "jose";
import { describe, expect, it } from "vitest";
import type { Claims } from "../src/attest/claims.js";
import { sampleVerifier } from "../src/attest/sample.js";
import { RateLimiter } from "../src/broker/rate-limit.js";
import { type Session, SessionTable } from "../src/broker/sessions.js";
import {
	generateSigningKey,
	TOKEN_ISSUER,
	tokenSigner,
} from "../src/broker/token.js";
import { DadiError } from "../src/errors.js";
import {
	challengeBody,
	KBS_PROTOCOL_VERSION,
	PROTOCOL_TEES,
	parseAttestRequest,
	parseAuthRequest,
	SELECTED_HASH_KEY,
	SUPPORTED_HASHES_KEY,
} from "../src/kbs/protocol.js";
import { generateEphemeralKey } from "../src/kbs/tee-pubkey.js";
import { rejection, thrown } from "./helpers.js";

/** The DadiError code `fn` throws, or "ok" when it returns; anything else thrown fails. */
function outcome(fn: () => unknown): string {
	try {
		fn();
		return "ok";
	} catch (e) {
		if (e instanceof DadiError) return e.code;
		throw e;
	}
}

const HASHES = ["sha384", "sha512", "sha256"] as const;

// ---------------------------------------------------------------------------------------------
// parseAuthRequest

describe("parseAuthRequest", () => {
	const valid = (over: Record<string, unknown> = {}) => ({
		version: KBS_PROTOCOL_VERSION,
		tee: "sample",
		"extra-params": "",
		...over,
	});

	it("accepts the minimal request; no extra-params means sha384, not negotiated", () => {
		expect(parseAuthRequest(valid())).toEqual({
			tee: "sample",
			hash: "sha384",
			negotiated: false,
		});
		const { "extra-params": _, ...noExtra } = valid();
		expect(parseAuthRequest(noExtra)).toEqual({
			tee: "sample",
			hash: "sha384",
			negotiated: false,
		});
		expect(parseAuthRequest(valid({ "extra-params": null }))).toEqual({
			tee: "sample",
			hash: "sha384",
			negotiated: false,
		});
		// an object without the hash list: still not negotiated
		expect(parseAuthRequest(valid({ "extra-params": {} }))).toEqual({
			tee: "sample",
			hash: "sha384",
			negotiated: false,
		});
		expect(
			parseAuthRequest(valid({ "extra-params": { other: [1, 2] } })),
		).toEqual({ tee: "sample", hash: "sha384", negotiated: false });
	});

	it("accepts every protocol TEE name, exactly as spelled", () => {
		for (const tee of PROTOCOL_TEES)
			expect(parseAuthRequest(valid({ tee })).tee).toBe(tee);
		for (const tee of ["SNP", "Sample", " tdx", "tdx ", "", "none", "sev-snp"])
			expect(thrown(() => parseAuthRequest(valid({ tee }))).code).toBe(
				"INPUT_INVALID",
			);
	});

	it("negotiates the hash: sha384 > sha512 > sha256, case-insensitive", () => {
		const pick = (list: unknown) =>
			parseAuthRequest(
				valid({ "extra-params": { [SUPPORTED_HASHES_KEY]: list } }),
			);
		expect(pick(["sha256", "sha512", "sha384"])).toEqual({
			tee: "sample",
			hash: "sha384",
			negotiated: true,
		});
		expect(pick(["sha256", "sha512"]).hash).toBe("sha512");
		expect(pick(["sha256"]).hash).toBe("sha256");
		expect(pick(["SHA512", "md5"]).hash).toBe("sha512");
		expect(pick(["sha1", "Sha256"]).hash).toBe("sha256");
		for (const list of [[], ["md5"], ["sha3-384", "sha-384"]])
			expect(thrown(() => pick(list)).code).toBe("INPUT_INVALID");
		for (const list of ["sha384", 384, { 0: "sha384" }, [384], [null], true])
			expect(thrown(() => pick(list)).code).toBe("INPUT_INVALID");
		expect(thrown(() => pick(Array(17).fill("sha384"))).code).toBe(
			"INPUT_INVALID",
		);
		expect(pick(Array(16).fill("sha256")).hash).toBe("sha256");
	});

	it("property: the negotiated hash is the most preferred one offered", () => {
		const unknownName = fc
			.string({ maxLength: 12 })
			.filter((s) => !HASHES.includes(s.toLowerCase() as never));
		const offers = fc
			.tuple(
				fc.subarray([...HASHES], { minLength: 1 }),
				fc.array(unknownName, { maxLength: 8 }),
			)
			.chain(([known, unknown]) =>
				fc.tuple(
					fc.constant(known),
					fc.shuffledSubarray([...known, ...unknown], {
						minLength: known.length + unknown.length,
					}),
					fc.boolean(),
				),
			);
		fc.assert(
			fc.property(offers, ([known, offered, upper]) => {
				const list = offered.map((s) =>
					upper && known.includes(s as never) ? s.toUpperCase() : s,
				);
				const r = parseAuthRequest(
					valid({ "extra-params": { [SUPPORTED_HASHES_KEY]: list } }),
				);
				const want = HASHES.find((h) => known.includes(h));
				expect(r).toEqual({ tee: "sample", hash: want, negotiated: true });
				expect(challengeBody("n", r)).toEqual({
					nonce: "n",
					"extra-params": { [SELECTED_HASH_KEY]: want },
				});
			}),
			{ numRuns: 200 },
		);
	});

	it('the challenge says "" when the guest did not negotiate', () => {
		const r = parseAuthRequest(valid());
		expect(challengeBody("abc", r)).toEqual({
			nonce: "abc",
			"extra-params": "",
		});
	});

	it("any other version string is FORMAT_UNSUPPORTED; a non-string version is INPUT_INVALID", () => {
		for (const version of ["0.1.0", "0.4.1", "0.4", "0.4.0 ", "v0.4.0", ""])
			expect(thrown(() => parseAuthRequest(valid({ version }))).code).toBe(
				"FORMAT_UNSUPPORTED",
			);
		fc.assert(
			fc.property(
				fc.string({ maxLength: 32 }).filter((s) => s !== KBS_PROTOCOL_VERSION),
				(version) => {
					expect(thrown(() => parseAuthRequest(valid({ version }))).code).toBe(
						"FORMAT_UNSUPPORTED",
					);
				},
			),
			{ numRuns: 200 },
		);
		for (const version of [0.4, 4, null, true, ["0.4.0"], { v: "0.4.0" }])
			expect(thrown(() => parseAuthRequest(valid({ version }))).code).toBe(
				"INPUT_INVALID",
			);
		const { version: _, ...noVersion } = valid();
		expect(thrown(() => parseAuthRequest(noVersion)).code).toBe(
			"INPUT_INVALID",
		);
	});

	it("every other malformed shape is INPUT_INVALID", () => {
		const cases: unknown[] = [
			null,
			undefined,
			"",
			"{}",
			42,
			true,
			[],
			[valid()],
			{},
			valid({ extra: 1 }),
			valid({ Version: "0.4.0" }),
			valid({ tee: 1 }),
			valid({ tee: null }),
			valid({ tee: "x".repeat(33) }),
			valid({ "extra-params": "x" }),
			valid({ "extra-params": 0 }),
			valid({ "extra-params": false }),
			valid({ "extra-params": [] }),
			valid({ "extra-params": ["sha384"] }),
		];
		const { tee: _, ...noTee } = valid();
		cases.push(noTee);
		for (const c of cases)
			expect(thrown(() => parseAuthRequest(c)).code, JSON.stringify(c)).toBe(
				"INPUT_INVALID",
			);
	});

	it("property: arbitrary values never throw anything but DadiError (INPUT_INVALID / FORMAT_UNSUPPORTED)", () => {
		const nearValid = fc.record(
			{
				version: fc.oneof(fc.constant(KBS_PROTOCOL_VERSION), fc.jsonValue()),
				tee: fc.oneof(fc.constantFrom(...PROTOCOL_TEES), fc.jsonValue()),
				"extra-params": fc.oneof(
					fc.constantFrom("", null),
					fc.record(
						{
							[SUPPORTED_HASHES_KEY]: fc.oneof(
								fc.array(fc.constantFrom(...HASHES, "md5", "SHA384")),
								fc.jsonValue(),
							),
						},
						{ requiredKeys: [] },
					),
					fc.jsonValue(),
				),
			},
			{ requiredKeys: [] },
		);
		fc.assert(
			fc.property(fc.oneof(fc.anything(), fc.jsonValue(), nearValid), (v) => {
				const code = outcome(() => parseAuthRequest(v));
				expect(["ok", "INPUT_INVALID", "FORMAT_UNSUPPORTED"]).toContain(code);
				if (code === "ok") {
					const r = parseAuthRequest(v);
					expect(PROTOCOL_TEES).toContain(r.tee);
					expect(HASHES).toContain(r.hash);
					expect((v as { version: unknown }).version).toBe(
						KBS_PROTOCOL_VERSION,
					);
				}
				if (code === "FORMAT_UNSUPPORTED")
					expect(typeof (v as { version: unknown }).version).toBe("string");
			}),
			{ numRuns: 300 },
		);
	});
});

// ---------------------------------------------------------------------------------------------
// parseAttestRequest

describe("parseAttestRequest", () => {
	const JWK = {
		kty: "EC",
		crv: "P-256",
		alg: "ECDH-ES+A256KW",
		x: "x",
		y: "y",
	};
	const EVIDENCE = { svn: "1", report_data: "AA==", init_data: "" };
	type Body = Record<string, Record<string, unknown> | null>;
	const valid = (): Body => ({
		"init-data": null,
		"runtime-data": { nonce: "bm9uY2U=", "tee-pubkey": JWK },
		"tee-evidence": { primary_evidence: EVIDENCE, additional_evidence: "" },
	});
	const edit = (f: (b: Body) => void): Body => {
		const b = valid();
		f(b);
		return b;
	};

	it("returns the members as sent", () => {
		const r = parseAttestRequest(valid());
		expect(r).toEqual({
			initData: null,
			nonce: "bm9uY2U=",
			teePubKey: JWK,
			evidence: EVIDENCE,
			additionalEvidence: "",
		});
		const withInit = parseAttestRequest(
			edit((b) => {
				b["init-data"] = { format: "toml", body: "algorithm = 'sha384'" };
				delete b["tee-evidence"]?.additional_evidence;
			}),
		);
		expect(withInit.initData).toEqual({
			format: "toml",
			body: "algorithm = 'sha384'",
		});
		expect(withInit.additionalEvidence).toBe("");
		const noInit = edit((b) => {
			delete b["init-data"];
		});
		expect(parseAttestRequest(noInit).initData).toBeNull();
		// evidence may be any non-null JSON value (its shape is the TEE's)
		for (const ev of ["a string", 0, false, [1], {}])
			expect(
				parseAttestRequest(
					edit((b) => {
						(b["tee-evidence"] as Record<string, unknown>).primary_evidence =
							ev;
					}),
				).evidence,
			).toEqual(ev);
		// limits: nonce up to 128 characters
		const n128 = "n".repeat(128);
		expect(
			parseAttestRequest(
				edit((b) => {
					(b["runtime-data"] as Record<string, unknown>).nonce = n128;
				}),
			).nonce,
		).toBe(n128);
	});

	it("every malformed shape is INPUT_INVALID", () => {
		/** The valid body with `where` ("member" or "outer.inner") set to `v`, or deleted. */
		const set = (where: string, v: unknown): Body =>
			edit((b) => {
				const [outer, inner] = where.split(".") as [string, string?];
				const o = b as Record<string, unknown>;
				if (inner === undefined) o[outer] = v;
				else (o[outer] as Record<string, unknown>)[inner] = v;
			});
		const del = (where: string): Body =>
			edit((b) => {
				const [outer, inner] = where.split(".") as [string, string?];
				const o = b as Record<string, unknown>;
				if (inner === undefined) delete o[outer];
				else delete (o[outer] as Record<string, unknown>)[inner];
			});
		const cases: [string, unknown][] = [
			["null", null],
			["array", [valid()]],
			["string", JSON.stringify(valid())],
			["number", 1],
			["empty object", {}],
			["extra top-level member", { ...valid(), extra: 1 }],
			["init-data string", set("init-data", "x")],
			["init-data array", set("init-data", [])],
			[
				"init-data extra member",
				set("init-data", { format: "toml", body: "", x: 1 }),
			],
			["init-data no body", set("init-data", { format: "toml" })],
			["init-data format number", set("init-data", { format: 1, body: "" })],
			[
				"init-data format too long",
				set("init-data", { format: "f".repeat(33), body: "" }),
			],
			[
				"init-data body too long",
				set("init-data", { format: "toml", body: "b".repeat((64 << 10) + 1) }),
			],
			["no runtime-data", del("runtime-data")],
			["runtime-data null", set("runtime-data", null)],
			["runtime-data extra member", set("runtime-data.extra", 1)],
			["no nonce", del("runtime-data.nonce")],
			["nonce number", set("runtime-data.nonce", 12)],
			["nonce too long", set("runtime-data.nonce", "n".repeat(129))],
			["no tee-pubkey", del("runtime-data.tee-pubkey")],
			["no tee-evidence", del("tee-evidence")],
			["tee-evidence array", set("tee-evidence", [])],
			["tee-evidence extra member", set("tee-evidence.extra", 1)],
			["no primary_evidence", del("tee-evidence.primary_evidence")],
			["primary_evidence null", set("tee-evidence.primary_evidence", null)],
			[
				"additional_evidence number",
				set("tee-evidence.additional_evidence", 1),
			],
			[
				"additional_evidence object",
				set("tee-evidence.additional_evidence", {}),
			],
			[
				"additional_evidence null",
				set("tee-evidence.additional_evidence", null),
			],
		];
		for (const [what, c] of cases)
			expect(thrown(() => parseAttestRequest(c)).code, what).toBe(
				"INPUT_INVALID",
			);
	});

	it("property: arbitrary values and near-misses never throw anything but INPUT_INVALID", () => {
		const member = fc.oneof(
			fc.jsonValue(),
			fc.constantFrom(undefined, null, "", 0, [], {}),
		);
		const nearValid = fc
			.tuple(
				fc.constantFrom(
					"init-data",
					"runtime-data",
					"tee-evidence",
					"runtime-data.nonce",
					"runtime-data.tee-pubkey",
					"tee-evidence.primary_evidence",
					"tee-evidence.additional_evidence",
					"extra",
					"runtime-data.extra",
				),
				member,
			)
			.map(([where, value]) => {
				const b = valid() as Record<string, Record<string, unknown>>;
				const [outer, inner] = where.split(".") as [string, string?];
				if (inner === undefined) b[outer] = value as never;
				else (b[outer] as Record<string, unknown>)[inner] = value;
				return b;
			});
		fc.assert(
			fc.property(fc.oneof(fc.anything(), fc.jsonValue(), nearValid), (v) => {
				const code = outcome(() => parseAttestRequest(v));
				expect(["ok", "INPUT_INVALID"]).toContain(code);
				if (code === "ok") {
					const r = parseAttestRequest(v);
					expect(typeof r.nonce).toBe("string");
					expect(r.nonce.length).toBeLessThanOrEqual(128);
					expect(r.teePubKey).not.toBeUndefined();
					expect(r.evidence ?? null).not.toBeNull();
					expect(typeof r.additionalEvidence).toBe("string");
				}
			}),
			{ numRuns: 300 },
		);
	});
});

// ---------------------------------------------------------------------------------------------
// the sample verifier

describe("sampleVerifier", () => {
	const digest = (s: string, alg = "sha384") =>
		createHash(alg).update(s).digest();
	const pad = (b: Buffer, n = 64) =>
		Buffer.concat([b, Buffer.alloc(n - b.length)]);
	const NOW = new Date("2025-01-01T00:00:00Z");
	const EXPECTED = digest("session");
	const INIT = digest("init-data");
	const evidence = (
		o: { rd?: Buffer; init?: Buffer | null; svn?: unknown } = {},
	): Record<string, unknown> => ({
		svn: "svn" in o ? o.svn : "7",
		report_data: (o.rd ?? pad(EXPECTED)).toString("base64"),
		init_data:
			o.init === null ? "" : (o.init ?? Buffer.alloc(0)).toString("base64"),
	});
	const verify = (ev: unknown, expectedInitData?: Buffer) =>
		sampleVerifier.verify({
			evidence: ev,
			expectedReportData: EXPECTED,
			expectedInitData,
			now: NOW,
		});
	const refused = async (ev: unknown, expectedInitData?: Buffer) => {
		const e = await rejection(verify(ev, expectedInitData));
		expect(e.code).toBe("EVIDENCE_INVALID");
		return e;
	};

	it("accepts report_data = the digest zero-padded to 64 bytes and reports the claims", async () => {
		const claims = await verify(evidence());
		expect(claims).toEqual({
			tee: "sample",
			debug: false,
			measurement: "",
			report_data: pad(EXPECTED).toString("hex"),
			init_data: "",
			tcb: { svn: 7 },
			tcb_status: "",
			tee_specific: { insecure: true },
		} satisfies Claims);
		// a sha256 or sha512 digest works the same way
		for (const alg of ["sha256", "sha512"]) {
			const d = digest("x", alg);
			const c = await sampleVerifier.verify({
				evidence: evidence({ rd: pad(d) }),
				expectedReportData: d,
				now: NOW,
			});
			expect(c.report_data).toBe(pad(d).toString("hex"));
		}
	});

	it("refuses a non-zero byte anywhere in the padding, and any change to the digest", async () => {
		await fc.assert(
			fc.asyncProperty(
				fc.integer({ min: 0, max: 63 }),
				fc.integer({ min: 1, max: 255 }),
				async (at, xor) => {
					const rd = pad(EXPECTED);
					rd[at] = (rd[at] as number) ^ xor;
					await refused(evidence({ rd }));
				},
			),
			{ numRuns: 150 },
		);
		// longer than the 64-byte field
		await refused(
			evidence({ rd: Buffer.concat([pad(EXPECTED), Buffer.alloc(1)]) }),
		);
		// another session's digest
		await refused(evidence({ rd: pad(digest("other session")) }));
		// an empty report_data
		await refused(evidence({ rd: Buffer.alloc(0) }));
	});

	it("checks init_data against the init-data the guest sent", async () => {
		const ok = await verify(evidence({ init: pad(INIT) }), INIT);
		expect(ok.init_data).toBe(pad(INIT).toString("hex"));
		await refused(evidence(), INIT); // init_data ""
		const { init_data: _, ...noInit } = evidence();
		await refused(noInit, INIT);
		await refused(evidence({ init: pad(digest("other")) }), INIT);
		const bad = pad(INIT);
		bad[63] = 1;
		await refused(evidence({ init: bad }), INIT);
		// without init-data from the guest, init_data is reported, not checked
		const free = await verify(evidence({ init: pad(digest("whatever")) }));
		expect(free.init_data).toBe(pad(digest("whatever")).toString("hex"));
		expect((await verify(noInit)).init_data).toBe("");
	});

	it("accepts the evidence as a JSON string", async () => {
		const claims = await verify(JSON.stringify(evidence({ svn: "42" })));
		expect(claims.tcb).toEqual({ svn: 42 });
		await refused("{not json");
		await refused(JSON.stringify(evidence()) + " ".repeat(4097));
		await refused(JSON.stringify(JSON.stringify(evidence())));
	});

	it("refuses unknown members, bad svn, bad encodings, non-objects", async () => {
		await refused({ ...evidence(), extra: "1" });
		await refused({ ...evidence(), tee: "snp" });
		for (const svn of [7, "", "-1", "1.5", "0x10", "1234567890", " 1", null])
			await refused(evidence({ svn }));
		const { svn: _, ...noSvn } = evidence();
		await refused(noSvn);
		const { report_data: __, ...noRd } = evidence();
		await refused(noRd);
		const b64url = pad(EXPECTED).toString("base64url");
		// standard base64 only: the url-safe alphabet and bad characters are refused
		await refused({ ...evidence(), report_data: `${b64url}-_` });
		await refused({ ...evidence(), report_data: "not base64!" });
		await refused({ ...evidence(), report_data: 5 });
		await refused({ ...evidence(), init_data: null });
		for (const v of [
			null,
			undefined,
			0,
			true,
			[],
			[evidence()],
			"",
			"[]",
			"null",
		])
			await refused(v);
	});

	it("property: arbitrary evidence is refused with EVIDENCE_INVALID, never anything else", async () => {
		const b64 = fc
			.uint8Array({ maxLength: 80 })
			.map((u) => Buffer.from(u).toString("base64"));
		const shaped = fc.record(
			{
				svn: fc.oneof(fc.string({ maxLength: 12 }), fc.jsonValue()),
				report_data: fc.oneof(b64, fc.string(), fc.jsonValue()),
				init_data: fc.oneof(b64, fc.string(), fc.jsonValue()),
			},
			{ requiredKeys: [] },
		);
		await fc.assert(
			fc.asyncProperty(
				fc.oneof(
					fc.anything(),
					fc.jsonValue(),
					shaped,
					shaped.map((s) => JSON.stringify(s)),
				),
				fc.boolean(),
				async (ev, withInit) => {
					await refused(ev, withInit ? INIT : undefined);
				},
			),
			{ numRuns: 300 },
		);
	});
});

// ---------------------------------------------------------------------------------------------
// SessionTable

describe("SessionTable", () => {
	it("creates sessions with fresh ids and 32-byte nonces, expiring after the TTL", () => {
		const t = new SessionTable({ max: 10, perClient: 10, ttlMs: 1000 });
		const a = t.create("c1", "sample", "sha384", 5000);
		const b = t.create("c1", "snp", "sha256", 5000);
		if (!a.ok || !b.ok) throw new Error("create failed");
		expect(a.session).toMatchObject({
			client: "c1",
			tee: "sample",
			hash: "sha384",
			expiresMs: 6000,
			state: "challenged",
		});
		expect(Buffer.from(a.session.nonce, "base64")).toHaveLength(32);
		expect(a.session.id).not.toBe(b.session.id);
		expect(a.session.nonce).not.toBe(b.session.nonce);
		expect(t.get(a.session.id, 5999)).toBe(a.session);
		expect(t.get(a.session.id, 6000)).toBeUndefined();
		expect(t.get(a.session.id, 5000)).toBeUndefined(); // removed for good
		expect(t.get("no-such-id", 5000)).toBeUndefined();
		expect(t.size).toBe(1);
	});

	it("bounds sessions per client; a full table takes room from the client holding the most", () => {
		const t = new SessionTable({ max: 3, perClient: 2, ttlMs: 1000 });
		expect(t.create("a", "sample", "sha384", 0).ok).toBe(true);
		expect(t.create("a", "sample", "sha384", 1).ok).toBe(true);
		// a is at its own bound and none of its sessions has attested
		expect(t.create("a", "sample", "sha384", 2)).toEqual({
			ok: false,
			reason: "client-full",
		});
		expect(t.create("b", "sample", "sha384", 3).ok).toBe(true);
		// full: c (0 sessions) takes the oldest challenged session of a (2)
		const c = t.create("c", "sample", "sha384", 4);
		if (!c.ok) throw new Error("c refused");
		expect(c.evicted?.client).toBe("a");
		expect(t.heldBy("a")).toBe(1);
		// now everyone holds one: a newcomer is refused rather than taking from an equal
		expect(t.create("d", "sample", "sha384", 5)).toEqual({
			ok: false,
			reason: "full",
		});
		expect(t.size).toBe(3);
	});

	it("unattested sessions expire after the challenge TTL, attested ones after the TTL from their attest", () => {
		const t = new SessionTable({
			max: 10,
			perClient: 10,
			ttlMs: 10_000,
			challengeTtlMs: 1000,
		});
		const a = t.create("a", "sample", "sha384", 0);
		const b = t.create("a", "sample", "sha384", 0);
		if (!a.ok || !b.ok) throw new Error("create failed");
		expect(a.session.expiresMs).toBe(1000);
		expect(t.beginAttest(b.session)).toBe(true);
		expect(t.beginAttest(b.session)).toBe(false); // one attest per nonce
		t.attest(b.session, {} as never, 500);
		expect(b.session).toMatchObject({ state: "attested", expiresMs: 10_500 });
		expect(t.get(a.session.id, 1000)).toBeUndefined();
		expect(t.get(b.session.id, 10_499)).toBe(b.session);
		t.sweep(10_500);
		expect(t.size).toBe(0);
	});

	it("a failed attest frees its room; at its bound a client gives up its oldest attested session", () => {
		const t = new SessionTable({ max: 100, perClient: 2, ttlMs: 1000 });
		const x = t.create("nat", "sample", "sha384", 0);
		const y = t.create("nat", "sample", "sha384", 0);
		if (!x.ok || !y.ok) throw new Error("create failed");
		t.beginAttest(x.session);
		t.drop(x.session); // e.g. evidence refused: the nonce is spent, the room is free
		expect(t.heldBy("nat")).toBe(1);
		const z = t.create("nat", "sample", "sha384", 1);
		if (!z.ok) throw new Error("create failed");
		t.beginAttest(y.session);
		t.attest(y.session, {} as never, 2);
		// at the bound: y (attested; its token still works) makes room
		const w = t.create("nat", "sample", "sha384", 3);
		expect(w.ok && w.evicted?.id).toBe(y.session.id);
		// both left are waiting for their attest: refused
		expect(t.create("nat", "sample", "sha384", 4)).toEqual({
			ok: false,
			reason: "client-full",
		});
	});

	it("expires in creation order", () => {
		const t = new SessionTable({ max: 100, perClient: 100, ttlMs: 1000 });
		const ids = [0, 10, 20].map((at) => {
			const r = t.create("c", "sample", "sha384", at);
			if (!r.ok) throw new Error("create failed");
			return r.session.id;
		});
		t.sweep(999);
		expect(t.size).toBe(3);
		t.sweep(1005);
		expect(t.size).toBe(2);
		expect(t.get(ids[0] as string, 1005)).toBeUndefined();
		expect(t.get(ids[1] as string, 1005)).toBeDefined();
		t.sweep(1010);
		expect(t.size).toBe(1);
		t.sweep(1020);
		expect(t.size).toBe(0);
	});

	it("get after expiry releases the client's count", () => {
		const t = new SessionTable({ max: 100, perClient: 2, ttlMs: 1000 });
		const first = t.create("a", "sample", "sha384", 0);
		expect(t.create("a", "sample", "sha384", 500).ok).toBe(true);
		if (!first.ok) throw new Error("create failed");
		expect(t.get(first.session.id, 1000)).toBeUndefined();
		expect(t.size).toBe(1);
		const again = t.create("a", "sample", "sha384", 1000);
		expect(again.ok).toBe(true);
		expect(t.create("a", "sample", "sha384", 1000)).toEqual({
			ok: false,
			reason: "client-full",
		});
	});

	it("property: agrees with a model under random creations, attests, lookups and time steps", () => {
		type M = {
			id: string;
			client: string;
			state: "challenged" | "verifying" | "attested";
			expires: number;
			/** creation or attest order within its list */
			order: number;
		};
		fc.assert(
			fc.property(
				fc.integer({ min: 1, max: 6 }),
				fc.integer({ min: 1, max: 4 }),
				fc.integer({ min: 1, max: 50 }),
				fc.integer({ min: 1, max: 50 }),
				fc.array(
					fc.record({
						op: fc.constantFrom(
							"create",
							"create",
							"create",
							"get",
							"attest",
							"fail",
							"begin",
							"sweep",
						),
						client: fc.constantFrom("a", "b", "c"),
						dt: fc.integer({ min: 0, max: 20 }),
						pick: fc.nat(),
					}),
					{ maxLength: 80 },
				),
				(max, perClient, ttlMs, challenge, ops) => {
					const challengeTtlMs = Math.min(challenge, ttlMs);
					const t = new SessionTable({
						max,
						perClient,
						ttlMs,
						challengeTtlMs: challenge,
					});
					let model: M[] = [];
					const sessions = new Map<
						string,
						ReturnType<typeof t.create> & { ok: true }
					>();
					let now = 0;
					let order = 0;
					const count = (c: string) =>
						model.filter((s) => s.client === c).length;
					const live = () => {
						model = model.filter((s) => s.expires > now);
					};
					for (const o of ops) {
						now += o.dt;
						const ids = [...sessions.keys()];
						const pick = ids[o.pick % Math.max(1, ids.length)];
						if (o.op === "create") {
							live();
							let room = true;
							let reason: string | undefined;
							const held = count(o.client);
							let ownEvict: M | undefined;
							if (held >= perClient) {
								ownEvict = model
									.filter(
										(s) => s.client === o.client && s.state === "attested",
									)
									.sort((x, y) => x.order - y.order)[0];
								if (!ownEvict) {
									room = false;
									reason = "client-full";
								}
							}
							const sizeAfterOwn = model.length - (ownEvict ? 1 : 0);
							const heldAfterOwn = held - (ownEvict ? 1 : 0);
							let needVictim = false;
							if (room && sizeAfterOwn >= max) {
								const counts = ["a", "b", "c"].map((c) =>
									c === o.client ? heldAfterOwn : count(c),
								);
								const top = Math.max(...counts);
								if (top < heldAfterOwn + 2) {
									room = false;
									reason = "full";
								} else needVictim = true;
							}
							const r = t.create(o.client, "sample", "sha384", now);
							if (!room) {
								// the own eviction happens only when the create succeeds or the table was not full
								expect(r).toEqual({ ok: false, reason });
								if (ownEvict && reason === "full")
									model = model.filter((s) => s !== ownEvict);
								continue;
							}
							expect(r.ok).toBe(true);
							if (!r.ok) continue;
							if (ownEvict) model = model.filter((s) => s !== ownEvict);
							if (needVictim) {
								const v = model.find((s) => s.id === r.evicted?.id) as M;
								expect(v).toBeDefined();
								const counts = ["a", "b", "c"].map(count);
								expect(count(v.client)).toBe(Math.max(...counts));
								const theirs = model
									.filter((s) => s.client === v.client)
									.sort((x, y) => x.order - y.order);
								const challenged = theirs.filter(
									(s) => s.state === "challenged",
								);
								const attested = theirs.filter((s) => s.state === "attested");
								expect(v).toBe(challenged[0] ?? attested[0]);
								model = model.filter((s) => s !== v);
							} else if (!ownEvict) expect(r.evicted).toBeUndefined();
							else expect(r.evicted?.id).toBe(ownEvict.id);
							model.push({
								id: r.session.id,
								client: o.client,
								state: "challenged",
								expires: now + challengeTtlMs,
								order: order++,
							});
							sessions.set(r.session.id, r);
						} else if (pick !== undefined) {
							const s = (sessions.get(pick) as { session: Session }).session;
							const m = model.find((x) => x.id === pick);
							if (o.op === "get") {
								const alive = m !== undefined && m.expires > now;
								if (m && !alive) model = model.filter((x) => x !== m);
								expect(t.get(pick, now)?.id).toBe(alive ? pick : undefined);
							} else if (o.op === "begin") {
								const ok = t.beginAttest(s);
								expect(ok).toBe(m?.state === "challenged");
								if (ok && m) m.state = "verifying";
							} else if (o.op === "attest" || o.op === "fail") {
								// begin and finish at the same instant (no time passes)
								const ok = t.beginAttest(s);
								expect(ok).toBe(m?.state === "challenged");
								if (!ok || !m) continue;
								if (o.op === "attest") {
									t.attest(s, {} as never, now);
									m.state = "attested";
									m.expires = now + ttlMs;
									m.order = order++;
								} else {
									t.drop(s);
									model = model.filter((x) => x !== m);
								}
							}
						}
						if (o.op === "sweep") {
							t.sweep(now);
							live();
						}
						expect(t.size).toBe(model.length);
						for (const c of ["a", "b", "c"]) expect(t.heldBy(c)).toBe(count(c));
					}
				},
			),
			{ numRuns: 400 },
		);
	});
});

// ---------------------------------------------------------------------------------------------
// RateLimiter

describe("RateLimiter", () => {
	it("allows a burst, then refills at `rate` a second, up to the burst", () => {
		const r = new RateLimiter({ rate: 10, burst: 5 });
		for (let i = 0; i < 5; i++) expect(r.take("c", 0)).toBe(0);
		expect(r.take("c", 0)).toBe(1);
		expect(r.take("c", 50)).toBe(1); // half a token
		expect(r.take("c", 100)).toBe(0); // one token after 100 ms
		expect(r.take("c", 100)).toBe(1);
		// a long pause refills to the burst, not beyond
		for (let i = 0; i < 5; i++) expect(r.take("c", 60_000)).toBe(0);
		expect(r.take("c", 60_000)).toBeGreaterThan(0);
		// other clients have their own buckets
		expect(r.take("d", 60_000)).toBe(0);
	});

	it("Retry-After is a whole number of seconds ≥ 1 after which the request goes through", () => {
		fc.assert(
			fc.property(
				fc.double({ min: 0.01, max: 1000, noNaN: true }),
				fc.integer({ min: 1, max: 20 }),
				fc.integer({ min: 0, max: 10 ** 9 }),
				(rate, burst, start) => {
					const r = new RateLimiter({ rate, burst });
					for (let i = 0; i < burst; i++) expect(r.take("c", start)).toBe(0);
					const wait = r.take("c", start);
					expect(Number.isInteger(wait)).toBe(true);
					expect(wait).toBeGreaterThanOrEqual(1);
					expect(wait).toBeLessThanOrEqual(Math.ceil(1 / rate) + 1);
					expect(r.take("c", start + wait * 1000)).toBe(0);
				},
			),
			{ numRuns: 300 },
		);
		const slow = new RateLimiter({ rate: 0.1, burst: 1 });
		expect(slow.take("c", 0)).toBe(0);
		expect(slow.take("c", 0)).toBe(10);
		expect(slow.take("c", 5000)).toBe(5);
	});

	it("rate 0 is unlimited", () => {
		const r = new RateLimiter({ rate: 0, burst: 0 });
		for (let i = 0; i < 10_000; i++) expect(r.take("c", 0)).toBe(0);
	});

	it("a full table drops the least recently seen client (which can only make it more lenient)", () => {
		const r = new RateLimiter({ rate: 1, burst: 1, maxClients: 2 });
		expect(r.take("a", 0)).toBe(0);
		expect(r.take("b", 0)).toBe(0);
		expect(r.take("a", 0)).toBe(1); // a is now the most recently seen
		expect(r.take("c", 0)).toBe(0); // evicts b, the least recently seen
		expect(r.take("a", 0)).toBe(1); // a was kept: still limited
		expect(r.take("b", 0)).toBe(0); // b was forgotten: a fresh bucket (evicts c)
		expect(r.take("a", 0)).toBe(1);
		expect(r.take("c", 0)).toBe(0); // c was forgotten in turn
	});
});

// ---------------------------------------------------------------------------------------------
// the token signer

describe("tokenSigner", () => {
	const pkcs8 = generateSigningKey();
	const signer = tokenSigner(pkcs8);
	const jwk = generateEphemeralKey("ec").jwk;
	const claims: Claims = {
		tee: "sample",
		debug: false,
		measurement: "",
		report_data: "ab".repeat(64),
		init_data: "",
		tcb: { svn: 1 },
		tcb_status: "",
		tee_specific: { insecure: true },
	};
	const NOW = Date.now();
	const issue = (
		o: { nowMs?: number; ttlSeconds?: number; s?: typeof signer } = {},
	) =>
		(o.s ?? signer).issue({
			claims,
			teePubKey: jwk,
			evidenceDigest: "cd".repeat(48),
			nowMs: o.nowMs ?? NOW,
			ttlSeconds: o.ttlSeconds ?? 300,
			build: "dadi-broker test",
		});
	const invalid = (token: string, nowMs = NOW) => {
		expect(thrown(() => signer.check(token, nowMs)).code).toBe(
			"SESSION_INVALID",
		);
	};
	const b64 = (v: unknown) =>
		Buffer.from(JSON.stringify(v)).toString("base64url");
	/** Signs an arbitrary payload with the broker's own key and header. */
	const selfSigned = (payload: unknown) => {
		const header = issue().split(".")[0] as string;
		const input = `${header}.${b64(payload)}`;
		const sig = sign("sha256", Buffer.from(input), {
			key: createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" }),
			dsaEncoding: "ieee-p1363",
		});
		return `${input}.${sig.toString("base64url")}`;
	};

	it("issues a standard ES256 JWT that jose verifies with the signer's public key", async () => {
		const token = issue({ nowMs: Date.now() });
		const { payload, protectedHeader } = await jwtVerify(
			token,
			signer.publicKey,
			{
				issuer: TOKEN_ISSUER,
				algorithms: ["ES256"],
			},
		);
		expect(protectedHeader).toEqual({
			alg: "ES256",
			typ: "JWT",
			kid: signer.kid,
		});
		expect(payload.iss).toBe("dadi-broker");
		expect((payload.exp as number) - (payload.iat as number)).toBe(300);
		expect(payload.jti).toMatch(/^[A-Za-z0-9_-]{16}$/);
		expect(payload.eat_profile).toBe("tag:github.com,2023:veraison/ear");
		expect(payload["tee-pubkey"]).toEqual(jwk);
		expect(payload["evidence-digest"]).toBe("cd".repeat(48));
		expect(payload.submods).toEqual({
			sample: { "ear.status": "affirming", "dadi.claims": claims },
		});
		// and the broker's own check agrees
		const checked = signer.check(token, Date.now());
		expect(checked.submods.sample?.["dadi.claims"]).toEqual(claims);
		expect(checked["tee-pubkey"]).toEqual(jwk);
		// a fresh jti every time
		expect(signer.check(issue(), NOW).jti).not.toBe(
			signer.check(issue(), NOW).jti,
		);
	});

	it("the kid is stable for a key and differs between keys", () => {
		expect(tokenSigner(pkcs8).kid).toBe(signer.kid);
		expect(tokenSigner(generateSigningKey()).kid).not.toBe(signer.kid);
	});

	it("any flipped character in any part is refused", () => {
		const token = issue();
		const alphabet =
			"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
		const sigStart = token.lastIndexOf(".") + 1;
		let tried = 0;
		for (let i = 0; i < token.length; i++) {
			const c = token[i] as string;
			if (c === ".") continue;
			// the signature's last character carries 4 unused bits: only flips that change the
			// signature bytes are forgeries (see the separate canonical-encoding test)
			const replacements =
				i === token.length - 1
					? [
							alphabet[(alphabet.indexOf(c) ^ 32) % 64] as string,
							alphabet[(alphabet.indexOf(c) ^ 16) % 64] as string,
						]
					: [
							alphabet[(alphabet.indexOf(c) + 1) % 64] as string,
							"A" === c ? "B" : "A",
						];
			for (const r of replacements) {
				const forged = `${token.slice(0, i)}${r}${token.slice(i + 1)}`;
				expect(
					outcome(() => signer.check(forged, NOW)),
					`position ${i}${i >= sigStart ? " (signature)" : ""}: ${c} → ${r}`,
				).toBe("SESSION_INVALID");
				tried++;
			}
		}
		expect(tried).toBeGreaterThan(500);
		// and a flip into a character outside base64url
		for (const bad of ["+", "/", "=", " ", "é"]) {
			invalid(`${token.slice(0, -1)}${bad}`);
			invalid(token.replace(".", `${bad}.`));
		}
	});

	it("a token from another signer is refused, even under this signer's header", () => {
		const other = tokenSigner(generateSigningKey());
		const foreign = issue({ s: other });
		expect(other.check(foreign, NOW).iss).toBe(TOKEN_ISSUER);
		invalid(foreign);
		const [, p, s] = foreign.split(".");
		const header = issue().split(".")[0];
		invalid(`${header}.${p}.${s}`);
	});

	it("expiry: valid until exp, refused from exp on; iat more than 60 s ahead refused", () => {
		const token = issue({ nowMs: NOW, ttlSeconds: 300 });
		const exp = (Math.floor(NOW / 1000) + 300) * 1000;
		expect(signer.check(token, exp - 1).iss).toBe(TOKEN_ISSUER);
		invalid(token, exp);
		invalid(token, exp + 3600_000);
		invalid(issue({ nowMs: NOW - 400_000, ttlSeconds: 300 }));
		invalid(issue({ nowMs: NOW, ttlSeconds: 0 }));
		// issued in the future (clock skew beyond a minute)
		invalid(issue({ nowMs: NOW + 120_000 }));
		expect(signer.check(issue({ nowMs: NOW + 30_000 }), NOW).iss).toBe(
			TOKEN_ISSUER,
		);
	});

	it("alg none, HS256 with the public key, and tampered payloads are refused", () => {
		const token = issue();
		const [, payload] = token.split(".") as [string, string];
		const none = b64({ alg: "none", typ: "JWT", kid: signer.kid });
		invalid(`${none}.${payload}.`);
		invalid(`${none}.${payload}`);
		invalid(`${b64({ alg: "none" })}.${payload}.`);
		const hs = b64({ alg: "HS256", typ: "JWT", kid: signer.kid });
		for (const secret of [
			signer.publicKey.export({ format: "pem", type: "spki" }),
			signer.publicKey.export({ format: "der", type: "spki" }),
		]) {
			const mac = createHmac("sha256", secret)
				.update(`${hs}.${payload}`)
				.digest("base64url");
			invalid(`${hs}.${payload}.${mac}`);
		}
		// the payload edited, signature kept
		const body = JSON.parse(Buffer.from(payload, "base64url").toString());
		body.exp += 3600;
		invalid(`${token.split(".")[0]}.${b64(body)}.${token.split(".")[2]}`);
		// the JSON re-serialised with other whitespace (same claims, other bytes)
		invalid(
			`${token.split(".")[0]}.${Buffer.from(JSON.stringify(body, null, 1)).toString("base64url")}.${token.split(".")[2]}`,
		);
	});

	it("properly signed but malformed claims are refused (strict check)", () => {
		const good = signer.check(issue(), NOW);
		// sanity: the helper signs like the broker
		expect(signer.check(selfSigned(good), NOW).jti).toBe(good.jti);
		const variants: Record<string, unknown>[] = [
			{ ...good, iss: "someone-else" },
			{ ...good, exp: String(good.exp) },
			{ ...good, exp: undefined },
			{ ...good, iat: undefined },
			{ ...good, "tee-pubkey": undefined },
			{ ...good, submods: undefined },
		];
		for (const v of variants) invalid(selfSigned(v));
		for (const v of [null, 1, "x", []]) invalid(selfSigned(v));
		// not JSON at all
		const header = issue().split(".")[0] as string;
		const input = `${header}.${Buffer.from("not json").toString("base64url")}`;
		const sig = sign("sha256", Buffer.from(input), {
			key: createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" }),
			dsaEncoding: "ieee-p1363",
		});
		invalid(`${input}.${sig.toString("base64url")}`);
	});

	it("the signature must be canonical base64url (no alternative spelling of the same bytes)", () => {
		const token = issue();
		const last = token.at(-1) as string;
		const alphabet =
			"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
		const idx = alphabet.indexOf(last);
		// 64 bytes = 86 characters; the last carries 2 data bits and 4 unused bits
		const sameBytes = [1, 2, 4, 8].map((bit) => alphabet[idx ^ bit] as string);
		for (const alt of sameBytes) {
			const respelled = `${token.slice(0, -1)}${alt}`;
			expect(
				Buffer.from(respelled.split(".")[2] as string, "base64url").equals(
					Buffer.from(token.split(".")[2] as string, "base64url"),
				),
			).toBe(true);
			invalid(respelled);
		}
	});

	it("property: random strings are refused with SESSION_INVALID", () => {
		const header = issue().split(".")[0] as string;
		const b64url = fc.string({
			unit: fc.constantFrom(
				..."ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
			),
			maxLength: 200,
		});
		fc.assert(
			fc.property(
				fc.oneof(
					fc.string({ maxLength: 300 }),
					fc.string({ unit: "binary", maxLength: 300 }),
					fc.tuple(b64url, b64url, b64url).map((p) => p.join(".")),
					fc.tuple(b64url, b64url).map(([p, s]) => `${header}.${p}.${s}`),
					fc
						.tuple(b64url, fc.uint8Array({ minLength: 64, maxLength: 64 }))
						.map(
							([p, s]) =>
								`${header}.${p}.${Buffer.from(s).toString("base64url")}`,
						),
				),
				(s) => {
					expect(outcome(() => signer.check(s, NOW))).toBe("SESSION_INVALID");
				},
			),
			{ numRuns: 300 },
		);
		for (const v of ["", ".", "..", "...", "a.b.c", "x".repeat(20_000)])
			invalid(v);
	});
});
