/**
 * A fault-injecting HTTP reverse proxy on 127.0.0.1 in front of a (plain HTTP) registry. The client
 * under test talks to the proxy as if it were the registry: method, path and headers (Host too, so
 * the registry's absolute Location headers point back at the proxy) are forwarded unchanged and bodies
 * are streamed both ways. A rule decides per request whether to inject a fault.
 */
import http from "node:http";
import { listenOnLoopback } from "./listen.js";

export type Fault =
	/** answer this status without forwarding (e.g. 500, 503, 429 with Retry-After "1") */
	| { kind: "status"; status: number; retryAfter?: string; body?: string }
	/** forward, send the headers and about half the body, then destroy the socket */
	| { kind: "drop-mid-body" }
	/** destroy the client socket without answering */
	| { kind: "drop-before-headers" }
	/** wait before forwarding (slow response) */
	| { kind: "delay"; ms: number }
	/** hold the request (body unread) until `until` settles, then forward it */
	| { kind: "hold"; until: Promise<unknown> }
	/** forward the response body slowly */
	| { kind: "trickle"; bytesPerSecond: number }
	/** forward the headers, then one body byte every `everyMs` (a drip that defeats idle timeouts) */
	| { kind: "drip"; everyMs: number }
	/** never answer (client timeouts) */
	| { kind: "stall" }
	/** forward, but rewrite Content-Range "bytes a-b/t" to "bytes (a+1)-(b+1)/t" (same length) */
	| { kind: "wrong-content-range" }
	/** forward the headers and about half the body, then send nothing more (the socket stays open) */
	| { kind: "stall-mid-body" }
	/** forward the headers unchanged (upstream Content-Length), then send fewer bytes and end the socket */
	| { kind: "short-body" }
	/** forward with one response body byte XOR 0xff (at = index into the body, default the middle) */
	| { kind: "flip-byte"; at?: number }
	/** forward without the Range (and If-Range) header, so the answer is 200 with the whole body */
	| { kind: "ignore-range" };

export interface ProxiedRequest {
	method: string;
	url: string;
	headers: Record<string, string | string[] | undefined>;
	/** counts requests from 0 */
	n: number;
	/** the fault injected into this request, if any */
	fault?: Fault["kind"];
}

export type FaultRule = (req: ProxiedRequest) => Fault | undefined;

export interface FaultProxy {
	/** "127.0.0.1:PORT" */
	host: string;
	/** "http://127.0.0.1:PORT" */
	url: string;
	/** Decides per request; return undefined to forward untouched. */
	setRule(rule: FaultRule | undefined): void;
	/** every request the proxy received, in order */
	requests: ProxiedRequest[];
	/** Request body bytes received from clients and forwarded so far (uploads), all requests together. */
	readonly bodyBytesIn: number;
	/** Closes the server and destroys open sockets (stalled ones too). */
	close(): Promise<void>;
}

/**
 * A rule that injects `fault` into the first `times` (default 1) requests matching `match`, then
 * forwards everything untouched.
 */
export function faultOnce(
	match: (req: ProxiedRequest) => boolean,
	fault: Fault,
	times = 1,
): FaultRule {
	let left = times;
	return (req) => {
		if (left > 0 && match(req)) {
			left--;
			return fault;
		}
		return undefined;
	};
}

/** Matches blob GETs (optionally only ranged ones). */
export const isBlobGet =
	(ranged = false) =>
	(req: ProxiedRequest): boolean =>
		req.method === "GET" &&
		/\/blobs\/sha256:[0-9a-f]{64}$/.test(req.url.split("?")[0] as string) &&
		(!ranged || req.headers.range !== undefined);

const HOP_BY_HOP = new Set([
	"connection",
	"keep-alive",
	"proxy-connection",
	"transfer-encoding",
	"upgrade",
	"te",
	"trailer",
]);

function stripHopByHop(h: http.IncomingHttpHeaders): http.OutgoingHttpHeaders {
	const out: http.OutgoingHttpHeaders = {};
	for (const [k, v] of Object.entries(h))
		if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
	return out;
}

export async function startFaultProxy(upstream: {
	host: string;
}): Promise<FaultProxy> {
	const sep = upstream.host.lastIndexOf(":");
	const upHost = upstream.host.slice(0, sep);
	const upPort = Number(upstream.host.slice(sep + 1));
	const agent = new http.Agent({ keepAlive: true });
	const timers = new Set<NodeJS.Timeout>();
	let rule: FaultRule | undefined;
	let closed = false;
	let bodyBytesIn = 0;
	const requests: ProxiedRequest[] = [];

	const later = (ms: number): Promise<void> =>
		new Promise((resolve) => {
			const t = setTimeout(() => {
				timers.delete(t);
				resolve();
			}, ms);
			timers.add(t);
		});

	const handle = async (
		req: http.IncomingMessage,
		res: http.ServerResponse,
	): Promise<void> => {
		const pr: ProxiedRequest = {
			method: req.method ?? "GET",
			url: req.url ?? "/",
			headers: { ...req.headers },
			n: requests.length,
		};
		requests.push(pr);
		const fault = rule?.(pr);
		if (fault) pr.fault = fault.kind;

		switch (fault?.kind) {
			case "status": {
				req.resume();
				const body = fault.body ?? "";
				const headers: http.OutgoingHttpHeaders = {
					"Content-Type": "text/plain",
					"Content-Length": Buffer.byteLength(body),
				};
				if (fault.retryAfter !== undefined)
					headers["Retry-After"] = fault.retryAfter;
				res.writeHead(fault.status, headers).end(body);
				return;
			}
			case "drop-before-headers":
				req.socket.destroy();
				return;
			case "stall":
				req.resume(); // swallow the body, answer nothing; close() destroys the socket
				return;
			case "delay":
				await later(fault.ms);
				if (closed || req.socket.destroyed) return;
				break;
			case "hold":
				await fault.until;
				if (closed || req.socket.destroyed) return;
				break;
		}

		const headers = stripHopByHop(req.headers);
		if (fault?.kind === "ignore-range") {
			delete headers.range;
			delete headers["if-range"];
		}
		const up = http.request({
			host: upHost,
			port: upPort,
			method: req.method,
			path: req.url,
			headers,
			agent,
		});
		const abort = () => up.destroy();
		res.once("close", () => {
			if (!res.writableFinished) abort();
		});
		up.on("error", () => {
			if (!res.headersSent)
				res.writeHead(502, { "Content-Type": "text/plain" }).end("bad gateway");
			else res.destroy();
		});
		// Counted as the body is forwarded (a 'data' listener added with the pipe loses nothing).
		req.on("data", (c: Buffer) => {
			bodyBytesIn += c.length;
		});
		req.pipe(up);

		up.on("response", (ur) => {
			const status = ur.statusCode ?? 502;
			const out = stripHopByHop(ur.headers);
			const lenHeader = ur.headers["content-length"];
			const len = lenHeader === undefined ? undefined : Number(lenHeader);
			const noBody = req.method === "HEAD" || status === 204 || status === 304;

			if (fault?.kind === "wrong-content-range") {
				const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(
					String(ur.headers["content-range"] ?? ""),
				);
				if (m)
					out["content-range"] =
						`bytes ${Number(m[1]) + 1}-${Number(m[2]) + 1}/${m[3]}`;
			}

			if (
				noBody ||
				fault === undefined ||
				fault.kind === "delay" ||
				fault.kind === "hold" ||
				fault.kind === "ignore-range" ||
				fault.kind === "wrong-content-range"
			) {
				res.writeHead(status, ur.statusMessage, out);
				ur.pipe(res);
				return;
			}

			// The remaining faults change the body: collect it (test bodies are small), then misbehave.
			const chunks: Buffer[] = [];
			ur.on("data", (c: Buffer) => chunks.push(c));
			ur.on("error", () => res.destroy());
			ur.on("end", async () => {
				const body = Buffer.concat(chunks);
				if (closed) return;
				switch (fault.kind) {
					case "flip-byte": {
						const at = fault.at ?? body.length >> 1;
						if (at < body.length) body[at] = (body[at] as number) ^ 0xff;
						res.writeHead(status, ur.statusMessage, out).end(body);
						return;
					}
					case "drop-mid-body": {
						res.writeHead(status, ur.statusMessage, out);
						res.write(body.subarray(0, body.length >> 1), () => {
							setTimeout(() => res.socket?.destroy(), 20);
						});
						return;
					}
					case "stall-mid-body": {
						res.writeHead(status, ur.statusMessage, out);
						res.write(body.subarray(0, body.length >> 1));
						return; // close() destroys the socket
					}
					case "short-body": {
						// Keep Content-Length as upstream said; send 3/4 of the body (at least one byte
						// short), then end the connection cleanly (FIN, not RST).
						if (len === undefined) out["content-length"] = body.length;
						res.writeHead(status, ur.statusMessage, out);
						const n = Math.min(
							Math.max(body.length - 1, 0),
							Math.ceil((body.length * 3) / 4),
						);
						res.write(body.subarray(0, n), () => res.socket?.end());
						return;
					}
					case "drip": {
						res.writeHead(status, ur.statusMessage, out);
						for (let o = 0; o < body.length; o++) {
							if (closed || res.destroyed) return;
							res.write(body.subarray(o, o + 1));
							await later(fault.everyMs);
						}
						res.end();
						return;
					}
					case "trickle": {
						res.writeHead(status, ur.statusMessage, out);
						const tick = 50;
						const step = Math.max(
							1,
							Math.floor((fault.bytesPerSecond * tick) / 1000),
						);
						for (let o = 0; o < body.length; o += step) {
							if (closed || res.destroyed) return;
							res.write(body.subarray(o, o + step));
							if (o + step < body.length) await later(tick);
						}
						res.end();
						return;
					}
				}
			});
		});
	};

	const server = http.createServer((req, res) => {
		handle(req, res).catch(() => res.destroy());
	});
	const listening = await listenOnLoopback(server);
	const port = listening.port;

	let closing: Promise<void> | undefined;
	return {
		host: `127.0.0.1:${port}`,
		url: `http://127.0.0.1:${port}`,
		setRule(r) {
			rule = r;
		},
		requests,
		get bodyBytesIn() {
			return bodyBytesIn;
		},
		close() {
			closing ??= new Promise<void>((resolve) => {
				closed = true;
				for (const t of timers) clearTimeout(t);
				timers.clear();
				agent.destroy();
				void listening.close().then(resolve);
			});
			return closing;
		},
	};
}
