/**
 * Fuzzes the HTTP inputs of a live broker (one in-process broker for the whole file). For every
 * input: a 4xx status (never 5xx, never a hang), an RFC 7807 problem body for every error, no key
 * material in any response; afterwards the broker still completes a normal exchange.
 *
 * Requests are written on raw TCP sockets (node:net) so that methods, request targets, headers
 * and framing reach the server exactly as generated (fetch would normalise "..", refuse some
 * methods and add its own headers).
 */
import {
	createHmac,
	createPublicKey,
	generateKeyPairSync,
	randomBytes,
} from "node:crypto";
import { METHODS } from "node:http";
import { connect, type Socket } from "node:net";
import fc from "fast-check";
import { flattenedDecrypt } from "jose";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { PROBLEM_BASE } from "../src/broker/http.js";
import { PROTOCOL_TEES } from "../src/kbs/protocol.js";
import { reportDataDigest } from "../src/kbs/report-data.js";
import { generateEphemeralKey } from "../src/kbs/tee-pubkey.js";
import {
	ManualGuest,
	startTestBroker,
	type TestBroker,
} from "./broker/harness.js";
import { cleanupTempDirs } from "./helpers.js";

let b: TestBroker;
let port: number;
let adminPort: number;
/** The stored secret: its bytes must never appear in any response. */
const SECRET = randomBytes(48);
const PATH = "default/image-key/app";
const EC = generateEphemeralKey("ec");
let RSA: ReturnType<typeof generateEphemeralKey>;
/** A guest attested in beforeAll: its cookie and token reach the resource checks. */
let attested: ManualGuest;
let forbidden: string[] = [];
let checked = 0;
const RUNS = 150;
const TIMEOUT_MS = 5000;

beforeAll(async () => {
	b = await startTestBroker({
		maxSessions: 1_000_000,
		maxSessionsPerClient: 1_000_000,
	});
	port = Number(new URL(b.url).port);
	adminPort = Number(new URL(b.adminUrl).port);
	await b.put(PATH, SECRET);
	RSA = generateEphemeralKey("rsa");
	forbidden = [SECRET, b.masterKey].flatMap((k) => [
		k.toString("hex"),
		k.toString("hex").toUpperCase(),
		k.toString("base64"),
		k.toString("base64url"),
	]);
	forbidden.push(b.adminToken);
	attested = await new ManualGuest(b.url).attested();
}, 60_000);

afterAll(async () => {
	await b?.close();
	await cleanupTempDirs();
});

// ---------------------------------------------------------------------------------------------
// a raw HTTP/1.1 client

interface Resp {
	status: number;
	headers: Record<string, string>;
	text: string;
}

interface Outcome {
	/** The first response on the connection, if a complete status line and header block came. */
	response?: Resp;
	raw: Buffer;
	error?: string;
}

function parseResponse(raw: Buffer): Resp | undefined {
	const end = raw.indexOf("\r\n\r\n");
	if (end < 0) return undefined;
	const lines = raw.subarray(0, end).toString("latin1").split("\r\n");
	const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0] ?? "");
	if (!m) return undefined;
	const headers: Record<string, string> = {};
	for (const l of lines.slice(1)) {
		const i = l.indexOf(":");
		const k = l.slice(0, i).trim().toLowerCase();
		const v = l.slice(i + 1).trim();
		headers[k] = headers[k] === undefined ? v : `${headers[k]}, ${v}`;
	}
	let body = raw.subarray(end + 4);
	const len = headers["content-length"];
	if (len !== undefined) body = body.subarray(0, Number(len));
	return { status: Number(m[1]), headers, text: body.toString("utf8") };
}

/**
 * One connection: `send` writes the request (by default `data`, without closing our side: the
 * server answers and closes because the request says "connection: close"). Resolves when the
 * server has closed; rejects when that takes longer than the timeout (a hang).
 */
function exchange(o: {
	data?: Buffer | string;
	send?: (s: Socket, answered: () => boolean) => Promise<void> | void;
	/** Half-close after writing (for garbage: lets the parser see the end of input). */
	end?: boolean;
	to?: number;
	timeoutMs?: number;
}): Promise<Outcome> {
	const ms = o.timeoutMs ?? TIMEOUT_MS;
	return new Promise((resolve, reject) => {
		const chunks: Buffer[] = [];
		let error: string | undefined;
		const s = connect(o.to ?? port, "127.0.0.1");
		const timer = setTimeout(() => {
			s.destroy();
			reject(new Error(`no answer and no close within ${ms} ms`));
		}, ms);
		s.on("data", (c: Buffer) => chunks.push(c));
		s.on("error", (e: NodeJS.ErrnoException) => {
			error ??= e.code ?? e.message;
		});
		s.on("close", () => {
			clearTimeout(timer);
			const raw = Buffer.concat(chunks);
			resolve({ raw, error, response: parseResponse(raw) });
		});
		s.on("connect", async () => {
			try {
				if (o.send) await o.send(s, () => chunks.length > 0);
				else if (o.data !== undefined) s.write(o.data);
				if (o.end) s.end();
			} catch (e) {
				error ??= String(e);
			}
		});
	});
}

type Hdrs = Record<string, string | undefined>;

function request(
	method: string,
	target: string,
	headers: Hdrs = {},
	body?: Buffer | string,
): Buffer {
	const h: Hdrs = { host: "127.0.0.1", connection: "close", ...headers };
	const bytes = body === undefined ? undefined : Buffer.from(body);
	const names = Object.keys(h).map((k) => k.toLowerCase());
	if (
		bytes &&
		!names.includes("content-length") &&
		!names.includes("transfer-encoding")
	)
		h["content-length"] = String(bytes.length);
	let head = `${method} ${target} HTTP/1.1\r\n`;
	for (const [k, v] of Object.entries(h))
		if (v !== undefined) head += `${k}: ${v}\r\n`;
	const headBytes = Buffer.from(`${head}\r\n`, "latin1");
	return bytes ? Buffer.concat([headBytes, bytes]) : headBytes;
}

/** Nothing secret in these bytes. */
function noSecrets(raw: Buffer | string, what: string): void {
	const texts =
		typeof raw === "string"
			? [raw]
			: [raw.toString("latin1"), raw.toString("utf8")];
	for (const t of texts)
		for (const f of forbidden)
			if (t.includes(f))
				expect.fail(`${what}: the response holds key material`);
}

/** The checks every answer passes: < 500, a problem document for errors, nothing secret. */
function check(o: Outcome, what: string, method = "GET"): Resp {
	noSecrets(o.raw, what);
	const r = o.response;
	if (!r)
		return expect.fail(
			`${what}: no response (${o.error ?? "closed"}): ${o.raw.toString("latin1").slice(0, 200)}`,
		);
	expect(r.status, `${what}: ${r.text.slice(0, 300)}`).toBeLessThan(500);
	if (r.status >= 400 && method !== "HEAD") {
		expect(r.headers["content-type"], what).toBe("application/problem+json");
		const p = JSON.parse(r.text) as Record<string, unknown>;
		expect(Object.keys(p).sort(), what).toEqual([
			"detail",
			"status",
			"title",
			"type",
		]);
		expect(p.status, what).toBe(r.status);
		expect(typeof p.title).toBe("string");
		expect(p.type, what).toBe(`${PROBLEM_BASE}${p.title as string}`);
		expect(typeof p.detail).toBe("string");
	}
	checked++;
	return r;
}

async function call(
	method: string,
	target: string,
	headers: Hdrs = {},
	body?: Buffer | string,
	to = port,
): Promise<Resp> {
	const o = await exchange({
		data: request(method, target, headers, body),
		to,
	});
	return check(o, `${method} ${target.slice(0, 120)}`, method);
}

const title = (r: Resp) => (JSON.parse(r.text) as { title: string }).title;
const JSON_CT = { "content-type": "application/json" };
const AUTH = { version: "0.4.0", tee: "sample", "extra-params": "" };

/** A fresh session: its cookie header value and its nonce. */
async function session(): Promise<{ cookie: string; nonce: string }> {
	const r = await call("POST", "/kbs/v0/auth", JSON_CT, JSON.stringify(AUTH));
	expect(r.status).toBe(200);
	const cookie = (r.headers["set-cookie"] ?? "").split(";")[0] as string;
	expect(cookie).toMatch(/^kbs-session-id=[A-Za-z0-9_-]+$/);
	return { cookie, nonce: (JSON.parse(r.text) as { nonce: string }).nonce };
}

function evidenceFor(
	nonce: string,
	jwk: unknown,
	additional = "",
): Record<string, string> {
	let digest: Buffer;
	try {
		digest = reportDataDigest({
			nonce,
			teePubKey: jwk,
			additionalEvidence: additional,
		});
	} catch {
		digest = Buffer.alloc(48);
	}
	return { svn: "1", report_data: digest.toString("base64"), init_data: "" };
}

function attestBody(
	nonce: string,
	jwk: unknown = EC.jwk,
): Record<string, Record<string, unknown> | null> {
	return {
		"init-data": null,
		"runtime-data": { nonce, "tee-pubkey": jwk },
		"tee-evidence": {
			primary_evidence: evidenceFor(nonce, jwk),
			additional_evidence: "",
		},
	};
}

const isObject = (v: unknown): v is Record<string, unknown> =>
	typeof v === "object" && v !== null && !Array.isArray(v);

let logMark = 0;
beforeEach(() => {
	logMark = b.logs.length;
});
/** A client that went away mid-request (logged as an internal error: see the dedicated test). */
const CLIENT_ABORT = /^internal error on \S+ \S+: Error: aborted(\n|\\n)/;
/** No request since the last mark was an internal error (the broker logs every 5xx but 503). */
function noInternalErrors(): void {
	const fresh = b.logs.slice(logMark);
	logMark = b.logs.length;
	expect(
		fresh.filter(
			(l) => l.startsWith("internal error") && !CLIENT_ABORT.test(l),
		),
	).toEqual([]);
}

const printable = (max: number) =>
	fc.string({ unit: "grapheme-ascii", maxLength: max });

// ---------------------------------------------------------------------------------------------

describe("malformed bodies", () => {
	const garbage = fc.oneof(
		fc.string({ maxLength: 200 }),
		fc.string({ unit: "binary", maxLength: 200 }),
		fc.uint8Array({ maxLength: 300 }).map((u) => Buffer.from(u)),
		fc
			.nat({ max: JSON.stringify(AUTH).length - 1 })
			.map((n) => JSON.stringify(AUTH).slice(0, n)),
		fc.constantFrom(
			"",
			"{",
			"}",
			"[",
			"null",
			"{}",
			"[]",
			'"0.4.0"',
			"{'version':'0.4.0'}",
			"\u00ef\u00bb\u00bf{}",
			"\uFEFF{}",
			'{"version":"0.4.0",}',
		),
	);
	it("/kbs/v0/auth: random strings and bytes → 400", async () => {
		await fc.assert(
			fc.asyncProperty(garbage, async (body) => {
				const r = await call("POST", "/kbs/v0/auth", JSON_CT, body);
				expect(r.status).toBe(400);
				expect(title(r)).toBe("InvalidRequest");
			}),
			{ numRuns: RUNS },
		);
		noInternalErrors();
	}, 60_000);

	it("/kbs/v0/attest: random strings and bytes → 400 (401 without a session: the cookie is checked before the body is read)", async () => {
		await fc.assert(
			fc.asyncProperty(garbage, fc.boolean(), async (body, withSession) => {
				const cookie = withSession ? (await session()).cookie : undefined;
				const r = await call(
					"POST",
					"/kbs/v0/attest",
					{ ...JSON_CT, cookie },
					body,
				);
				expect(r.status).toBe(withSession ? 400 : 401);
			}),
			{ numRuns: RUNS },
		);
		noInternalErrors();
	}, 60_000);

	it("deeply nested JSON → 4xx", async () => {
		for (const deep of [
			"[".repeat(16_000),
			`${"[".repeat(8000)}${"]".repeat(8000)}`,
			`${'{"a":'.repeat(2500)}1${"}".repeat(2500)}`,
		]) {
			const r = await call("POST", "/kbs/v0/auth", JSON_CT, deep);
			expect(r.status).toBe(400);
		}
		// as deep as a sample session's attest body may be (96 KiB); deeper is 413 unread
		for (const deep of [
			"[".repeat(90_000),
			`${"[".repeat(45_000)}${"]".repeat(45_000)}`,
		]) {
			const { cookie } = await session();
			const r = await call(
				"POST",
				"/kbs/v0/attest",
				{ ...JSON_CT, cookie },
				deep,
			);
			expect(r.status).toBe(400);
		}
		const { cookie, nonce } = await session();
		// 15,000 levels still fit a sample session's attest body (96 KiB)
		const nested = `${'{"a":'.repeat(15_000)}1${"}".repeat(15_000)}`;
		const body = JSON.stringify(attestBody(nonce)).replace(
			/"primary_evidence":\{[^}]*\}/,
			`"primary_evidence":${nested}`,
		);
		expect(body).toContain(nested);
		const r = await call(
			"POST",
			"/kbs/v0/attest",
			{ ...JSON_CT, cookie },
			body,
		);
		expect([400, 401]).toContain(r.status);
		noInternalErrors();
	}, 30_000);
});

describe("random JSON and near misses", () => {
	type Mutation =
		| { op: "replace"; key: string; value: unknown }
		| { op: "delete"; key: string }
		| { op: "extra"; key: string; value: unknown };
	const value = fc.oneof(
		fc.jsonValue({ maxDepth: 3 }),
		fc.constantFrom(
			null,
			"",
			0,
			-1,
			true,
			[],
			{},
			"x".repeat(40),
			"0.4.0",
			...PROTOCOL_TEES,
			{ "supported-hash-algorithms": ["sha512"] },
			{ "supported-hash-algorithms": ["SHA256", "md5"] },
			{ "supported-hash-algorithms": [] },
			{ "supported-hash-algorithms": "sha384" },
		),
	);

	/** What the broker must answer for an auth body with one mutation (docs/broker.md §1). */
	function authExpect(m: Mutation): { status: number; title?: string } {
		if (m.op === "extra") return { status: 400 };
		if (m.op === "delete")
			return { status: m.key === "extra-params" ? 200 : 400 };
		const v = m.value;
		if (m.key === "version") {
			if (v === "0.4.0") return { status: 200 };
			return typeof v === "string" && v.length <= 32
				? { status: 400, title: "ProtocolVersion" }
				: { status: 400, title: "InvalidRequest" };
		}
		if (m.key === "tee") {
			if (
				v === "sample" ||
				v === "snp" ||
				v === "tdx" ||
				v === "azsnpvtpm" ||
				v === "aztdxvtpm"
			)
				return { status: 200 }; // the verifiers this broker has
			return (PROTOCOL_TEES as readonly unknown[]).includes(v)
				? { status: 401, title: "UnAuthenticated" }
				: { status: 400 };
		}
		// extra-params
		if (v === "" || v === null) return { status: 200 };
		if (!isObject(v)) return { status: 400 };
		const offered = v["supported-hash-algorithms"];
		if (offered === undefined) return { status: 200 };
		if (!Array.isArray(offered) || offered.length > 16) return { status: 400 };
		if (offered.some((x) => typeof x !== "string" || x.length > 32))
			return { status: 400 };
		return offered.some((x) =>
			["sha256", "sha384", "sha512"].includes((x as string).toLowerCase()),
		)
			? { status: 200 }
			: { status: 400 };
	}

	const authKeys = ["version", "tee", "extra-params"];
	const authMutation: fc.Arbitrary<Mutation> = fc.oneof(
		fc.record({
			op: fc.constant("replace" as const),
			key: fc.constantFrom(...authKeys),
			value,
		}),
		fc.record({
			op: fc.constant("delete" as const),
			key: fc.constantFrom(...authKeys),
		}),
		fc.record({
			op: fc.constant("extra" as const),
			key: fc
				.oneof(
					fc.string({ maxLength: 10 }),
					fc.constantFrom("__proto__", "Version", "nonce", "extra_params"),
				)
				.filter((k) => !authKeys.includes(k)),
			value,
		}),
	);

	function apply(
		base: Record<string, unknown>,
		m: Mutation,
	): Record<string, unknown> {
		const o: Record<string, unknown> = { ...base };
		if (m.op === "delete") delete o[m.key];
		else
			Object.defineProperty(o, m.key, {
				value: m.value,
				enumerable: true,
				writable: true,
				configurable: true,
			});
		return o;
	}

	it("auth: random JSON values → 400", async () => {
		await fc.assert(
			fc.asyncProperty(fc.jsonValue(), async (v) => {
				const r = await call(
					"POST",
					"/kbs/v0/auth",
					JSON_CT,
					JSON.stringify(v) ?? "null",
				);
				expect(r.status).toBe(400);
			}),
			{ numRuns: RUNS },
		);
		noInternalErrors();
	}, 60_000);

	it("auth: one member replaced, deleted or added → the documented answer", async () => {
		await fc.assert(
			fc.asyncProperty(authMutation, async (m) => {
				const body = JSON.stringify(apply(AUTH, m));
				const r = await call("POST", "/kbs/v0/auth", JSON_CT, body);
				const want = authExpect(m);
				expect(r.status, body.slice(0, 200)).toBe(want.status);
				if (want.title) expect(title(r)).toBe(want.title);
				if (r.status === 200) {
					const j = JSON.parse(r.text) as { nonce: string };
					expect(Buffer.from(j.nonce, "base64")).toHaveLength(32);
					expect(r.headers["set-cookie"]).toMatch(
						/^kbs-session-id=[A-Za-z0-9_-]+; Path=\/kbs\/v0; Max-Age=\d+; HttpOnly; SameSite=Strict$/,
					);
				}
			}),
			{ numRuns: 300 },
		);
		noInternalErrors();
	}, 60_000);

	const TOP = ["init-data", "runtime-data", "tee-evidence"];
	const RD = ["nonce", "tee-pubkey"];
	const TE = ["primary_evidence", "additional_evidence"];
	type Where = "top" | "runtime-data" | "tee-evidence";
	type AttestMutation = Mutation & { where: Where };
	const keysOf = (w: Where) =>
		w === "top" ? TOP : w === "runtime-data" ? RD : TE;
	const attestValue = fc.oneof(
		value,
		fc.constantFrom(
			{ format: "toml", body: "x" },
			{ format: "toml", body: "x", extra: 1 },
			{ nonce: "n", "tee-pubkey": {} },
			{ primary_evidence: { svn: "1" } },
			{ primary_evidence: null },
			"n".repeat(129),
		),
	);
	const attestMutation: fc.Arbitrary<AttestMutation> = fc
		.constantFrom<Where>("top", "runtime-data", "tee-evidence")
		.chain((where) =>
			fc.oneof(
				fc.record({
					where: fc.constant(where),
					op: fc.constant("replace" as const),
					key: fc.constantFrom(...keysOf(where)),
					value: attestValue,
				}),
				fc.record({
					where: fc.constant(where),
					op: fc.constant("delete" as const),
					key: fc.constantFrom(...keysOf(where)),
				}),
				fc.record({
					where: fc.constant(where),
					op: fc.constant("extra" as const),
					key: fc
						.string({ maxLength: 10 })
						.filter((k) => !keysOf(where).includes(k)),
					value: attestValue,
				}),
			),
		);

	/** The answer for a correctly bound attest body with one mutation (docs/broker.md §1). */
	function attestExpect(m: AttestMutation): number {
		if (m.op === "extra") return 400;
		if (m.op === "delete")
			return m.key === "init-data" || m.key === "additional_evidence"
				? 200
				: 400;
		const v = m.value;
		switch (m.key) {
			case "init-data":
				if (v === null) return 200;
				if (!isObject(v)) return 400;
				return Object.keys(v).every((k) => k === "format" || k === "body") &&
					typeof v.format === "string" &&
					v.format.length <= 32 &&
					typeof v.body === "string" &&
					v.body.length <= 64 << 10
					? 401 // init-data the evidence does not bind
					: 400;
			case "runtime-data":
				return isObject(v) &&
					Object.keys(v).every((k) => RD.includes(k)) &&
					typeof v.nonce === "string" &&
					v.nonce.length <= 128 &&
					v["tee-pubkey"] !== undefined
					? 401 // another nonce
					: 400;
			case "tee-evidence":
				return isObject(v) &&
					Object.keys(v).every((k) => TE.includes(k)) &&
					v.primary_evidence !== undefined &&
					v.primary_evidence !== null &&
					(v.additional_evidence === undefined ||
						typeof v.additional_evidence === "string")
					? 401 // evidence that does not verify
					: 400;
			case "nonce":
				return typeof v === "string" && v.length <= 128 ? 401 : 400;
			case "tee-pubkey":
				return 400;
			case "primary_evidence":
				return v === null ? 400 : 401;
			case "additional_evidence":
				return v === "" ? 200 : typeof v === "string" ? 401 : 400;
		}
		throw new Error(`unexpected mutation ${JSON.stringify(m)}`);
	}

	it("attest: one member replaced, deleted or added → the documented answer", async () => {
		let ok = 0;
		await fc.assert(
			fc.asyncProperty(attestMutation, async (m) => {
				const { cookie, nonce } = await session();
				const base = attestBody(nonce) as Record<string, unknown>;
				const body =
					m.where === "top"
						? apply(base, m)
						: {
								...base,
								[m.where]: apply(base[m.where] as Record<string, unknown>, m),
							};
				const text = JSON.stringify(body);
				const r = await call(
					"POST",
					"/kbs/v0/attest",
					{ ...JSON_CT, cookie },
					text,
				);
				const want = attestExpect(m);
				expect(r.status, `${JSON.stringify(m).slice(0, 200)}`).toBe(want);
				if (want === 401) expect(title(r)).toBe("AttestationFailed");
				if (want === 200) {
					ok++;
					expect(
						(JSON.parse(r.text) as { token: string }).token.split("."),
					).toHaveLength(3);
				}
			}),
			{ numRuns: 250 },
		);
		expect(ok).toBeGreaterThan(0);
		noInternalErrors();
	}, 60_000);

	it("attest: random JSON values on a fresh session → 400", async () => {
		await fc.assert(
			fc.asyncProperty(fc.jsonValue(), async (v) => {
				const { cookie } = await session();
				const r = await call(
					"POST",
					"/kbs/v0/attest",
					{ ...JSON_CT, cookie },
					JSON.stringify(v) ?? "null",
				);
				expect(r.status).toBe(400);
			}),
			{ numRuns: 100 },
		);
		noInternalErrors();
	}, 60_000);
});

describe("bad tee-pubkeys", () => {
	const b64u = (bytes: Buffer) => bytes.toString("base64url");
	/** n random bytes, odd, whose first byte's highest set bit is `top`. */
	const odd = (n: number, top = 0x80) => {
		const x = randomBytes(n);
		x[0] = ((x[0] as number) & (top - 1)) | top;
		x[n - 1] = (x[n - 1] as number) | 1;
		return x;
	};
	const without = (o: Record<string, unknown>, k: string) => {
		const c = { ...o };
		delete c[k];
		return c;
	};

	function badJwks(): fc.Arbitrary<unknown> {
		const ec = EC.jwk as unknown as Record<string, string>;
		const rsa = RSA.jwk as unknown as Record<string, string>;
		const x = ec.x as string;
		const alphabet =
			"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
		const lastBitsSet = `${x.slice(0, -1)}${alphabet[alphabet.indexOf(x.at(-1) as string) ^ 1]}`;
		// Public JWKs via DER re-import: exporting a generateKeyPairSync key as JWK can deadlock in
		// GC on Node 20 (see src/kbs/jwe.ts).
		const jwkOf = (type: "ec" | "rsa", o: Record<string, unknown>) =>
			createPublicKey({
				key: (
					generateKeyPairSync as unknown as (
						t: string,
						o: Record<string, unknown>,
					) => { publicKey: Buffer }
				)(type, {
					...o,
					publicKeyEncoding: { type: "spki", format: "der" },
					privateKeyEncoding: { type: "pkcs8", format: "der" },
				}).publicKey,
				format: "der",
				type: "spki",
			}).export({ format: "jwk" });
		const p384 = jwkOf("ec", { namedCurve: "P-384" });
		const k1 = jwkOf("ec", { namedCurve: "secp256k1" });
		const short = jwkOf("rsa", { modulusLength: 1024 });
		const n = Buffer.from(rsa.n as string, "base64url");
		const even = Buffer.from(n);
		even[even.length - 1] = (even[even.length - 1] as number) & 0xfe;
		const fixed: unknown[] = [
			// wrong curve, key type, algorithm
			{ ...ec, crv: "P-384", x: p384.x, y: p384.y },
			{ ...ec, crv: "secp256k1", x: k1.x, y: k1.y },
			{ ...ec, x: k1.x, y: k1.y },
			{ ...ec, kty: "ec" },
			{ ...ec, kty: "OKP" },
			{ ...ec, kty: "oct", k: x },
			{ ...ec, alg: "ECDH-ES" },
			{ ...ec, alg: "ECDH-ES+A128KW" },
			{ ...ec, alg: "RSA-OAEP-256" },
			{ ...ec, alg: "none" },
			{ ...rsa, alg: "RSA-OAEP" },
			{ ...rsa, alg: "RSA1_5" },
			{ ...rsa, alg: "ECDH-ES+A256KW" },
			{ ...rsa, kty: "EC" },
			// members missing or added (a private key among them)
			...["kty", "crv", "alg", "x", "y"].map((k) => without(ec, k)),
			...["kty", "alg", "n", "e"].map((k) => without(rsa, k)),
			{ ...ec, d: b64u(randomBytes(32)) },
			{ ...ec, kid: "k" },
			{ ...ec, use: "enc" },
			{ ...ec, ext: true },
			{ ...rsa, d: b64u(randomBytes(384)) },
			{ ...rsa, n: rsa.n, e: "AQAB", x },
			// off the curve
			{
				...ec,
				y: b64u(
					Buffer.from(
						Buffer.from(ec.y as string, "base64url").map((v, i) =>
							i === 31 ? v ^ 1 : v,
						),
					),
				),
			},
			{ ...ec, x: b64u(Buffer.alloc(32)), y: b64u(Buffer.alloc(32)) },
			{
				...ec,
				x: b64u(
					Buffer.from(
						"ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
						"hex",
					),
				),
			},
			// lengths, padding, alphabet, whitespace, trailing bits
			{ ...ec, x: b64u(randomBytes(31)) },
			{
				...ec,
				x: b64u(Buffer.concat([Buffer.alloc(1), Buffer.from(x, "base64url")])),
			},
			{ ...ec, x: `${x}=` },
			{ ...ec, x: Buffer.from(x, "base64url").toString("base64") },
			{ ...ec, x: ` ${x}` },
			{ ...ec, x: `${x}\n` },
			{ ...ec, x: lastBitsSet },
			{ ...ec, x: "" },
			{ ...rsa, n: `${rsa.n}=` },
			{ ...rsa, n: Buffer.from(n).toString("base64") },
			// RSA: short, too long, even, not minimal, other exponents
			{ ...rsa, n: short.n },
			{ ...rsa, n: b64u(odd(256, 0x40)) }, // 2047 bits
			{ ...rsa, n: b64u(odd(1025)) }, // 8200 bits
			{ ...rsa, n: b64u(odd(4096)) },
			{ ...rsa, n: b64u(even) },
			{ ...rsa, n: b64u(Buffer.concat([Buffer.alloc(1), n])) },
			{ ...rsa, e: "Aw" },
			{ ...rsa, e: "AAEAAQ" },
			{ ...rsa, e: "AQAA" },
			{ ...rsa, e: 65537 },
			{ ...rsa, n: "" },
			// huge values (as large as a sample session's attest body allows; larger is 413)
			{ ...ec, x: "A".repeat(80_000) },
			{ ...rsa, n: "A".repeat(90_000) },
			{ ...ec, x: 1e308, y: -1 },
			null,
			[],
			[ec],
			JSON.stringify(ec),
			{},
		];
		return fc.oneof(
			fc.constantFrom(...fixed),
			fc.jsonValue({ maxDepth: 3 }),
			fc.dictionary(
				fc.string({ maxLength: 6 }),
				fc.jsonValue({ maxDepth: 2 }),
				{ maxKeys: 6 },
			),
			fc
				.tuple(
					fc.constantFrom("kty", "crv", "alg", "x", "y"),
					fc.jsonValue({ maxDepth: 1 }),
				)
				.map(([k, v]) => ({ ...ec, [k]: v })),
			fc
				.tuple(
					fc.constantFrom("kty", "alg", "n", "e"),
					fc.jsonValue({ maxDepth: 1 }),
				)
				.map(([k, v]) => ({ ...rsa, [k]: v })),
			fc
				.tuple(
					fc.uint8Array({ minLength: 32, maxLength: 32 }),
					fc.uint8Array({ minLength: 32, maxLength: 32 }),
				)
				.map(([x, y]) => ({
					...ec,
					x: b64u(Buffer.from(x)),
					y: b64u(Buffer.from(y)),
				})),
			fc
				.integer({ min: 0, max: 100 })
				.filter((len) => len !== 32)
				.map((len) => ({ ...ec, y: b64u(randomBytes(len)) })),
			fc
				.tuple(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 1 }))
				.filter(([k]) => !["kty", "crv", "alg", "x", "y"].includes(k))
				.map(([k, v]) => ({ ...ec, [k]: v })),
		);
	}

	it("runtime-data.tee-pubkey: random objects, wrong kty/crv/alg, off-curve, short RSA, padding, huge → 400", async () => {
		await fc.assert(
			fc.asyncProperty(badJwks(), async (jwk) => {
				const { cookie, nonce } = await session();
				// the evidence binds exactly this key, so only the key check can refuse
				const r = await call(
					"POST",
					"/kbs/v0/attest",
					{ ...JSON_CT, cookie },
					JSON.stringify(attestBody(nonce, jwk)),
				);
				expect(r.status, JSON.stringify(jwk)?.slice(0, 200)).toBe(400);
				expect(title(r)).toBe("InvalidRequest");
			}),
			{ numRuns: 250 },
		);
		// and the same body with a good key goes through (the refusals above were the key's)
		for (const key of [EC, RSA]) {
			const { cookie, nonce } = await session();
			const r = await call(
				"POST",
				"/kbs/v0/attest",
				{ ...JSON_CT, cookie },
				JSON.stringify(attestBody(nonce, key.jwk)),
			);
			expect(r.status).toBe(200);
		}
		noInternalErrors();
	}, 60_000);
});

describe("content types", () => {
	const accepted = (ct: string | undefined) =>
		ct !== undefined &&
		ct.split(";")[0]?.trim().toLowerCase() === "application/json";

	it("application/json with parameters or in any case is accepted; anything else → 415", async () => {
		const named: [string | undefined, number][] = [
			["application/json; charset=utf-8", 200],
			["application/json;charset=UTF-8", 200],
			["APPLICATION/JSON", 200],
			["application/json", 200],
			[undefined, 415],
			["", 415],
			["text/plain", 415],
			["application/x-www-form-urlencoded", 415],
			["text/json", 415],
			["application/jsonx", 415],
			["application/problem+json", 415],
			["multipart/form-data; boundary=x", 415],
			["*/*", 415],
			["application/json,text/plain", 415],
		];
		for (const [ct, want] of named) {
			const r = await call(
				"POST",
				"/kbs/v0/auth",
				{ "content-type": ct },
				JSON.stringify(AUTH),
			);
			expect(r.status, String(ct)).toBe(want);
		}
		const form = await call(
			"POST",
			"/kbs/v0/auth",
			{ "content-type": "application/x-www-form-urlencoded" },
			"version=0.4.0&tee=sample&extra-params=",
		);
		expect(form.status).toBe(415);
		await fc.assert(
			fc.asyncProperty(
				fc.oneof(
					printable(40),
					printable(30).map((p) => `application/json;${p}`),
					printable(10).map((p) => `application/json${p}`),
					fc.constantFrom(...named.map(([ct]) => ct)),
				),
				async (ct) => {
					const r = await call(
						"POST",
						"/kbs/v0/auth",
						{ "content-type": ct },
						JSON.stringify(AUTH),
					);
					// the parser trims the header value: so does the expectation
					expect(r.status, String(ct)).toBe(accepted(ct?.trim()) ? 200 : 415);
				},
			),
			{ numRuns: RUNS },
		);
		noInternalErrors();
	}, 60_000);

	it("attest with a wrong content type → 415, and the nonce is not spent by it", async () => {
		const { cookie, nonce } = await session();
		const body = JSON.stringify(attestBody(nonce));
		for (const ct of [
			"text/plain",
			"application/x-www-form-urlencoded",
			undefined,
		]) {
			const r = await call(
				"POST",
				"/kbs/v0/attest",
				{ "content-type": ct, cookie },
				body,
			);
			expect(r.status).toBe(415);
		}
		const ok = await call(
			"POST",
			"/kbs/v0/attest",
			{ "content-type": "application/json; charset=utf-8", cookie },
			body,
		);
		expect(ok.status).toBe(200);
		noInternalErrors();
	}, 30_000);
});

describe("body sizes", () => {
	/** Writes `total` bytes of chunked body in `size`-byte chunks until the server answers. */
	const chunked =
		(head: Buffer, total: number, size: number, fill = 0x20) =>
		async (s: Socket, answered: () => boolean) => {
			s.write(head);
			const chunk = Buffer.concat([
				Buffer.from(`${size.toString(16)}\r\n`),
				Buffer.alloc(size, fill),
				Buffer.from("\r\n"),
			]);
			for (
				let sent = 0;
				sent < total && !answered() && !s.destroyed;
				sent += size
			) {
				if (!s.write(chunk))
					await new Promise((r) => {
						s.once("drain", r);
						s.once("close", r);
					});
			}
			if (!s.destroyed) s.write("0\r\n\r\n");
		};
	const padded = (n: number) => {
		const t = JSON.stringify(AUTH);
		return t + " ".repeat(n - t.length);
	};

	it("auth: 100 KiB with a Content-Length → 413", async () => {
		const o = await exchange({
			data: request("POST", "/kbs/v0/auth", JSON_CT, padded(100 << 10)),
		});
		const r = check(o, "100 KiB auth");
		expect(r.status).toBe(413);
	});

	it("attest: 2 MiB with a Content-Length → 413", async () => {
		const { cookie, nonce } = await session();
		const body = JSON.stringify({
			...attestBody(nonce),
			pad: "x".repeat(2 << 20),
		});
		const o = await exchange({
			data: request("POST", "/kbs/v0/attest", { ...JSON_CT, cookie }, body),
		});
		const r = check(o, "2 MiB attest");
		expect(r.status).toBe(413);
	});

	it("auth at the limit: 16 KiB → 200, one byte more → 413 (declared and chunked)", async () => {
		for (const [n, want] of [
			[16 << 10, 200],
			[(16 << 10) + 1, 413],
		] as const) {
			const declared = await call("POST", "/kbs/v0/auth", JSON_CT, padded(n));
			expect(declared.status, `${n} declared`).toBe(want);
			const head = request("POST", "/kbs/v0/auth", {
				...JSON_CT,
				"transfer-encoding": "chunked",
			});
			const body = Buffer.from(padded(n));
			const o = await exchange({
				send: (s) => {
					s.write(head);
					s.write(`${(n - 100).toString(16)}\r\n`);
					s.write(body.subarray(0, n - 100));
					s.write(`\r\n${(100).toString(16)}\r\n`);
					s.write(body.subarray(n - 100));
					s.write("\r\n0\r\n\r\n");
				},
			});
			expect(check(o, `${n} chunked`).status, `${n} chunked`).toBe(want);
		}
	});

	it("a chunked body that never declares its length but exceeds the limit → 413", async () => {
		const auth = await exchange({
			send: chunked(
				request("POST", "/kbs/v0/auth", {
					...JSON_CT,
					"transfer-encoding": "chunked",
				}),
				256 << 10,
				4096,
			),
		});
		expect(check(auth, "chunked auth").status).toBe(413);
		const { cookie } = await session();
		const attest = await exchange({
			send: chunked(
				request("POST", "/kbs/v0/attest", {
					...JSON_CT,
					cookie,
					"transfer-encoding": "chunked",
				}),
				8 << 20,
				64 << 10,
			),
			timeoutMs: 15_000,
		});
		expect(check(attest, "chunked attest").status).toBe(413);
		noInternalErrors();
	}, 30_000);
});

describe("resource paths", () => {
	const SAFE =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@";
	const segment = fc.oneof(
		fc.constantFrom(
			"",
			".",
			"..",
			"%2e",
			"%2e%2e",
			"%2E%2e",
			".%2e",
			"%2f",
			"%2F",
			"%",
			"%z",
			"%zz",
			"%00",
			"%ff",
			"%c3%28",
			"*",
			"default",
			"image-key",
			"app",
			"%61pp",
			"a".repeat(128),
			"a".repeat(129),
			"resource",
			"kbs",
			"v0",
			"auth",
		),
		fc.string({ unit: fc.constantFrom(...SAFE), maxLength: 20 }),
		fc.string({ maxLength: 12 }).map(encodeURIComponent),
		fc.integer({ min: 200, max: 2000 }).map((n) => "b".repeat(n)),
	);
	const query = fc.oneof(
		fc.constant(""),
		fc.constant("?"),
		fc.constant(`?image=${"i".repeat(513)}`),
		fc.constant(`?image=${"i".repeat(512)}`),
		fc.string({ maxLength: 20 }).map((s) => `?image=${encodeURIComponent(s)}`),
		fc
			.string({ unit: fc.constantFrom(...SAFE), maxLength: 20 })
			.map((s) => `?${s}`),
	);

	/** The documented answer, from the path as the server sees it (dot segments resolved). */
	function expected(target: string, attestedGuest: boolean): number[] {
		const one = expectedOne(target, attestedGuest);
		// percent-encoding that does not decode is refused (400) before the credentials are
		// looked at; a well-encoded but invalid path only after them (401 first)
		if (one === 401 && !decodes(new URL(target, "http://broker").pathname))
			return [400, 401];
		return [one];
	}
	function decodes(p: string): boolean {
		try {
			decodeURIComponent(p);
			return true;
		} catch {
			return false;
		}
	}
	function expectedOne(target: string, attestedGuest: boolean): number {
		const url = new URL(target, "http://broker");
		const p = url.pathname;
		if (p === "/kbs/v0/auth" || p === "/kbs/v0/attest") return 405;
		if (!p.startsWith("/kbs/v0/resource/")) return 404;
		if ((url.searchParams.get("image") ?? "").length > 512) return 400;
		if (!attestedGuest) return 401;
		let path: string;
		try {
			path = decodeURIComponent(p.slice("/kbs/v0/resource/".length));
		} catch {
			return 400;
		}
		const parts = path.split("/");
		if (
			parts.length !== 3 ||
			!parts.every(
				(s) => /^[A-Za-z0-9._-]{1,128}$/.test(s) && s !== "." && s !== "..",
			)
		)
			return 400;
		if (path === PATH) return 200;
		return parts[0] === "default" ? 404 : 403;
	}

	it("percent-encoding, '..', empty segments, 1–6 segments, long ones → 400/401/403/404 as documented", async () => {
		const seen = new Set<number>();
		await fc.assert(
			fc.asyncProperty(
				fc.oneof(
					fc.array(segment, { minLength: 0, maxLength: 6 }),
					// three well-formed segments: reaches the policy (403) and the store (404)
					fc.tuple(
						fc.constantFrom("default", "other", "Default", "default.", "x"),
						fc.stringMatching(/^[A-Za-z0-9._-]{1,12}$/),
						fc.stringMatching(/^[A-Za-z0-9._-]{1,12}$/),
					),
				),
				query,
				fc.boolean(),
				async (segments, q, withCookie) => {
					const target = `/kbs/v0/resource/${segments.join("/")}${q}`;
					const r = await call(
						"GET",
						target,
						withCookie ? { cookie: attested.cookie } : {},
					);
					const want = expected(target, withCookie);
					expect(want, target.slice(0, 200)).toContain(r.status);
					if (!want.includes(200))
						expect([400, 401, 403, 404, 405]).toContain(r.status);
					seen.add(r.status);
				},
			),
			{ numRuns: 300 },
		);
		// the generator reached every kind of answer
		for (const s of [400, 401, 403, 404]) expect(seen).toContain(s);
		noInternalErrors();
	}, 60_000);

	it("four segments, traversal and encoded slashes never reach another resource", async () => {
		const h = { cookie: attested.cookie };
		expect((await call("GET", `/kbs/v0/resource/${PATH}`, h)).status).toBe(200);
		for (const t of [
			`/kbs/v0/resource/${PATH}/x`,
			`/kbs/v0/resource/x/${PATH}`,
			"/kbs/v0/resource/default/image-key/..",
			"/kbs/v0/resource/default/../../x",
			"/kbs/v0/resource/default//app",
			"/kbs/v0/resource/default/image-key/%2e%2e",
			"/kbs/v0/resource/default%2fimage-key%2f..%2fapp",
			"/kbs/v0/resource/default/image-key/app%00",
			"/kbs/v0/resource/default/image-key/app%2f",
			`/kbs/v0/resource/default/image-key/${"a".repeat(4000)}`,
		]) {
			const r = await call("GET", t, h);
			expect([400, 403, 404], t).toContain(r.status);
		}
		noInternalErrors();
	});
});

describe("methods", () => {
	const methods = METHODS.filter((m) => m !== "CONNECT");
	const routes: [string, string | undefined][] = [
		["/kbs/v0/auth", "POST"],
		["/kbs/v0/attest", "POST"],
		[`/kbs/v0/resource/${PATH}`, "GET"],
		["/", undefined],
		["/kbs/v0", undefined],
		["/kbs/v0/", undefined],
		["/kbs/v0/resource", undefined],
		["/kbs/v0/auth/", undefined],
		["/kbs/v1/auth", undefined],
		["/admin/v0/resources", undefined],
		["*", undefined],
	];

	it("every method on every KBS route → 405 with Allow (or 404 off the routes)", async () => {
		for (const [route, allow] of routes)
			for (const m of methods) {
				const r = await call(m, route);
				if (allow === undefined) expect(r.status, `${m} ${route}`).toBe(404);
				else if (m === allow)
					// no credentials (an attest's session is checked first) / no body
					expect(r.status, `${m} ${route}`).toBe(
						m === "GET" || route === "/kbs/v0/attest" ? 401 : 415,
					);
				else {
					expect(r.status, `${m} ${route}`).toBe(405);
					expect(r.headers.allow).toBe(allow);
				}
			}
		noInternalErrors();
	}, 60_000);

	it("unknown method names → 400 from the parser, or 404/405", async () => {
		await fc.assert(
			fc.asyncProperty(
				fc
					.oneof(
						fc.stringMatching(/^[A-Z]{1,12}$/),
						fc.stringMatching(/^[a-z]{1,8}$/),
						fc.constantFrom("GETT", "get", "G", "PRI", "HTTP/1.1"),
					)
					.filter((m) => !METHODS.includes(m)),
				fc.constantFrom(...routes.map(([r]) => r)),
				async (m, route) => {
					const o = await exchange({ data: request(m, route) });
					noSecrets(o.raw, m);
					expect(o.response, `${m} ${route}`).toBeDefined();
					expect([400, 404, 405], `${m} ${route}`).toContain(
						o.response?.status,
					);
					if (o.response?.status !== 400 || o.response.headers["content-type"])
						check(o, `${m} ${route}`, m);
				},
			),
			{ numRuns: RUNS },
		);
		noInternalErrors();
	}, 60_000);

	it("admin listener: every method without the token → 401; with it, wrong methods → 405", async () => {
		const admin = [
			"/admin/v0/resources",
			"/admin/v0/policies",
			"/admin/v0/audit",
			`/admin/v0/resource/${PATH}`,
			"/admin/v0/nothing",
			"/",
		];
		for (const route of admin)
			for (const m of methods) {
				const r = await call(m, route, {}, undefined, adminPort);
				expect(r.status, `${m} ${route}`).toBe(401);
			}
		const auth = { authorization: `Bearer ${b.adminToken}` };
		for (const route of [
			"/admin/v0/resources",
			"/admin/v0/policies",
			"/admin/v0/audit",
		])
			for (const m of methods.filter((x) => x !== "GET")) {
				const r = await call(m, route, auth, undefined, adminPort);
				expect(r.status, `${m} ${route}`).toBe(405);
			}
		expect(
			(await call("GET", "/admin/v0/nothing", auth, undefined, adminPort))
				.status,
		).toBe(404);
		noInternalErrors();
	}, 60_000);
});

describe("cookies and Authorization headers", () => {
	const b64url = fc.string({
		unit: fc.constantFrom(
			..."ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
		),
		maxLength: 120,
	});
	const enc = (v: unknown) =>
		Buffer.from(JSON.stringify(v)).toString("base64url");
	function forgedTokens(): string[] {
		const [h, p, s] = attested.token.split(".") as [string, string, string];
		const header = JSON.parse(Buffer.from(h, "base64url").toString()) as Record<
			string,
			unknown
		>;
		const payload = JSON.parse(
			Buffer.from(p, "base64url").toString(),
		) as Record<string, unknown>;
		const later = enc({ ...payload, exp: (payload.exp as number) + 3600 });
		const mine = enc({
			...payload,
			"tee-pubkey": generateEphemeralKey("ec").jwk,
		});
		const hs = enc({ ...header, alg: "HS256" });
		const mac = (key: string | Buffer, input: string) =>
			createHmac("sha256", key).update(input).digest("base64url");
		return [
			`${enc({ alg: "none", typ: "JWT" })}.${p}.`,
			`${enc({ ...header, alg: "none" })}.${p}.`,
			`${enc({ ...header, alg: "none" })}.${p}`,
			`${hs}.${p}.${mac("secret", `${hs}.${p}`)}`,
			`${hs}.${p}.${mac(b.adminToken, `${hs}.${p}`)}`,
			`${h}.${later}.${s}`,
			`${h}.${mine}.${s}`,
			`${h}.${p}.${"A".repeat(86)}`,
			`${h}.${p}.${s.slice(0, -2)}${s.endsWith("AA") ? "BA" : "AA"}`,
			`${h}.${p}`,
			`${h}..${s}`,
			`${p}.${h}.${s}`,
			`${attested.token}.${s}`,
			`${h}.${p}.${s}`.replaceAll(".", ""),
		];
	}

	it("random and forged credentials on a resource → 401", async () => {
		const forged = forgedTokens();
		const real = attested.cookie.split("=")[1] as string;
		const cookieArb = fc.oneof(
			printable(80),
			b64url.map((v) => `kbs-session-id=${v}`),
			printable(40).map((v) => `kbs-session-id=${v}`),
			fc
				.nat({ max: real.length - 1 })
				.map(
					(i) =>
						`kbs-session-id=${real.slice(0, i)}${real[i] === "A" ? "B" : "A"}${real.slice(i + 1)}`,
				),
			fc.constantFrom(
				`kbs-session-id=${real}x`,
				`kbs-session-id=${real.slice(1)}`,
				`kbs-session-id=`,
				`KBS-SESSION-ID=${real}`,
				`kbs-session-id =${real.toLowerCase()}`,
				`x=1; ${"y".repeat(9000)}; kbs-session-id=${real}`,
			),
		);
		const authArb = fc.oneof(
			printable(80),
			b64url.map((v) => `Bearer ${v}`),
			fc.tuple(b64url, b64url, b64url).map((p) => `Bearer ${p.join(".")}`),
			fc.constantFrom(...forged).map((t) => `Bearer ${t}`),
			fc.constantFrom(...forged),
			fc.constantFrom(
				"Bearer",
				"Bearer ",
				"Bearer  x",
				"Basic dXNlcjpwYXNz",
				`bearer ${"x".repeat(6000)}`,
				`Token ${attested.token}`,
			),
		);
		await fc.assert(
			fc.asyncProperty(
				fc.option(cookieArb, { nil: undefined }),
				fc.option(authArb, { nil: undefined }),
				async (cookie, authorization) => {
					fc.pre(cookie !== undefined || authorization !== undefined);
					const r = await call("GET", `/kbs/v0/resource/${PATH}`, {
						cookie,
						authorization,
					});
					expect(
						r.status,
						`${cookie?.slice(0, 60)} | ${authorization?.slice(0, 60)}`,
					).toBe(401);
					expect(title(r)).toBe("UnAuthenticated");
					// the same credentials with the attested guest's real cookie: a bad token still loses
					if (authorization !== undefined && authorization.trim() !== "") {
						const both = await call("GET", `/kbs/v0/resource/${PATH}`, {
							cookie: attested.cookie,
							authorization,
						});
						expect(both.status).toBe(401);
					}
				},
			),
			{ numRuns: 200 },
		);
		for (const t of forged) {
			const r = await call("GET", `/kbs/v0/resource/${PATH}`, {
				authorization: `Bearer ${t}`,
			});
			expect(r.status, t.slice(0, 80)).toBe(401);
		}
		// the genuine credentials still work, so the 401s above were the credentials'
		expect(
			(
				await call("GET", `/kbs/v0/resource/${PATH}`, {
					cookie: attested.cookie,
				})
			).status,
		).toBe(200);
		expect(
			(
				await call("GET", `/kbs/v0/resource/${PATH}`, {
					authorization: `Bearer ${attested.token}`,
				})
			).status,
		).toBe(200);
		noInternalErrors();
	}, 60_000);

	it("attest with random cookies → 401 UnAuthenticated", async () => {
		const body = JSON.stringify(attestBody("bm9uY2U="));
		await fc.assert(
			fc.asyncProperty(
				fc.oneof(
					printable(60),
					b64url.map((v) => `kbs-session-id=${v}`),
				),
				async (cookie) => {
					const r = await call(
						"POST",
						"/kbs/v0/attest",
						{ ...JSON_CT, cookie },
						body,
					);
					expect(r.status).toBe(401);
					expect(title(r)).toBe("UnAuthenticated");
				},
			),
			{ numRuns: RUNS },
		);
		noInternalErrors();
	}, 60_000);

	it("headers beyond 16 KiB → 431 or the connection closed, and the broker carries on", async () => {
		const huge: [string, Buffer][] = [
			[
				"one 20 KiB header",
				request("GET", `/kbs/v0/resource/${PATH}`, {
					"x-pad": "p".repeat(20 << 10),
				}),
			],
			[
				"a 17 KiB cookie",
				request("GET", `/kbs/v0/resource/${PATH}`, {
					cookie: `kbs-session-id=${"c".repeat(17 << 10)}`,
				}),
			],
			[
				"a 64 KiB bearer",
				request("GET", `/kbs/v0/resource/${PATH}`, {
					authorization: `Bearer ${"t".repeat(64 << 10)}`,
				}),
			],
			[
				"200 headers of 100 bytes",
				request(
					"POST",
					"/kbs/v0/auth",
					Object.fromEntries(
						Array.from({ length: 200 }, (_, i) => [`x-h${i}`, "v".repeat(100)]),
					),
					JSON.stringify(AUTH),
				),
			],
			[
				"a 20 KiB request target",
				request("GET", `/kbs/v0/resource/${"s".repeat(20 << 10)}`),
			],
		];
		const answers: string[] = [];
		for (const [what, data] of huge) {
			const o = await exchange({ data });
			noSecrets(o.raw, what);
			const status = o.response?.status;
			answers.push(
				`${what}: ${status ?? `closed (${o.error ?? "no response"})`}`,
			);
			if (status !== undefined) expect(status, what).toBeLessThan(500);
		}
		const ok = await call(
			"POST",
			"/kbs/v0/auth",
			JSON_CT,
			JSON.stringify(AUTH),
		);
		expect(ok.status).toBe(200);
		expect(answers.filter((a) => !/: (431|closed)/.test(a))).toEqual([]);
	}, 30_000);
});

describe("raw TCP", () => {
	const versions = fc.constantFrom(
		"HTTP/1.1",
		"HTTP/1.0",
		"HTTP/2.0",
		"HTTP/9.9",
		"HTTX/1.1",
		"http/1.1",
		"",
		"HTTP/1.1 extra",
	);
	const targetChars = fc
		.string({ unit: "grapheme-ascii", maxLength: 40 })
		.map((s) => s.replace(/ /g, ""));

	it("garbage request lines and framing → 4xx or closed, never 5xx, never a hang", async () => {
		const garbage = fc.oneof(
			fc.uint8Array({ maxLength: 400 }).map((u) => Buffer.from(u)),
			fc.string({ unit: "binary", maxLength: 200 }).map((s) => Buffer.from(s)),
			fc
				.tuple(
					fc.constantFrom(...METHODS, "FOO", "get", ""),
					targetChars,
					versions,
				)
				// targets that a URL parser reads as "//host…": see the dedicated test below
				.filter(([, t]) => !/^[/\\]/.test(t))
				.map(([m, t, v]) =>
					Buffer.from(`${m} /${t} ${v}\r\nHost: x\r\n\r\n`, "latin1"),
				),
			fc.constantFrom(
				"POST /kbs/v0/auth HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
				"POST /kbs/v0/auth HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
				"POST /kbs/v0/auth HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
				"POST /kbs/v0/auth HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
				"POST /kbs/v0/auth HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
				"POST /kbs/v0/auth HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
				"POST /kbs/v0/auth HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n{}\r\n",
				"POST /kbs/v0/auth HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
				"GET /kbs/v0/resource/a/b/c HTTP/1.1\r\n\r\n",
				"GET /kbs/v0/resource/a/b/c HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
				"GET /kbs/v0/resource/a/b/c HTTP/1.1\r\nHost: x\r\n Folded: header\r\n\r\n",
				"GET /kbs/v0/resource/a/b/c HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
				"GET /kbs/v0/resource/a/b/c HTTP/1.1\nHost: x\n\n",
				"GET /kbs/v0/resource/a/b/c\r\n\r\n",
				"GET\r\n\r\n",
				"\r\n\r\n\r\n",
				"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n\r\n",
				"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
				"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
			),
		);
		await fc.assert(
			fc.asyncProperty(garbage, async (data) => {
				const o = await exchange({
					data: Buffer.concat([Buffer.from(data), Buffer.from("\r\n\r\n")]),
					end: true,
				});
				noSecrets(o.raw, "garbage");
				if (o.response) {
					expect(
						o.response.status,
						Buffer.from(data).toString("latin1").slice(0, 100),
					).toBeGreaterThanOrEqual(400);
					expect(
						o.response.status,
						Buffer.from(data).toString("latin1").slice(0, 100),
					).toBeLessThan(500);
				} else if (o.raw.length > 0) {
					// something came back that is not an HTTP response: it must not be a 5xx either
					expect(o.raw.toString("latin1")).not.toMatch(/^HTTP\/1\.[01] 5/);
				}
			}),
			{ numRuns: 300 },
		);
		noInternalErrors();
	}, 60_000);

	it("request targets that are not URLs (//[, //%, //x:99999/, http://[/) → 4xx, not 500", async () => {
		const answers: string[] = [];
		for (const t of [
			"//[",
			"//%",
			"//x:99999/kbs/v0/auth",
			"//a:b@[/",
			"http://[/",
			"//a%00b/kbs",
			"/\\[",
			"/\\x:0x/",
		]) {
			const o = await exchange({ data: request("GET", t) });
			noSecrets(o.raw, t);
			answers.push(`${t} → ${o.response?.status ?? "closed"}`);
			// the admin listener parses the target the same way (after the token check)
			const admin = await exchange({
				to: adminPort,
				data: request("GET", t, { authorization: `Bearer ${b.adminToken}` }),
			});
			answers.push(`admin ${t} → ${admin.response?.status ?? "closed"}`);
		}
		expect(answers.filter((a) => !/→ (4\d\d|closed)$/.test(a))).toEqual([]);
	});

	it("a client that disconnects in the middle of a body is not logged as an internal error", async () => {
		for (const route of ["/kbs/v0/auth", "/kbs/v0/attest"])
			await new Promise<void>((resolve) => {
				const s = connect(port, "127.0.0.1", () => {
					s.write(
						`POST ${route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"ver`,
					);
					setTimeout(() => s.destroy(), 50);
				});
				s.on("error", () => {});
				s.on("close", () => resolve());
			});
		await new Promise((r) => setTimeout(r, 100));
		// nothing went wrong in the broker: a client left
		expect(
			b.logs.slice(logMark).filter((l) => l.startsWith("internal error")),
		).toEqual([]);
	});

	it("a request that stalls half-way does not stop the broker serving others", async () => {
		const stalled: Socket[] = [];
		const open = (data: string) =>
			new Promise<Socket>((resolve, reject) => {
				const s = connect(port, "127.0.0.1", () => {
					s.write(data);
					resolve(s);
				});
				s.on("error", reject);
				stalled.push(s);
			});
		try {
			await open("GET /kbs/v0/res");
			await open(
				"POST /kbs/v0/auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Slow: aaaa",
			);
			await open(
				'POST /kbs/v0/auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"version"',
			);
			await open(
				'POST /kbs/v0/attest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{"init',
			);
			await new Promise((r) => setTimeout(r, 200));
			// meanwhile, a full exchange
			const g = await new ManualGuest(b.url).attested();
			const r = await g.resource(PATH);
			expect(r.status).toBe(200);
			const { plaintext } = await flattenedDecrypt(
				r.json() as Parameters<typeof flattenedDecrypt>[0],
				g.key.privateKey,
			);
			expect(Buffer.from(plaintext)).toEqual(SECRET);
			// the stalled connections got nothing and are still open (no crash, no early 5xx)
			for (const s of stalled) expect(s.destroyed).toBe(false);
		} finally {
			for (const s of stalled) s.destroy();
		}
		noInternalErrors();
	}, 30_000);

	it("many connections opened and dropped", async () => {
		const done: Promise<void>[] = [];
		for (let i = 0; i < 300; i++)
			done.push(
				new Promise<void>((resolve) => {
					const s = connect(port, "127.0.0.1");
					s.on("error", () => {});
					s.on("close", () => resolve());
					s.on("connect", () => {
						switch (i % 4) {
							case 0:
								s.destroy();
								break;
							case 1:
								s.write(
									"POST /kbs/v0/auth HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
								);
								setImmediate(() => s.resetAndDestroy());
								break;
							case 2:
								s.write(
									request(
										"POST",
										"/kbs/v0/auth",
										JSON_CT,
										JSON.stringify(AUTH),
									),
								);
								s.destroy();
								break;
							default:
								s.write(
									request("GET", `/kbs/v0/resource/${PATH}`, {
										cookie: attested.cookie,
									}),
								);
								setTimeout(() => s.resetAndDestroy(), i % 7);
						}
					});
				}),
			);
		await Promise.all(done);
		const r = await call("POST", "/kbs/v0/auth", JSON_CT, JSON.stringify(AUTH));
		expect(r.status).toBe(200);
		noInternalErrors();
	}, 30_000);
});

describe("afterwards", () => {
	it("the broker still completes a normal exchange, and nothing it said or logged holds key material", async () => {
		for (const kind of ["ec", "rsa"] as const) {
			const g = await new ManualGuest(b.url, kind).attested();
			const r = await g.resource(PATH);
			expect(r.status).toBe(200);
			const { plaintext } = await flattenedDecrypt(
				r.json() as Parameters<typeof flattenedDecrypt>[0],
				g.key.privateKey,
			);
			expect(Buffer.from(plaintext)).toEqual(SECRET);
			for (const t of [...g.bodies, ...attested.bodies])
				noSecrets(t, "guest response");
		}
		noSecrets(b.logs.join("\n"), "broker log");
		expect(checked).toBeGreaterThan(2000);
	}, 30_000);
});
