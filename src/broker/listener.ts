/**
 * One HTTP(S) listener of the broker (the KBS listener and the admin listener each have their own,
 * with their own limits) and its hygiene against abuse:
 *
 * - connections: bounded in total and per client key, the flooder giving up room first
 *   (connection-table.ts); refused connections are closed at once;
 * - timeouts tuned for KBS traffic (small requests from machines, not people): the headers within
 *   5 s of the connection (or of the previous answer), the whole request within 15 s, 5 s idle
 *   between requests; checked every second;
 * - every error answered at the connection level (malformed request, headers too large, timeout)
 *   is followed by closing the connection within a second, whatever the client does — a client
 *   that never closes its side cannot keep a half-open connection counted;
 * - a request rate per client key (rate-limit.ts), checked before anything else;
 * - memory for request bodies bounded per client key and in all (body-budget.ts).
 */
import {
	createServer as createHttp,
	type IncomingMessage,
	type Server,
	type ServerResponse,
} from "node:http";
import { createServer as createHttps } from "node:https";
import type { Socket } from "node:net";
import {
	BodyBudget,
	type BodyLimits,
	type BodyReservation,
} from "./body-budget.js";
import {
	clientKey,
	requestClient,
	type TrustedProxies,
} from "./client-address.js";
import {
	type Connection,
	type ConnectionLimits,
	ConnectionTable,
} from "./connection-table.js";
import { HttpProblem, PROBLEM_BASE, problemFor, sendProblem } from "./http.js";
import { RateLimiter, type RateLimits } from "./rate-limit.js";

export interface ListenerLimits {
	connections: ConnectionLimits;
	rate: RateLimits;
	bodies: BodyLimits;
}

export interface ListenerOptions {
	limits: ListenerLimits;
	tls?: { cert: Buffer; key: Buffer };
	/** Peers whose X-Forwarded-For names the client (client-address.ts). */
	trustedProxies?: TrustedProxies;
	/** Internal errors (5xx but 503) are logged with their stack. */
	log: (line: string) => void;
	/** Overrides of the timeouts, ms (tests). */
	timeouts?: Partial<Timeouts>;
}

export interface Timeouts {
	headersMs: number;
	requestMs: number;
	keepAliveMs: number;
	/** How often Node checks the header and request timeouts. */
	checkMs: number;
	/** How long a connection answered with a connection-level error may stay before it is closed. */
	lingerMs: number;
}

export const DEFAULT_TIMEOUTS: Timeouts = {
	headersMs: 5_000,
	requestMs: 15_000,
	keepAliveMs: 5_000,
	checkMs: 1_000,
	lingerMs: 1_000,
};

/** What a route knows about the request beyond the request itself. */
export interface RequestContext {
	/** The client's address (the TCP peer, or the forwarded client behind a trusted proxy). */
	client: string;
	/** The key its limits count under (client-address.ts). */
	key: string;
	/** A reservation in this listener's body memory for this request's body. */
	body(): BodyReservation;
}

export type Route = (
	req: IncomingMessage,
	res: ServerResponse,
	ctx: RequestContext,
) => Promise<void>;

export interface Listener {
	server: Server;
	/** Live counts, for tests and the bench. */
	stats(): { connections: number; bodyBytes: number };
}

export function createListener(o: ListenerOptions, route: Route): Listener {
	const t = { ...DEFAULT_TIMEOUTS, ...o.timeouts };
	const connections = new ConnectionTable(o.limits.connections);
	const limiter = new RateLimiter(o.limits.rate);
	const budget = new BodyBudget(o.limits.bodies);
	/** Connections by "address|port" (the same for a TLS socket and the TCP socket under it). */
	const byPeer = new Map<string, Connection>();
	const peerId = (s: Socket) => `${s.remoteAddress}|${s.remotePort}`;

	const handle = (req: IncomingMessage, res: ServerResponse): void => {
		const conn = byPeer.get(peerId(req.socket));
		if (conn) {
			conn.busy = true;
			res.once("close", () => {
				conn.busy = false;
			});
		}
		// A body nobody asked for is not drained for the next request: the connection goes.
		res.once("finish", () => {
			if (!req.complete) req.socket.destroySoon();
		});
		const peer = req.socket.remoteAddress ?? "unknown";
		const client = requestClient(
			peer,
			req.headers["x-forwarded-for"],
			o.trustedProxies,
		);
		const key = clientKey(client);
		const wait = limiter.take(key, Date.now());
		const go =
			wait > 0
				? Promise.reject(
						new HttpProblem(
							429,
							"TooManyRequests",
							`too many requests from this client; retry in ${wait} s`,
							{ "retry-after": String(wait) },
						),
					)
				: route(req, res, {
						client,
						key,
						body: () => budget.open(key, () => req.socket.destroy()),
					});
		go.catch((e) => {
			const p = problemFor(e);
			if (p.status >= 500 && p.status !== 503)
				o.log(
					`internal error on ${req.method} ${req.url?.slice(0, 200)}: ${(e as Error)?.stack ?? e}`,
				);
			sendProblem(res, p);
		});
	};

	const opts = {
		maxHeaderSize: 16 << 10,
		connectionsCheckingInterval: t.checkMs,
	};
	const server = o.tls
		? createHttps({ ...opts, cert: o.tls.cert, key: o.tls.key }, handle)
		: createHttp(opts, handle);
	server.headersTimeout = t.headersMs;
	server.requestTimeout = t.requestMs;
	server.keepAliveTimeout = t.keepAliveMs;

	// Admission runs before Node's own connection handling (and before any TLS handshake).
	server.prependListener("connection", (socket: Socket) => {
		const peer = socket.remoteAddress ?? "unknown";
		const admitted = connections.admit(
			clientKey(peer),
			() => socket.destroy(),
			o.trustedProxies?.has(peer) ?? false,
		);
		if (!admitted.ok) {
			socket.destroy();
			return;
		}
		const id = peerId(socket);
		byPeer.set(id, admitted.connection);
		socket.once("close", () => {
			connections.closed(admitted.connection);
			if (byPeer.get(id) === admitted.connection) byPeer.delete(id);
		});
	});

	server.on("clientError", (e: NodeJS.ErrnoException, socket: Socket) => {
		if (!socket.writable || e.code === "ECONNRESET") {
			socket.destroy();
			return;
		}
		const [status, text] =
			e.code === "HPE_HEADER_OVERFLOW"
				? [431, "Request Header Fields Too Large"]
				: e.code === "ERR_HTTP_REQUEST_TIMEOUT"
					? [408, "Request Timeout"]
					: [400, "Bad Request"];
		const body = JSON.stringify({
			type: `${PROBLEM_BASE}InvalidRequest`,
			title: "InvalidRequest",
			status,
			detail: text.toLowerCase(),
		});
		socket.end(
			`HTTP/1.1 ${status} ${text}\r\ncontent-type: application/problem+json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
		);
		// Whatever the client does next, the connection goes: no half-open socket stays counted.
		const timer = setTimeout(() => socket.destroy(), t.lingerMs);
		timer.unref();
		socket.once("close", () => clearTimeout(timer));
	});

	return {
		server,
		stats: () => ({ connections: connections.size, bodyBytes: budget.total }),
	};
}
