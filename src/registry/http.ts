/**
 * One HTTP exchange with a registry (or its token server, or the blob store it redirects to), over
 * undici: keep-alive connection pools, a custom CA, HTTP(S)_PROXY/NO_PROXY from the environment,
 * connect/headers/body timeouts and an overall deadline. Failures come out as DadiErrors, transient
 * ones (resets, timeouts) marked for retry. Redirects of GET and HEAD are followed here, dropping
 * the Authorization header when the redirect leaves the origin (blob storage must not see our
 * registry token).
 */
import type { IncomingHttpHeaders } from "node:http";
import type { Readable } from "node:stream";
import { rootCertificates } from "node:tls";
import { type Dispatcher, EnvHttpProxyAgent, request } from "undici";
import { DadiError } from "../errors.js";
import { DEFAULT_RATE_FLOOR, type RateFloor, RateWatch } from "./rate-watch.js";
import { TransientError } from "./retry.js";

export interface Timeouts {
	/** TCP + TLS connection set-up. */
	connectMs: number;
	/** From sending the request to the response headers. */
	headersMs: number;
	/** Longest silence while a body arrives. */
	bodyMs: number;
	/** Whole exchange, headers and body, for bounded requests (not whole-blob streams). */
	requestMs: number;
	/** The slowest a body may arrive (a drip is not progress). */
	rateFloor?: RateFloor;
}

export const DEFAULT_TIMEOUTS: Timeouts = {
	connectMs: 10_000,
	headersMs: 30_000,
	bodyMs: 30_000,
	requestMs: 120_000,
};

/** How failure messages name the peer and the flags that fix common mistakes. */
export interface ErrorHints {
	/** "registry", "key broker", … */
	peer: string;
	/** The option that adds a CA ("--ca-file"). */
	caFlag: string;
	/** The option for plain HTTP, if the peer is chosen by name rather than URL. */
	insecureFlag?: string;
}

export const REGISTRY_HINTS: ErrorHints = {
	peer: "registry",
	caFlag: "--ca-file",
	insecureFlag: "--insecure",
};

export interface TransportOptions {
	/** Wording of network errors (default: the registry's). */
	hints?: ErrorHints;
	/** PEM certificates trusted in addition to the system's (a registry's private CA). */
	ca?: string[];
	timeouts?: Partial<Timeouts>;
	/** Connections per origin. */
	connections?: number;
}

export type Method = "GET" | "HEAD" | "PUT" | "POST" | "PATCH" | "DELETE";

export interface HttpRequest {
	method: Method;
	url: URL;
	headers?: Record<string, string>;
	body?: Buffer | Readable;
	/** Apply the overall deadline (default true). Whole-blob streams pass false. */
	deadline?: boolean;
	/** Follow redirects (GET and HEAD only; default true). */
	followRedirects?: boolean;
	/** Aborts the exchange (a hedged twin answered first, or the caller gave up). */
	signal?: AbortSignal;
}

export interface HttpResponse {
	status: number;
	headers: IncomingHttpHeaders;
	/** Where the answer finally came from (after redirects). */
	url: URL;
	body: Dispatcher.ResponseData["body"];
	/** The transport's floor on body arrival rate (readers enforce it). */
	rateFloor?: RateFloor;
}

const MAX_REDIRECTS = 5;

export class HttpTransport {
	readonly timeouts: Timeouts;
	readonly hints: ErrorHints;
	readonly #dispatcher: Dispatcher;

	constructor(o: TransportOptions = {}) {
		this.timeouts = { ...DEFAULT_TIMEOUTS, ...o.timeouts };
		this.hints = o.hints ?? REGISTRY_HINTS;
		const ca = o.ca?.length ? o.ca : undefined;
		// A private CA adds to the system roots rather than replacing them.
		const tls = ca ? { ca: [...rootCertificates, ...ca] } : {};
		this.#dispatcher = new EnvHttpProxyAgent({
			// Plain-HTTP requests go to the proxy in absolute form rather than through a CONNECT
			// tunnel, so a caching proxy (Dragonfly's dfdaemon) can see and serve blob requests.
			proxyTunnel: false,
			connections: o.connections ?? 16,
			keepAliveTimeout: 30_000,
			connect: { timeout: this.timeouts.connectMs, ...tls },
			requestTls: { timeout: this.timeouts.connectMs, ...tls },
		});
	}

	/** One request, redirects followed; no retries (the caller decides). */
	async send(req: HttpRequest): Promise<HttpResponse> {
		let url = req.url;
		let headers = { ...req.headers };
		const deadline =
			req.deadline === false
				? undefined
				: AbortSignal.timeout(this.timeouts.requestMs);
		const signal =
			req.signal && deadline
				? AbortSignal.any([req.signal, deadline])
				: (req.signal ?? deadline);
		for (let hop = 0; ; hop++) {
			const res = await this.#once(req, url, headers, signal);
			const location = res.headers.location;
			const redirect =
				[301, 302, 303, 307, 308].includes(res.statusCode) &&
				(req.method === "GET" || req.method === "HEAD") &&
				req.followRedirects !== false &&
				typeof location === "string";
			if (!redirect)
				return {
					...res,
					status: res.statusCode,
					url,
					rateFloor: this.timeouts.rateFloor ?? DEFAULT_RATE_FLOOR,
				};
			await res.body.dump().catch(() => {});
			if (hop >= MAX_REDIRECTS)
				throw new DadiError(
					"REMOTE_PROTOCOL",
					`${describe(req.method, req.url)}: more than ${MAX_REDIRECTS} redirects`,
				);
			let next: URL;
			try {
				next = new URL(location as string, url);
			} catch {
				throw new DadiError(
					"REMOTE_PROTOCOL",
					`${describe(req.method, url)}: redirect to an invalid URL`,
				);
			}
			if (next.protocol !== "https:" && next.protocol !== "http:")
				throw new DadiError(
					"REMOTE_PROTOCOL",
					`${describe(req.method, url)}: redirect to a ${next.protocol} URL`,
				);
			if (url.protocol === "https:" && next.protocol === "http:")
				throw new DadiError(
					"REMOTE_PROTOCOL",
					`${describe(req.method, url)}: refusing a redirect from https to plain http`,
				);
			if (next.origin !== url.origin) {
				headers = { ...headers };
				delete headers.authorization;
			}
			url = next;
		}
	}

	async #once(
		req: HttpRequest,
		url: URL,
		headers: Record<string, string>,
		signal: AbortSignal | undefined,
	): Promise<Dispatcher.ResponseData> {
		try {
			return await request(url, {
				dispatcher: this.#dispatcher,
				method: req.method,
				headers,
				body: req.body,
				signal,
				headersTimeout: this.timeouts.headersMs,
				bodyTimeout: this.timeouts.bodyMs,
			});
		} catch (e) {
			throw networkError(e, describe(req.method, url), this.hints);
		}
	}

	async close(): Promise<void> {
		await this.#dispatcher.close().catch(() => {});
	}
}

export function describe(method: string, url: URL): string {
	return `${method} ${url.origin}${url.pathname}`;
}

const TLS_CODES = new Set([
	"DEPTH_ZERO_SELF_SIGNED_CERT",
	"SELF_SIGNED_CERT_IN_CHAIN",
	"UNABLE_TO_VERIFY_LEAF_SIGNATURE",
	"UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
	"CERT_HAS_EXPIRED",
	"ERR_TLS_CERT_ALTNAME_INVALID",
	"CERT_UNTRUSTED",
]);

/** Maps a failed exchange to a DadiError: transient unless retrying cannot help. */
export function networkError(
	e: unknown,
	what: string,
	hints: ErrorHints = REGISTRY_HINTS,
): DadiError {
	if (e instanceof DadiError) return e;
	const err = e as { code?: string; name?: string; message?: string };
	const code = err?.code ?? err?.name ?? "";
	if (TLS_CODES.has(code))
		return new DadiError(
			"NETWORK",
			`${what}: the server's TLS certificate is not trusted (${code}); pass the ${hints.peer}'s CA with ${hints.caFlag}`,
			{ cause: e },
		);
	if (
		code === "EPROTO" ||
		/wrong version number|packet length/i.test(err?.message ?? "")
	)
		return new DadiError(
			"NETWORK",
			`${what}: TLS handshake failed; if the ${hints.peer} speaks plain HTTP ${hints.insecureFlag ? `pass ${hints.insecureFlag}` : "use an http:// URL"}`,
			{ cause: e },
		);
	if (code === "ENOTFOUND" || code === "EAI_AGAIN")
		return new DadiError(
			"NETWORK",
			`${what}: host not found; check the ${hints.peer} name`,
			{ cause: e },
		);
	if (code === "TimeoutError" || code === "AbortError")
		return new TransientError(
			"NETWORK",
			`${what}: no complete answer within the request timeout`,
			undefined,
			{ cause: e },
		);
	const reason =
		code === "UND_ERR_HEADERS_TIMEOUT"
			? "no response headers within the timeout"
			: code === "UND_ERR_BODY_TIMEOUT"
				? "the response body stalled"
				: code === "UND_ERR_CONNECT_TIMEOUT"
					? "connecting timed out"
					: code === "ECONNREFUSED"
						? "connection refused"
						: code === "ECONNRESET" || code === "UND_ERR_SOCKET"
							? "the connection was closed mid-exchange"
							: code === "UND_ERR_RES_CONTENT_LENGTH_MISMATCH"
								? "the response body is shorter or longer than its Content-Length"
								: `${err?.message ?? String(e)}`;
	return new TransientError("NETWORK", `${what}: ${reason}`, undefined, {
		cause: e,
	});
}

/**
 * Reads a whole response body, at most `limit` bytes (REMOTE_PROTOCOL past it). A body that breaks
 * off is a transient NETWORK error.
 */
export async function readBody(
	res: HttpResponse,
	limit: number,
	what: string,
	hints: ErrorHints = REGISTRY_HINTS,
	/** Called with each piece's size as it arrives (progress for stall detection). */
	onPiece?: (n: number) => void,
): Promise<Buffer> {
	const declared = Number(res.headers["content-length"]);
	if (Number.isFinite(declared) && declared > limit) {
		discardBody(res);
		throw new DadiError(
			"REMOTE_PROTOCOL",
			`${what}: the answer is ${declared} bytes, more than the ${limit} allowed`,
		);
	}
	const parts: Buffer[] = [];
	let n = 0;
	const floor = enforceRateFloor(
		res,
		what,
		Number.isFinite(declared) ? declared : undefined,
	);
	try {
		for await (const chunk of res.body as AsyncIterable<Buffer>) {
			n += chunk.length;
			if (n > limit) {
				discardBody(res);
				throw new DadiError(
					"REMOTE_PROTOCOL",
					`${what}: the answer is more than the ${limit} bytes allowed`,
				);
			}
			parts.push(chunk);
			floor.add(chunk.length);
			onPiece?.(chunk.length);
		}
	} catch (e) {
		throw networkError(e, what, hints);
	} finally {
		floor.stop();
	}
	return Buffer.concat(parts, n);
}

/**
 * Ends a body that arrives slower than the response's rate floor with a transient NETWORK error
 * (the reader's loop sees it as the stream's error). The reader reports each piece it takes with
 * `add` and calls `stop` when done.
 */
export function enforceRateFloor(
	res: HttpResponse,
	what: string,
	expected?: number,
): { add: (n: number) => void; stop: () => void } {
	const floor = res.rateFloor ?? DEFAULT_RATE_FLOOR;
	const watch = new RateWatch(floor, performance.now(), expected);
	const timer = setInterval(
		() => {
			if (!watch.tooSlow(performance.now())) return;
			clearInterval(timer);
			res.body.destroy(
				new TransientError(
					"NETWORK",
					`${what}: the body arrives too slowly (less than ${floor.minBytes} bytes in ${floor.windowMs / 1000} s)`,
				),
			);
		},
		Math.max(50, floor.windowMs / 4),
	);
	timer.unref();
	return { add: (n) => watch.add(n), stop: () => clearInterval(timer) };
}

/**
 * Drops a response body we will not read. undici's body stream emits an 'error' (request
 * aborted) when destroyed; with no listener that would crash the process, so one is attached
 * first. Every early exit from a response goes through here.
 */
export function discardBody(res: {
	body: { on: (e: "error", f: () => void) => unknown; destroy: () => unknown };
}): void {
	res.body.on("error", () => {});
	res.body.destroy();
}

/** A header's single value (the first, when repeated). */
export function header(res: HttpResponse, name: string): string | undefined {
	const v = res.headers[name.toLowerCase()];
	return Array.isArray(v) ? v[0] : v;
}
