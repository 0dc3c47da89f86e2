/** The KBS listener's routes: /kbs/v0/auth, /kbs/v0/attest, /kbs/v0/resource/…. */
import type { IncomingMessage, ServerResponse } from "node:http";
import { SESSION_COOKIE } from "../kbs/protocol.js";
import type { Broker } from "./broker.js";
import {
	bearer,
	clientOf,
	cookie,
	HttpProblem,
	readJson,
	requestUrl,
	sendJson,
} from "./http.js";

export const AUTH_BODY_LIMIT = 16 << 10;
export const ATTEST_BODY_LIMIT = 1 << 20;
const RESOURCE_PREFIX = "/kbs/v0/resource/";

export async function kbsRoute(
	broker: Broker,
	req: IncomingMessage,
	res: ServerResponse,
	secureCookie: boolean,
): Promise<void> {
	const url = requestUrl(req);
	const client = clientOf(req);
	const method = req.method ?? "GET";
	if (url.pathname === "/kbs/v0/auth") {
		if (method !== "POST") throw notAllowed("POST");
		const body = await readJson(req, AUTH_BODY_LIMIT);
		const r = broker.auth(client, body);
		const maxAge = Math.max(1, Math.floor((r.expiresMs - Date.now()) / 1000));
		sendJson(res, 200, r.body, {
			"set-cookie": `${SESSION_COOKIE}=${r.sessionId}; Path=/kbs/v0; Max-Age=${maxAge}; HttpOnly; SameSite=Strict${secureCookie ? "; Secure" : ""}`,
		});
		return;
	}
	if (url.pathname === "/kbs/v0/attest") {
		if (method !== "POST") throw notAllowed("POST");
		const body = await readJson(req, ATTEST_BODY_LIMIT);
		const token = await broker.attest(
			client,
			cookie(req, SESSION_COOKIE),
			body,
		);
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
