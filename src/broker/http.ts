/**
 * HTTP plumbing shared by the KBS and admin listeners: bounded JSON bodies, RFC 7807 problem
 * responses, and the mapping from DadiError codes to statuses. Problem details name what was
 * wrong with the request and never carry key material.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { DadiError, type ErrorCode } from "../errors.js";
import type { BodyReservation } from "./body-budget.js";

export class HttpProblem extends Error {
	constructor(
		readonly status: number,
		readonly type: string,
		readonly detail: string,
		readonly headers: Record<string, string> = {},
	) {
		super(detail);
	}
}

/** Problem type names (Trustee's error names where one fits). */
export const PROBLEM_BASE =
	"https://github.com/confidential-containers/kbs/errors/";

const STATUS: Partial<Record<ErrorCode, [number, string]>> = {
	USAGE: [400, "InvalidRequest"],
	INPUT_INVALID: [400, "InvalidRequest"],
	FORMAT_INVALID: [400, "InvalidRequest"],
	FORMAT_UNSUPPORTED: [400, "ProtocolVersion"],
	POLICY_INVALID: [400, "PolicyInvalid"],
	SESSION_INVALID: [401, "UnAuthenticated"],
	EVIDENCE_INVALID: [401, "AttestationFailed"],
	EVIDENCE_UNSUPPORTED: [401, "AttestationFailed"],
	SIGNATURE_INVALID: [401, "AttestationFailed"],
	CHAIN_UNTRUSTED: [401, "AttestationFailed"],
	CERT_EXPIRED: [401, "AttestationFailed"],
	CERT_REVOKED: [401, "AttestationFailed"],
	TCB_MISMATCH: [401, "AttestationFailed"],
	EVENTLOG_MISMATCH: [401, "AttestationFailed"],
	POLICY_DENIED: [403, "PolicyDeny"],
	INPUT_NOT_FOUND: [404, "ResourceNotFound"],
	OUTPUT_EXISTS: [409, "Conflict"],
};

export function problemFor(e: unknown): HttpProblem {
	if (e instanceof HttpProblem) return e;
	if (e instanceof DadiError) {
		const s = STATUS[e.code];
		if (s) return new HttpProblem(s[0], s[1], e.message);
	}
	// Anything else is our fault; its text may name internals, so it stays in the log only.
	return new HttpProblem(500, "InternalError", "internal error");
}

export function sendJson(
	res: ServerResponse,
	status: number,
	body: unknown,
	headers: Record<string, string | string[]> = {},
	contentType = "application/json",
): void {
	const text = JSON.stringify(body);
	res.writeHead(status, {
		"content-type": contentType,
		"content-length": String(Buffer.byteLength(text)),
		"cache-control": "no-store",
		...headers,
	});
	res.end(text);
}

/**
 * An RFC 7807 answer. When the request's body has not been read (refused before it was), the
 * connection is closed after the answer rather than drained for the next request.
 */
export function sendProblem(res: ServerResponse, p: HttpProblem): void {
	if (res.headersSent || res.destroyed) {
		res.destroy();
		return;
	}
	const unread = res.req !== undefined && !res.req.complete;
	sendJson(
		res,
		p.status,
		{
			type: `${PROBLEM_BASE}${p.type}`,
			title: p.type,
			status: p.status,
			detail: p.detail,
		},
		unread ? { ...p.headers, connection: "close" } : p.headers,
		"application/problem+json",
	);
}

/**
 * 415 unless the request says its body is JSON: checked from the headers, before any of the body
 * is read.
 */
export function requireJson(req: IncomingMessage): void {
	const type = (req.headers["content-type"] ?? "")
		.split(";")[0]
		?.trim()
		.toLowerCase();
	if (type !== "application/json")
		throw new HttpProblem(
			415,
			"InvalidRequest",
			`the request body must be application/json (got "${String(type).slice(0, 64)}")`,
		);
}

/** 413 when the request declares a body longer than `limit` (before reading any of it). */
export function refuseDeclaredOver(req: IncomingMessage, limit: number): void {
	const declared = Number(req.headers["content-length"] ?? "0");
	if (declared > limit) throw tooLarge(limit);
}

/** Reads a JSON request body of at most `limit` bytes; 415/413/503/400 otherwise. */
export async function readJson(
	req: IncomingMessage,
	limit: number,
	budget?: BodyReservation,
): Promise<unknown> {
	try {
		requireJson(req);
	} catch (e) {
		budget?.release();
		throw e;
	}
	const raw = await readBody(req, limit, budget);
	try {
		return JSON.parse(raw.toString("utf8"));
	} catch {
		throw new HttpProblem(
			400,
			"InvalidRequest",
			"the request body is not valid JSON",
		);
	}
}

function tooLarge(limit: number): HttpProblem {
	return new HttpProblem(
		413,
		"InvalidRequest",
		`the request body is larger than ${limit} bytes`,
		{ connection: "close" },
	);
}

/**
 * Reads a request body of at most `limit` bytes: 413 when it declares or turns out to be longer;
 * 503 when `budget` (this client's share of the memory for bodies being received) cannot hold what
 * arrives. The budget is released when the body is read, refused or broken off.
 */
export function readBody(
	req: IncomingMessage,
	limit: number,
	budget?: BodyReservation,
): Promise<Buffer> {
	try {
		refuseDeclaredOver(req, limit);
	} catch (e) {
		budget?.release();
		return Promise.reject(e);
	}
	return new Promise((resolve, reject) => {
		const chunks: Buffer[] = [];
		let size = 0;
		let done = false;
		const finish = (e: HttpProblem | undefined) => {
			if (done) return;
			done = true;
			budget?.release();
			req.off("data", onData);
			if (e) {
				chunks.length = 0;
				reject(e);
			} else resolve(Buffer.concat(chunks, size));
		};
		const onData = (c: Buffer) => {
			if (done) return;
			size += c.length;
			if (size > limit) return finish(tooLarge(limit));
			if (budget && !budget.grow(c.length))
				return finish(
					new HttpProblem(
						503,
						"ServiceUnavailable",
						"the broker is receiving too much from this client at once; retry shortly",
						{ "retry-after": "1", connection: "close" },
					),
				);
			chunks.push(c);
		};
		req.on("data", onData);
		req.on("end", () => finish(undefined));
		// A client that goes away mid-body (or breaks chunked framing) is its problem, not ours.
		const broken = () =>
			finish(
				new HttpProblem(
					400,
					"InvalidRequest",
					"the request body was cut off or malformed",
					{ connection: "close" },
				),
			);
		req.on("error", broken);
		req.on("aborted", broken);
		req.on("close", () => {
			if (!req.complete) broken();
		});
	});
}

/** The request target as a URL; 400 for a target that is not one (e.g. "//[", "http://["). */
export function requestUrl(req: IncomingMessage): URL {
	const target = req.url ?? "/";
	if (target.startsWith("//"))
		throw new HttpProblem(
			400,
			"InvalidRequest",
			"the request target must be a path",
		);
	try {
		return new URL(target, "http://broker");
	} catch {
		throw new HttpProblem(
			400,
			"InvalidRequest",
			"the request target is not a valid path",
		);
	}
}

/** The value of one cookie, or undefined. */
export function cookie(req: IncomingMessage, name: string): string | undefined {
	const h = req.headers.cookie;
	if (!h || h.length > 8192) return undefined;
	for (const part of h.split(";")) {
		const eq = part.indexOf("=");
		if (eq > 0 && part.slice(0, eq).trim() === name)
			return part.slice(eq + 1).trim();
	}
	return undefined;
}

export function bearer(req: IncomingMessage): string | undefined {
	const h = req.headers.authorization;
	if (!h) return undefined;
	const m = /^Bearer ([A-Za-z0-9._~+/=-]+)$/i.exec(h);
	return m ? m[1] : "";
}
