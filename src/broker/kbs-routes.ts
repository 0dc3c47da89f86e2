/**
 * The KBS listener's routes: /kbs/v0/auth, /kbs/v0/attest, /kbs/v0/resource/….
 *
 * Cheap checks come first: an attest's session cookie must name a session waiting for its attest
 * before a byte of the body is read (so bodies from clients without a session cost nothing), and
 * its body may be only as large as the session's TEE can need.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { TeeType } from "../attest/claims.js";
import { SESSION_COOKIE } from "../kbs/protocol.js";
import type { Broker } from "./broker.js";
import {
	bearer,
	cookie,
	HttpProblem,
	readJson,
	refuseDeclaredOver,
	requestUrl,
	requireJson,
	sendJson,
} from "./http.js";
import type { RequestContext } from "./listener.js";

export const AUTH_BODY_LIMIT = 16 << 10;
/** The largest attest body of any TEE. */
export const ATTEST_BODY_LIMIT = 1 << 20;
/**
 * The attest body a session's TEE can need: its evidence at the most its verifier accepts, plus
 * init-data (≤ 64 KiB), the tee-pubkey and the rest of the document.
 */
const ATTEST_LIMITS: Partial<Record<TeeType, number>> = {
	// evidence ≤ 4 KiB
	sample: 96 << 10,
	// report + VCEK/ASK/ARK (≤ 8 KiB each) + cert_table (≤ 64 KiB), base64
	snp: 256 << 10,
	// HCL report, VCEK and vTPM quote (evidence ≤ 256 KiB of text)
	azsnpvtpm: 384 << 10,
	// HCL report, TD quote (≤ 64 KiB) and vTPM quote
	aztdxvtpm: 384 << 10,
	// a quote (≤ 64 KiB) and a cc_eventlog, which can be large
	tdx: ATTEST_BODY_LIMIT,
};

export function attestBodyLimit(tee: TeeType): number {
	return ATTEST_LIMITS[tee] ?? ATTEST_BODY_LIMIT;
}

const RESOURCE_PREFIX = "/kbs/v0/resource/";

export async function kbsRoute(
	broker: Broker,
	req: IncomingMessage,
	res: ServerResponse,
	secureCookie: boolean,
	ctx: RequestContext,
): Promise<void> {
	const url = requestUrl(req);
	const client = ctx.client;
	const method = req.method ?? "GET";
	if (url.pathname === "/kbs/v0/auth") {
		if (method !== "POST") throw notAllowed("POST");
		const body = await readJson(req, AUTH_BODY_LIMIT, ctx.body());
		const r = broker.auth(client, body);
		const maxAge = Math.max(1, Math.floor((r.expiresMs - Date.now()) / 1000));
		sendJson(res, 200, r.body, {
			"set-cookie": `${SESSION_COOKIE}=${r.sessionId}; Path=/kbs/v0; Max-Age=${maxAge}; HttpOnly; SameSite=Strict${secureCookie ? "; Secure" : ""}`,
		});
		return;
	}
	if (url.pathname === "/kbs/v0/attest") {
		if (method !== "POST") throw notAllowed("POST");
		// who, what and how much, from the headers: nothing read or spent yet
		const session = broker.attestSession(cookie(req, SESSION_COOKIE));
		requireJson(req);
		const limit = attestBodyLimit(session.tee);
		refuseDeclaredOver(req, limit);
		broker.beginAttest(session);
		let body: unknown;
		try {
			body = await readJson(req, limit, ctx.body());
		} catch (e) {
			broker.abandonAttest(session);
			throw e;
		}
		const token = await broker.finishAttest(client, session, body);
		sendJson(res, 200, { token });
		return;
	}
	if (url.pathname.startsWith(RESOURCE_PREFIX)) {
		if (method !== "GET") throw notAllowed("GET");
		const token = bearer(req);
		if (token === "")
			throw new HttpProblem(
				401,
				"UnAuthenticated",
				"the Authorization header must be 'Bearer TOKEN'",
			);
		const image = url.searchParams.get("image") ?? "";
		if (image.length > 512)
			throw new HttpProblem(
				400,
				"InvalidRequest",
				"the image parameter is longer than 512 characters",
			);
		const jwe = await broker.resource({
			client,
			sessionId: cookie(req, SESSION_COOKIE),
			token,
			path: decodePath(url.pathname.slice(RESOURCE_PREFIX.length)),
			image,
		});
		sendJson(res, 200, jwe);
		return;
	}
	if (url.pathname.startsWith("/admin/"))
		throw new HttpProblem(
			404,
			"NotFound",
			"this is the broker's KBS endpoint, not its admin API: the admin API listens where 'dadi-broker serve --admin-listen' says",
		);
	throw new HttpProblem(
		404,
		"NotFound",
		`no such endpoint: ${method} ${url.pathname.slice(0, 200)}`,
	);
}

export function notAllowed(allow: string): HttpProblem {
	return new HttpProblem(
		405,
		"InvalidRequest",
		`method not allowed; use ${allow}`,
		{ allow },
	);
}

export function decodePath(p: string): string {
	try {
		return decodeURIComponent(p);
	} catch {
		throw new HttpProblem(
			400,
			"InvalidRequest",
			"the resource path is not valid percent-encoding",
		);
	}
}
