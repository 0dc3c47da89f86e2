/**
 * The guest's KBS client: auth → attest → resource with an ephemeral key pair made for this one
 * exchange; the released resource is decrypted in memory and returned, never written anywhere.
 * Broker answers map to stable codes: 401 SESSION_INVALID / EVIDENCE_INVALID, 403 POLICY_DENIED,
 * 404 INPUT_NOT_FOUND, 400/other REMOTE_PROTOCOL, unreachable or overloaded NETWORK.
 */
import type { Attester } from "../attest/attester.js";
import { DadiError, type ErrorCode } from "../errors.js";
import { parseResourcePath } from "../policy/resource-pattern.js";
import { type HttpResponse, readBody } from "../registry/http.js";
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
	/** Tries for 429/503 answers and refused connections. */
	retries?: number;
}

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
	const endpoint = (p: string) =>
		new URL(`${base.pathname.replace(/\/$/, "")}${p}`, base);
	let cookie = "";
	const exchange = async (
		method: "GET" | "POST",
		p: string,
		body?: unknown,
	): Promise<unknown> => {
		const tries = Math.max(1, (o.retries ?? 3) + 1);
		for (let attempt = 1; ; attempt++) {
			let res: HttpResponse;
			try {
				res = await transport.send({
					method,
					url: endpoint(p),
					headers: {
						accept: "application/json",
						...(body !== undefined
							? { "content-type": "application/json" }
							: {}),
						...(cookie ? { cookie } : {}),
					},
					body:
						body !== undefined ? Buffer.from(JSON.stringify(body)) : undefined,
					followRedirects: false,
				});
			} catch (e) {
				// A broker that is still starting: retry a refused connection, nothing else.
				const cause = (e as { cause?: { code?: string } }).cause;
				if (attempt < tries && cause?.code === "ECONNREFUSED") {
					await sleep(200 * attempt);
					continue;
				}
				throw e;
			}
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
			if ((res.status === 429 || res.status === 503) && attempt < tries) {
				const after = Number(res.headers["retry-after"]);
				await sleep(
					Math.min(10, Number.isFinite(after) && after > 0 ? after : attempt) *
						1000,
				);
				continue;
			}
			throw brokerError(base.origin, p, res.status, text);
		}
	};
	try {
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
		const query = wanted.image
			? `?image=${encodeURIComponent(wanted.image)}`
			: "";
		const jwe = parseFlattenedJwe(
			await exchange("GET", `/kbs/v0/resource/${path}${query}`),
			"the key broker's response",
		);
		const value = await decryptFromBroker(jwe, privateKey);
		return { value, token: attested.token, tee: o.attester.tee, hash };
	} finally {
		await transport.close();
	}
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
): DadiError {
	let detail = "";
	let type = "";
	try {
		const j = JSON.parse(text) as { detail?: unknown; type?: unknown };
		if (typeof j.detail === "string") detail = j.detail.slice(0, 500);
		if (typeof j.type === "string") type = j.type.slice(0, 200);
	} catch {
		// not a problem document
	}
	const code: ErrorCode =
		status === 401
			? type.endsWith("/AttestationFailed")
				? "EVIDENCE_INVALID"
				: "SESSION_INVALID"
			: status === 403
				? "POLICY_DENIED"
				: status === 404
					? "INPUT_NOT_FOUND"
					: status === 429 || status === 503
						? "NETWORK"
						: "REMOTE_PROTOCOL";
	const what = p.startsWith("/kbs/v0/resource/")
		? `resource ${p.slice(17).split("?")[0]}`
		: p;
	return new DadiError(
		code,
		`key broker ${origin} refused ${what} (${status}): ${detail || "no detail"}`,
	);
}

function sleep(ms: number): Promise<void> {
	return new Promise((r) => setTimeout(r, ms));
}
