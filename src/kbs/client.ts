/**
 * The guest's KBS client: auth → attest → resource with an ephemeral key pair made for this one
 * exchange; the released resource is decrypted in memory and returned, never written anywhere.
 * Broker answers map to stable codes: 401 SESSION_INVALID / EVIDENCE_INVALID, 403 POLICY_DENIED,
 * 404 INPUT_NOT_FOUND, 400/other REMOTE_PROTOCOL, unreachable or overloaded NETWORK.
 */
import type { Attester } from "../attest/attester.js";
import { DadiError, type ErrorCode } from "../errors.js";
import { parseResourcePath } from "../policy/resource-pattern.js";
import { printable } from "../printable.js";
import { type HttpTransport, header, readBody } from "../registry/http.js";
import {
	backoffMs,
	isTransient,
	parseRetryAfter,
	type RetryPolicy,
	TransientError,
} from "../registry/retry.js";
import { BROKER_HINTS, openBrokerTransport } from "./broker-transport.js";
import { decryptFromBroker, parseFlattenedJwe } from "./jwe.js";
import {
	KBS_PROTOCOL_VERSION,
	SELECTED_HASH_KEY,
	SESSION_COOKIE,
	SUPPORTED_HASHES_KEY,
} from "./protocol.js";
import {
	type HashAlgorithm,
	parseHashAlgorithm,
	reportDataDigest,
} from "./report-data.js";
import { generateEphemeralKey } from "./tee-pubkey.js";

export interface KbsClientOptions {
	/** The broker's base URL (http[s]://HOST:PORT). */
	url: string;
	attester: Attester;
	/** PEM CA bundle for an https broker with a private CA. */
	caFile?: string;
	/** "ec" (ECDH-ES+A256KW, default) or "rsa" (RSA-OAEP-256). */
	keyKind?: "ec" | "rsa";
	timeoutMs?: number;
	/**
	 * How long to keep retrying a broker that cannot be reached or answers 429/5xx (default 30 s;
	 * 0: one attempt). A denial (400, 401, 403, 404) is never retried.
	 */
	retryForMs?: number;
	/** Told before each retry: what failed and how long until the next attempt. */
	onRetry?: (e: DadiError, delayMs: number) => void;
}

/** Backoff between attempts at the whole auth → attest → resource exchange. */
const BROKER_BACKOFF: RetryPolicy = {
	attempts: Number.MAX_SAFE_INTEGER,
	baseDelayMs: 250,
	maxDelayMs: 4000,
	maxRetryAfterMs: 10_000,
};
export const DEFAULT_BROKER_RETRY_MS = 30_000;

export interface Released {
	value: Buffer;
	/** The attestation token the broker issued (what it verified, signed). */
	token: string;
	tee: string;
	hash: HashAlgorithm;
}

export function parseBrokerUrl(text: string): URL {
	let u: URL;
	try {
		u = new URL(text);
	} catch {
		throw new DadiError(
			"USAGE",
			`--broker "${text}": not a URL; expected http[s]://HOST:PORT`,
		);
	}
	if (
		(u.protocol !== "http:" && u.protocol !== "https:") ||
		u.search ||
		u.hash ||
		u.username
	)
		throw new DadiError(
			"USAGE",
			`--broker "${text}": expected http[s]://HOST:PORT[/PREFIX]`,
		);
	return u;
}

/** kbs:///REPO/TYPE/TAG (or REPO/TYPE/TAG) → REPO/TYPE/TAG. */
export function resourcePathOf(ref: string): string {
	return parseResourcePath(
		ref.startsWith("kbs:///") ? ref.slice(7) : ref,
		"the resource",
	).path;
}

/**
 * auth → attest → resource, retried as a whole (a new session, nonce and ephemeral key each time:
 * a nonce is spent even when its attestation fails) while the broker is unreachable or answers
 * 429/5xx, with backoff, within `retryForMs`. Denials are final at once.
 */
export async function fetchResource(
	o: KbsClientOptions,
	resourceRef: string,
	wanted: { image?: string } = {},
): Promise<Released> {
	const base = parseBrokerUrl(o.url);
	const path = resourcePathOf(resourceRef);
	const transport = await openBrokerTransport({
		caFile: o.caFile,
		timeoutMs: o.timeoutMs,
	});
	const started = performance.now();
	const budget = o.retryForMs ?? DEFAULT_BROKER_RETRY_MS;
	try {
		for (let attempt = 0; ; attempt++) {
			try {
				return await exchangeOnce(o, base, path, wanted, transport);
			} catch (e) {
				if (!isTransient(e)) throw e;
				const delay = Math.min(
					e.retryAfterMs ?? backoffMs(BROKER_BACKOFF, attempt),
					BROKER_BACKOFF.maxRetryAfterMs,
				);
				const spent = performance.now() - started;
				if (spent + delay > budget)
					throw new DadiError(
						e.code,
						`${e.message} (gave up after ${attempt + 1} attempt${attempt === 0 ? "" : "s"} in ${(spent / 1000).toFixed(1)} s)`,
						{ cause: e },
					);
				o.onRetry?.(e, delay);
				await sleep(delay);
			}
		}
	} finally {
		await transport.close();
	}
}

async function exchangeOnce(
	o: KbsClientOptions,
	base: URL,
	path: string,
	wanted: { image?: string },
	transport: HttpTransport,
): Promise<Released> {
	return (await attestOnce(o, base, transport)).resource(path, wanted);
}

/** An attested session: its cookie fetches resources until the broker's session TTL. */
interface AttestedSession {
	attestedAt: number;
	resource(path: string, wanted: { image?: string }): Promise<Released>;
}

/** auth → attest, once (no retry): a session whose cookie fetches resources. */
async function attestOnce(
	o: KbsClientOptions,
	base: URL,
	transport: HttpTransport,
): Promise<AttestedSession> {
	const endpoint = (p: string) =>
		new URL(`${base.pathname.replace(/\/$/, "")}${p}`, base);
	let cookie = "";
	const exchange = async (
		method: "GET" | "POST",
		p: string,
		body?: unknown,
	): Promise<unknown> => {
		const res = await transport.send({
			method,
			url: endpoint(p),
			headers: {
				accept: "application/json",
				...(body !== undefined ? { "content-type": "application/json" } : {}),
				...(cookie ? { cookie } : {}),
			},
			body: body !== undefined ? Buffer.from(JSON.stringify(body)) : undefined,
			followRedirects: false,
		});
		const setCookie = res.headers["set-cookie"];
		for (const c of Array.isArray(setCookie)
			? setCookie
			: setCookie
				? [setCookie]
				: []) {
			const m = new RegExp(`^${SESSION_COOKIE}=([^;]*)`).exec(c);
			if (m) cookie = `${SESSION_COOKIE}=${m[1]}`;
		}
		const text = (
			await readBody(
				res,
				2 << 20,
				`key broker ${base.origin}: ${p}`,
				BROKER_HINTS,
			)
		).toString("utf8");
		if (res.status === 200) {
			try {
				return JSON.parse(text);
			} catch {
				throw new DadiError(
					"REMOTE_PROTOCOL",
					`key broker ${base.origin}: ${p} answered 200 with a body that is not JSON`,
				);
			}
		}
		if (
			res.status === 404 &&
			p === "/kbs/v0/auth" &&
			header(res, "docker-distribution-api-version") !== undefined
		)
			throw new DadiError(
				"USAGE",
				`--broker ${base.origin}: this is an OCI registry, not a key broker; give the key broker's KBS URL (dadi-broker serve --listen)`,
			);
		throw brokerError(
			base.origin,
			p,
			res.status,
			text,
			parseRetryAfter(header(res, "retry-after")),
		);
	};
	const { privateKey, jwk } = generateEphemeralKey(o.keyKind ?? "ec");
	const challenge = asObject(
		await exchange("POST", "/kbs/v0/auth", {
			version: KBS_PROTOCOL_VERSION,
			tee: o.attester.tee,
			"extra-params": {
				[SUPPORTED_HASHES_KEY]: ["sha384", "sha512", "sha256"],
			},
		}),
		"the challenge",
	);
	if (typeof challenge.nonce !== "string" || challenge.nonce.length > 512)
		throw new DadiError(
			"REMOTE_PROTOCOL",
			"key broker: the challenge has no nonce",
		);
	const extra = challenge["extra-params"];
	const selected =
		typeof extra === "object" && extra !== null
			? (extra as Record<string, unknown>)[SELECTED_HASH_KEY]
			: undefined;
	const hash: HashAlgorithm =
		typeof selected === "string"
			? parseHashAlgorithm(selected, "the broker's selected hash algorithm")
			: "sha384";
	const reportData = reportDataDigest({
		nonce: challenge.nonce,
		teePubKey: jwk,
		hash,
	});
	const evidence = await o.attester.evidence(reportData);
	const attested = asObject(
		await exchange("POST", "/kbs/v0/attest", {
			"init-data": null,
			"runtime-data": { nonce: challenge.nonce, "tee-pubkey": jwk },
			"tee-evidence": { primary_evidence: evidence, additional_evidence: "" },
		}),
		"the attestation response",
	);
	if (typeof attested.token !== "string")
		throw new DadiError(
			"REMOTE_PROTOCOL",
			"key broker: the attestation response has no token",
		);
	const token = attested.token;
	return {
		attestedAt: performance.now(),
		resource: async (path, wanted) => {
			const query = wanted.image
				? `?image=${encodeURIComponent(wanted.image)}`
				: "";
			const jwe = parseFlattenedJwe(
				await exchange("GET", `/kbs/v0/resource/${path}${query}`),
				"the key broker's response",
			);
			const value = await decryptFromBroker(jwe, privateKey);
			return { value, token, tee: o.attester.tee, hash };
		},
	};
}

/** How long an early session is used for its resource request; older, a new exchange is made. */
export const EARLY_SESSION_MS = 30_000;

/** A broker exchange begun before the resource is known (beginResource). */
export interface EarlyResource {
	/** The resource, over the early session when it is usable; otherwise a whole fetchResource. */
	resource(resourceRef: string, wanted?: { image?: string }): Promise<Released>;
	/** Drops the early session (when the resource will not be asked for); idempotent. */
	cancel(): void;
}

/**
 * Starts auth → attest at once, before the resource (which names the image) is known, so the
 * broker's round trips and the evidence overlap the registry's: only the resource request waits
 * for the image. Nothing is decided early: the policy is applied to the resource request, with
 * the image, as always. When the early attempt failed on the way (unreachable, overloaded), its
 * session expired or grew older than EARLY_SESSION_MS, the whole exchange is made again with
 * fetchResource's retries; a denial is final as always.
 */
export function beginResource(o: KbsClientOptions): EarlyResource {
	const base = parseBrokerUrl(o.url);
	const transport = openBrokerTransport({
		caFile: o.caFile,
		timeoutMs: o.timeoutMs,
	});
	const session = transport.then((t) => attestOnce(o, base, t));
	session.catch(() => {}); // met by resource(), or dropped by cancel()
	let closed = false;
	const close = async () => {
		if (closed) return;
		closed = true;
		const t = await transport.catch(() => undefined);
		await t?.close().catch(() => {});
	};
	return {
		resource: async (resourceRef, wanted = {}) => {
			const path = resourcePathOf(resourceRef);
			try {
				const s = await session;
				if (!closed && performance.now() - s.attestedAt < EARLY_SESSION_MS)
					return await s.resource(path, wanted);
			} catch (e) {
				const again =
					isTransient(e) ||
					(e instanceof DadiError && e.code === "SESSION_INVALID");
				if (!again) throw e;
			} finally {
				await close();
			}
			return fetchResource(o, resourceRef, wanted);
		},
		cancel: () => void close(),
	};
}

function asObject(v: unknown, what: string): Record<string, unknown> {
	if (typeof v !== "object" || v === null || Array.isArray(v))
		throw new DadiError(
			"REMOTE_PROTOCOL",
			`key broker: ${what} is not a JSON object`,
		);
	return v as Record<string, unknown>;
}

function brokerError(
	origin: string,
	p: string,
	status: number,
	text: string,
	retryAfterMs?: number,
): DadiError {
	let detail = "";
	let type = "";
	try {
		const j = JSON.parse(text) as { detail?: unknown; type?: unknown };
		if (typeof j.detail === "string")
			detail = printable(j.detail.slice(0, 500));
		if (typeof j.type === "string") type = j.type.slice(0, 200);
	} catch {
		// not a problem document
	}
	const what = p.startsWith("/kbs/v0/resource/")
		? `resource ${p.slice(17).split("?")[0]}`
		: p;
	const message = `key broker ${origin} refused ${what} (${status}): ${
		detail ||
		(status === 404 && p === "/kbs/v0/auth"
			? "no KBS endpoint here; is --broker the key broker's KBS listener (not its admin API, a registry or another service)?"
			: "no detail")
	}`;
	// Overloaded or failing: worth another attempt. Denials and bad requests are final.
	if (status === 429 || status >= 500)
		return new TransientError("NETWORK", message, retryAfterMs);
	const code: ErrorCode =
		status === 401
			? type.endsWith("/AttestationFailed")
				? "EVIDENCE_INVALID"
				: "SESSION_INVALID"
			: status === 403
				? "POLICY_DENIED"
				: status === 404
					? "INPUT_NOT_FOUND"
					: "REMOTE_PROTOCOL";
	return new DadiError(code, message);
}

function sleep(ms: number): Promise<void> {
	return new Promise((r) => setTimeout(r, ms));
}
