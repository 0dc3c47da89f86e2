/**
 * The admin listener's routes (bearer admin token required on every request):
 *   GET    /admin/v0/resources                   list (paths, sizes, times; never values)
 *   PUT    /admin/v0/resource/REPO/TYPE/TAG      store a resource (the body, ≤ 64 KiB)
 *   GET    /admin/v0/resource/REPO/TYPE/TAG      its metadata (never its value)
 *   DELETE /admin/v0/resource/REPO/TYPE/TAG
 *   GET    /admin/v0/policies | /admin/v0/policy/NAME
 *   PUT    /admin/v0/policy/NAME                 a policy document (JSON)
 *   DELETE /admin/v0/policy/NAME
 *   GET    /admin/v0/audit?since=&since-seq=&resource=&event=&decision=&limit=
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { resourcePathFromUrl } from "../kbs/protocol.js";
import type { Broker } from "./broker.js";
import { HttpProblem, readBody, requestUrl, sendJson } from "./http.js";
import { decodePath, notAllowed } from "./kbs-routes.js";
import type { RequestContext } from "./listener.js";
import type { PolicyStore } from "./policy-store.js";
import type { BrokerState } from "./state-dir.js";

export const RESOURCE_LIMIT = 64 << 10;
const POLICY_LIMIT = 256 << 10;

export interface AdminContext {
	broker: Broker;
	state: BrokerState;
	policies: PolicyStore;
	/** SHA-256 of the admin token. */
	tokenDigest: Buffer;
}

export function adminTokenDigest(token: string): Buffer {
	return createHash("sha256").update(token.trim()).digest();
}

/** "missing" when no bearer token was sent, "wrong" when one was and it does not match. */
function authorization(
	req: IncomingMessage,
	digest: Buffer,
): "ok" | "missing" | "wrong" {
	const m = /^Bearer (\S{1,512})$/.exec(req.headers.authorization ?? "");
	if (!m) return "missing";
	return timingSafeEqual(adminTokenDigest(m[1] as string), digest)
		? "ok"
		: "wrong";
}

export async function adminRoute(
	ctx: AdminContext,
	req: IncomingMessage,
	res: ServerResponse,
	rc: RequestContext,
): Promise<void> {
	const url = requestUrl(req);
	// A guest pointed at the admin port: say so (no secret in this, and no token needed to see it).
	if (url.pathname.startsWith("/kbs/"))
		throw new HttpProblem(
			404,
			"NotFound",
			"this is the dadi-broker admin API, not its KBS endpoint: point guests (--broker) at the broker's KBS listener (dadi-broker serve --listen)",
		);
	const auth = authorization(req, ctx.tokenDigest);
	if (auth !== "ok")
		throw new HttpProblem(
			401,
			"UnAuthenticated",
			auth === "missing"
				? "no admin token was sent: the admin API needs 'Authorization: Bearer ADMIN-TOKEN' (dadi-seal and dadi-broker: --admin-token-file / --broker-token-file, or $DADI_BROKER_ADMIN_TOKEN)"
				: "the admin token is wrong: it is not the one this broker was started with (dadi-broker serve --admin-token-file)",
			{
				"www-authenticate": 'Bearer realm="dadi-broker admin"',
			},
		);
	const method = req.method ?? "GET";
	const p = url.pathname;
	const client = rc.client;
	const note = (detail: string) =>
		ctx.broker.audit({ event: "admin", client, detail });
	if (p === "/admin/v0/resources") {
		if (method !== "GET") throw notAllowed("GET");
		sendJson(res, 200, { resources: await ctx.state.keystore.list() });
		return;
	}
	if (p.startsWith("/admin/v0/resource/")) {
		const path = resourcePathFromUrl(
			decodePath(p.slice("/admin/v0/resource/".length)),
		);
		if (method === "PUT") {
			const body = await readBody(req, RESOURCE_LIMIT, rc.body());
			if (body.length === 0)
				throw new HttpProblem(
					400,
					"InvalidRequest",
					"the resource body is empty",
				);
			const r = await ctx.state.keystore.put(path, body);
			await note(`put resource ${path}`);
			sendJson(res, r.created ? 201 : 200, {
				ok: true,
				resource: path,
				created: r.created,
				size: body.length,
			});
			return;
		}
		if (method === "GET") {
			const info = (await ctx.state.keystore.list()).find(
				(x) => x.path === path,
			);
			if (!info)
				throw new HttpProblem(
					404,
					"ResourceNotFound",
					`resource ${path} does not exist`,
				);
			sendJson(res, 200, info);
			return;
		}
		if (method === "DELETE") {
			const gone = await ctx.state.keystore.delete(path);
			if (!gone)
				throw new HttpProblem(
					404,
					"ResourceNotFound",
					`resource ${path} does not exist`,
				);
			await note(`delete resource ${path}`);
			sendJson(res, 200, { ok: true, resource: path, deleted: true });
			return;
		}
		throw notAllowed("GET, PUT, DELETE");
	}
	if (p === "/admin/v0/policies") {
		if (method !== "GET") throw notAllowed("GET");
		sendJson(res, 200, { policies: ctx.policies.list() });
		return;
	}
	if (p.startsWith("/admin/v0/policy/")) {
		const name = decodePath(p.slice("/admin/v0/policy/".length));
		if (!/^[a-z0-9][a-z0-9._-]{0,62}$/.test(name))
			throw new HttpProblem(
				400,
				"InvalidRequest",
				"a policy name is 1-63 of a-z 0-9 . _ - starting with a letter or digit",
			);
		if (method === "PUT") {
			const body = (await readBody(req, POLICY_LIMIT, rc.body())).toString(
				"utf8",
			);
			const r = await ctx.policies.put(name, body);
			ctx.broker.setPolicies(ctx.policies.all());
			await note(`put policy ${name}`);
			sendJson(res, r.created ? 201 : 200, {
				ok: true,
				policy: name,
				created: r.created,
			});
			return;
		}
		if (method === "GET") {
			const pol = ctx.policies.get(name);
			if (!pol)
				throw new HttpProblem(404, "NotFound", `policy ${name} does not exist`);
			sendJson(res, 200, {
				name: pol.name,
				description: pol.description,
				resources: pol.resources,
				rules: pol.rules.map((r) => ({ name: r.name, expr: r.expr })),
				digest: pol.digest,
			});
			return;
		}
		if (method === "DELETE") {
			if (!(await ctx.policies.delete(name)))
				throw new HttpProblem(404, "NotFound", `policy ${name} does not exist`);
			ctx.broker.setPolicies(ctx.policies.all());
			await note(`delete policy ${name}`);
			sendJson(res, 200, { ok: true, policy: name, deleted: true });
			return;
		}
		throw notAllowed("GET, PUT, DELETE");
	}
	if (p === "/admin/v0/audit") {
		if (method !== "GET") throw notAllowed("GET");
		const q = url.searchParams;
		const num = (k: string) => {
			const v = q.get(k);
			if (v === null) return undefined;
			if (!/^\d{1,9}$/.test(v))
				throw new HttpProblem(400, "InvalidRequest", `${k} must be a number`);
			return Number(v);
		};
		const records = await ctx.state.audit.query({
			sinceSeq: num("since-seq"),
			since: q.get("since") ?? undefined,
			resource: q.get("resource") ?? undefined,
			event: q.get("event") ?? undefined,
			decision: q.get("decision") ?? undefined,
			limit: num("limit"),
		});
		sendJson(res, 200, { records });
		return;
	}
	throw new HttpProblem(
		404,
		"NotFound",
		`no such endpoint: ${method} ${p.slice(0, 200)}`,
	);
}
