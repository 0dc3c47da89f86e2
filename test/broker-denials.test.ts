/**
 * The broker refuses, with the right status and problem type, every request the issue lists —
 * and nothing it sends or logs ever holds key material.
 */
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateImageKey, toJwk } from "../src/crypto/image-key.js";
import { decryptFromBroker, parseFlattenedJwe } from "../src/kbs/jwe.js";
import { generateEphemeralKey } from "../src/kbs/tee-pubkey.js";
import {
	ManualGuest,
	raw,
	startTestBroker,
	type TestBroker,
} from "./broker/harness.js";
import { cleanupTempDirs, rejection } from "./helpers.js";

let b: TestBroker;
const KEY = generateImageKey();
const SECRET = Buffer.from(JSON.stringify(toJwk(KEY)));
const PATH = "default/image-key/app";
const guests: ManualGuest[] = [];
const guest = (kind: "ec" | "rsa" = "ec") => {
	const g = new ManualGuest(b.url, kind);
	guests.push(g);
	return g;
};
const problem = (r: { json(): unknown }) =>
	r.json() as { type: string; status: number; detail: string };

beforeAll(async () => {
	b = await startTestBroker();
	await b.put(PATH, SECRET);
	// a policy that requires more than the sample TEE offers
	const a = await b.admin();
	try {
		await a.call(
			"PUT",
			"/admin/v0/policy/strict",
			JSON.stringify({
				apiVersion: "dadi.dev/v1alpha1",
				kind: "KeyReleasePolicy",
				name: "strict",
				resources: ["strict/*/*"],
				rules: [{ name: "svn-at-least-2", expr: "claims.tcb.svn >= 2" }],
			}),
			"application/json",
		);
	} finally {
		await a.close();
	}
	await b.put("strict/image-key/app", SECRET);
});

afterAll(async () => {
	await b?.close();
	await cleanupTempDirs();
});

describe("the full exchange", () => {
	it("releases the key as a JWE that only the guest's ephemeral key opens (EC and RSA)", async () => {
		for (const kind of ["ec", "rsa"] as const) {
			const g = await guest(kind).attested();
			const r = await g.resource(PATH);
			expect(r.status).toBe(200);
			const jwe = parseFlattenedJwe(r.json(), "response");
			expect(await decryptFromBroker(jwe, g.key.privateKey)).toEqual(SECRET);
			// an eavesdropper holding a copy of the response and its own key gets nothing
			const eve = generateEphemeralKey(kind);
			expect(
				(await rejection(decryptFromBroker(jwe, eve.privateKey))).code,
			).toBe("AUTH_FAILED");
			// nor does another guest that attested on its own
			const other = await guest(kind).attested();
			expect(
				(await rejection(decryptFromBroker(jwe, other.key.privateKey))).code,
			).toBe("AUTH_FAILED");
		}
	});

	it("accepts the bearer token instead of the cookie", async () => {
		const g = await guest().attested();
		const r = await g.resource(PATH, { bearer: g.token, cookie: false });
		expect(r.status).toBe(200);
		expect(
			await decryptFromBroker(
				parseFlattenedJwe(r.json(), "r"),
				g.key.privateKey,
			),
		).toEqual(SECRET);
	});
});

describe("denials", () => {
	it("an auth with another protocol version or a malformed body is refused", async () => {
		const r = await raw(`${b.url}/kbs/v0/auth`, {
			method: "POST",
			headers: { "content-type": "application/json" },
			body: JSON.stringify({
				version: "0.1.0",
				tee: "sample",
				"extra-params": "",
			}),
		});
		expect(r.status).toBe(400);
		expect(problem(r).type).toMatch(/ProtocolVersion$/);
	});

	it("missing nonce → 400; wrong nonce → 401", async () => {
		const g = guest();
		await g.auth();
		const r = await g.attest({
			body: {
				"init-data": null,
				"runtime-data": { "tee-pubkey": g.key.jwk },
				"tee-evidence": {
					primary_evidence: g.evidence(),
					additional_evidence: "",
				},
			},
		});
		expect(r.status).toBe(400);
		const h = guest();
		await h.auth();
		const wrong = Buffer.alloc(32, 7).toString("base64");
		const s = await h.attest({
			nonce: wrong,
			evidence: h.evidence({ nonce: wrong }),
		});
		expect(s.status).toBe(401);
		expect(problem(s).type).toMatch(/AttestationFailed$/);
	});

	it("attest without a session → 401", async () => {
		const g = guest();
		const r = await g.attest({ nonce: "x" });
		expect(r.status).toBe(401);
	});

	it("replayed evidence: another session's evidence is refused, and a nonce serves one attest only", async () => {
		const a = guest();
		await a.auth();
		const evidence = a.evidence();
		expect((await a.attest({ evidence })).status).toBe(200);
		// the same evidence and nonce again on the same session
		expect((await a.attest({ evidence })).status).toBe(401);
		// on a new session (new nonce) with the old nonce in runtime-data
		const c = guest();
		await c.auth();
		expect((await c.attest({ evidence, nonce: a.nonce })).status).toBe(401);
		// with the new nonce but the old evidence
		const d = guest();
		await d.auth();
		const r = await d.attest({ evidence });
		expect(r.status).toBe(401);
		expect(problem(r).type).toMatch(/AttestationFailed$/);
	});

	it("a tee-pubkey not bound in report_data is refused", async () => {
		const g = guest();
		await g.auth();
		const other = generateEphemeralKey("ec");
		// evidence binds the guest's key, runtime-data names another
		const r = await g.attest({ jwk: other.jwk, evidence: g.evidence() });
		expect(r.status).toBe(401);
	});

	it("a policy mismatch → 403, audited with the reasons", async () => {
		const g = await guest().attested();
		const r = await g.resource("strict/image-key/app");
		expect(r.status).toBe(403);
		expect(problem(r).type).toMatch(/PolicyDeny$/);
		expect(problem(r).detail).toMatch(/svn-at-least-2/);
	});

	it("a resource no policy covers → 403; an absent one a policy covers → 404", async () => {
		const g = await guest().attested();
		expect((await g.resource("other/image-key/app")).status).toBe(403);
		const r = await g.resource("default/image-key/absent");
		expect(r.status).toBe(404);
		expect(problem(r).type).toMatch(/ResourceNotFound$/);
	});

	it("a resource without attestation → 401 (no cookie, unattested session)", async () => {
		const g = guest();
		expect((await g.resource(PATH)).status).toBe(401);
		await g.auth();
		expect((await g.resource(PATH)).status).toBe(401);
	});

	it("a tampered token → 401", async () => {
		const g = await guest().attested();
		const [h, p, s] = g.token.split(".") as [string, string, string];
		const payload = JSON.parse(Buffer.from(p, "base64url").toString());
		payload.exp += 3600;
		const forged = [
			`${h}.${Buffer.from(JSON.stringify(payload)).toString("base64url")}.${s}`,
			`${h}.${p}.${s.slice(0, -2)}${s.endsWith("AA") ? "BB" : "AA"}`,
			`${h}.${p}`,
			"not-a-token",
		];
		for (const t of forged) {
			const r = await g.resource(PATH, { bearer: t, cookie: false });
			expect(r.status, t.slice(0, 40)).toBe(401);
		}
	});

	it("a token for another tee-pubkey → 401 (presented with a session attested for a different key)", async () => {
		const a = await guest().attested();
		const m = await guest().attested();
		const r = await m.resource(PATH, { bearer: a.token });
		expect(r.status).toBe(401);
		expect(problem(r).detail).toMatch(/different tee-pubkeys/);
	});

	it("an expired session → 401", async () => {
		const short = await startTestBroker({ sessionTtlSeconds: 1 });
		try {
			await short.put(PATH, SECRET);
			const g = new ManualGuest(short.url);
			await g.auth();
			await new Promise((r) => setTimeout(r, 1100));
			const r = await g.attest();
			expect(r.status).toBe(401);
			expect(problem(r).detail).toMatch(/expired/);
			const h = await new ManualGuest(short.url).attested();
			await new Promise((r) => setTimeout(r, 1100));
			expect((await h.resource(PATH)).status).toBe(401);
		} finally {
			await short.close();
		}
	});

	it("the sample TEE without --insecure-dev → 401 at auth", async () => {
		const prod = await startTestBroker({ insecureDev: false });
		try {
			const g = new ManualGuest(prod.url);
			const r = await g.auth("sample");
			expect(r.status).toBe(401);
			expect(problem(r).detail).toMatch(/insecure-dev/);
			expect((await g.auth("sgx")).status).toBe(401); // a TEE this broker has no verifier for
		} finally {
			await prod.close();
		}
	});

	it("rate limits per client → 429 with Retry-After; a full session table → 503", async () => {
		const limited = await startTestBroker({
			rateLimit: { rate: 1, burst: 3 },
			maxSessions: 2,
		});
		try {
			const statuses: number[] = [];
			for (let i = 0; i < 5; i++)
				statuses.push((await new ManualGuest(limited.url).auth()).status);
			expect(statuses.slice(0, 2)).toEqual([200, 200]);
			expect(statuses[2]).toBe(503);
			expect(statuses.slice(3)).toEqual([429, 429]);
			const r = await new ManualGuest(limited.url).auth();
			expect(r.headers.get("retry-after")).toMatch(/^\d+$/);
		} finally {
			await limited.close();
		}
	});

	it("the admin API needs its token and is not on the KBS listener", async () => {
		expect((await raw(`${b.adminUrl}/admin/v0/resources`)).status).toBe(401);
		expect(
			(
				await raw(`${b.adminUrl}/admin/v0/resources`, {
					headers: { authorization: "Bearer wrong-token-0123456789" },
				})
			).status,
		).toBe(401);
		expect(
			(
				await raw(`${b.url}/admin/v0/resources`, {
					headers: { authorization: `Bearer ${b.adminToken}` },
				})
			).status,
		).toBe(404);
		const list = await raw(`${b.adminUrl}/admin/v0/resources`, {
			headers: { authorization: `Bearer ${b.adminToken}` },
		});
		expect(list.status).toBe(200);
		expect(list.text).toContain(PATH);
	});
});

describe("no key material anywhere but the JWE", () => {
	it("responses, logs, audit log and state files never hold the key", async () => {
		const forms = [
			KEY.key.toString("hex"),
			KEY.key.toString("base64"),
			KEY.key.toString("base64url"),
			SECRET.toString(),
		];
		const haystacks: [string, string][] = [];
		for (const g of guests)
			for (const t of g.bodies) haystacks.push(["response", t]);
		haystacks.push(["log", b.logs.join("\n")]);
		const walk = async (d: string): Promise<void> => {
			for (const e of await readdir(d, { withFileTypes: true })) {
				const p = join(d, e.name);
				if (e.isDirectory()) await walk(p);
				else haystacks.push([p, (await readFile(p)).toString("latin1")]);
			}
		};
		await walk(b.stateDir);
		expect(haystacks.length).toBeGreaterThan(20);
		for (const [where, text] of haystacks)
			for (const f of forms)
				expect(text.includes(f), `${where} holds the key`).toBe(false);
		const audit = await readFile(join(b.stateDir, "audit.log"), "utf8");
		expect(audit).toMatch(/"event":"release"/);
		expect(audit).toMatch(/"event":"deny"/);
	});
});
