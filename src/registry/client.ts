/**
 * An OCI distribution client: one registry, any of its repositories. Every exchange goes through
 * `exchange()`: authorization (learned from the 401 challenge and retried once), bounded retries
 * with backoff on 429/5xx/broken connections, and the registry's error document turned into a
 * DadiError. Manifests are checked against their digests here; blob transfers live beside it
 * (blob-download.ts, blob-upload.ts).
 */
import { DadiError } from "../errors.js";
import { type Descriptor, DIGEST_RE, sha256Digest } from "../oci/digest.js";
import { apiHost } from "../oci/docker-reference.js";
import { MAX_JSON_BLOB } from "../oci/layout.js";
import {
	MT_DOCKER_MANIFEST,
	MT_DOCKER_MANIFEST_LIST,
	MT_OCI_INDEX,
	MT_OCI_MANIFEST,
} from "../oci/media-types.js";
import { RegistryAuth } from "./auth.js";
import type { Credentials } from "./credentials.js";
import {
	describe,
	discardBody,
	type HttpRequest,
	type HttpResponse,
	HttpTransport,
	header,
	readBody,
	type Timeouts,
} from "./http.js";
import {
	DEFAULT_RETRY,
	parseRetryAfter,
	type RetryPolicy,
	TransientError,
	withRetries,
} from "./retry.js";

export const MANIFEST_TYPES = [
	MT_OCI_MANIFEST,
	MT_OCI_INDEX,
	MT_DOCKER_MANIFEST,
	MT_DOCKER_MANIFEST_LIST,
];

export interface RegistryClientOptions {
	/** Speak plain HTTP (loopback or trusted test registries). */
	insecure?: boolean;
	/** Extra trusted CA certificates (PEM). */
	ca?: string[];
	credentials?: Credentials;
	timeouts?: Partial<Timeouts>;
	retry?: Partial<RetryPolicy>;
	connections?: number;
	/** Called after every exchange, for statistics. */
	onExchange?: (e: Exchange) => void;
	/** Called before each retry of a failed attempt. */
	onRetry?: (e: DadiError, delayMs: number) => void;
}

export interface Exchange {
	method: string;
	what: "manifest" | "blob" | "range" | "upload" | "tags" | "ping";
	status: number;
	/** Response body bytes received (for ranges and blobs). */
	bytes: number;
	ms: number;
	attempt: number;
}

export interface ExchangeSpec<T> {
	what: Exchange["what"];
	/** Token scopes, e.g. repository:NAME:pull. */
	scopes: string[];
	build: () => Promise<HttpRequest> | HttpRequest;
	/** Handles any answer but 401/403/429/5xx; must consume or destroy the body. */
	handle: (res: HttpResponse) => Promise<T>;
	/** One attempt only: transient errors go to the caller, which retries at a larger scale. */
	once?: boolean;
}

export class RegistryClient {
	readonly registry: string;
	readonly base: URL;
	readonly transport: HttpTransport;
	readonly auth: RegistryAuth;
	readonly retry: RetryPolicy;
	readonly onExchange?: (e: Exchange) => void;
	readonly onRetry?: (e: DadiError, delayMs: number) => void;

	constructor(registry: string, o: RegistryClientOptions = {}) {
		this.registry = registry;
		this.base = new URL(
			`${o.insecure ? "http" : "https"}://${apiHost(registry)}/v2/`,
		);
		this.transport = new HttpTransport({
			ca: o.ca,
			timeouts: o.timeouts,
			connections: o.connections,
		});
		this.auth = new RegistryAuth(
			this.transport,
			registry,
			o.credentials,
			Boolean(o.insecure),
		);
		this.retry = { ...DEFAULT_RETRY, ...o.retry };
		this.onExchange = o.onExchange;
		this.onRetry = o.onRetry;
	}

	url(path: string): URL {
		return new URL(path, this.base);
	}

	/** One logical request with authorization, retries and error mapping. */
	exchange<T>(spec: ExchangeSpec<T>): Promise<T> {
		const attemptOnce = async (attempt: number): Promise<T> => {
			let reauthorized = false;
			for (;;) {
				const req = await spec.build();
				const what = describe(req.method, req.url);
				const authorization = await this.auth.authorization(spec.scopes);
				req.headers = { ...req.headers };
				if (authorization) req.headers.authorization = authorization;
				const started = performance.now();
				const res = await this.transport.send(req);
				const report = (bytes: number) =>
					this.onExchange?.({
						method: req.method,
						what: spec.what,
						status: res.status,
						bytes,
						ms: performance.now() - started,
						attempt,
					});
				if (res.status === 401 && !reauthorized) {
					await res.body.dump().catch(() => {});
					await this.auth.challenged(res, spec.scopes, what);
					reauthorized = true;
					continue;
				}
				if (res.status === 401 || res.status === 403) {
					await res.body.dump().catch(() => {});
					report(0);
					throw this.auth.denied(what);
				}
				if (res.status === 429 || res.status >= 500) {
					await res.body.dump().catch(() => {});
					report(0);
					throw new TransientError(
						"NETWORK",
						`${what}: the registry answered ${res.status}`,
						parseRetryAfter(header(res, "retry-after")),
					);
				}
				const out = await spec.handle(res);
				report(Number(header(res, "content-length") ?? 0) || 0);
				return out;
			}
		};
		return spec.once
			? attemptOnce(0)
			: withRetries(
					this.retry,
					attemptOnce,
					(_a, e, delay) => this.onRetry?.(e, delay),
					// Small bounded exchanges (manifests, tag lists, pings) get one overall deadline
					// for all their attempts; blob transfers are bounded by progress instead.
					spec.what === "manifest" ||
						spec.what === "tags" ||
						spec.what === "ping"
						? this.transport.timeouts.requestMs
						: Number.POSITIVE_INFINITY,
				);
	}

	/** Fetches a manifest (or index) by tag or digest and checks it against its digest. */
	async getManifest(
		repo: string,
		reference: string,
		accept: string[] = MANIFEST_TYPES,
	): Promise<{ descriptor: Descriptor; bytes: Buffer }> {
		return this.exchange({
			what: "manifest",
			scopes: [pullScope(repo)],
			build: () => ({
				method: "GET",
				url: this.url(`${repo}/manifests/${reference}`),
				headers: { accept: accept.join(", ") },
			}),
			handle: async (res) => {
				const what = `${this.registry}/${repo}:${reference}`;
				if (res.status !== 200) throw await unexpected(res, `manifest ${what}`);
				const bytes = await readBody(res, MAX_JSON_BLOB, `manifest ${what}`);
				const digest = sha256Digest(bytes);
				if (DIGEST_RE.test(reference) && digest !== reference)
					throw new DadiError(
						"DIGEST_MISMATCH",
						`manifest ${what}: the registry sent bytes that do not hash to the digest asked for`,
					);
				const claimed = header(res, "docker-content-digest");
				if (claimed?.startsWith("sha256:") && claimed !== digest)
					throw new DadiError(
						"DIGEST_MISMATCH",
						`manifest ${what}: Docker-Content-Digest does not match the bytes received`,
					);
				const mediaType = manifestMediaType(res, bytes, what);
				return { descriptor: { mediaType, digest, size: bytes.length }, bytes };
			},
		});
	}

	/** Whether a manifest exists; its descriptor when the registry names its digest. */
	async headManifest(
		repo: string,
		reference: string,
	): Promise<Descriptor | undefined> {
		return this.exchange({
			what: "manifest",
			scopes: [pullScope(repo)],
			build: () => ({
				method: "HEAD",
				url: this.url(`${repo}/manifests/${reference}`),
				headers: { accept: MANIFEST_TYPES.join(", ") },
			}),
			handle: async (res) => {
				await res.body.dump().catch(() => {});
				if (res.status === 404) return undefined;
				if (res.status !== 200)
					throw await unexpected(res, `manifest ${repo}:${reference}`);
				const digest = header(res, "docker-content-digest");
				const size = Number(header(res, "content-length"));
				const mediaType = (header(res, "content-type") ?? "").split(";")[0];
				if (!digest || !DIGEST_RE.test(digest) || !Number.isSafeInteger(size))
					return (await this.getManifest(repo, reference)).descriptor;
				return { mediaType: mediaType ?? "", digest, size };
			},
		});
	}

	/** Uploads a manifest under a tag or its digest. */
	async putManifest(
		repo: string,
		reference: string,
		bytes: Buffer,
		mediaType: string,
	): Promise<void> {
		await this.exchange({
			what: "manifest",
			scopes: [pushScope(repo)],
			build: () => ({
				method: "PUT",
				url: this.url(`${repo}/manifests/${reference}`),
				headers: { "content-type": mediaType },
				body: bytes,
			}),
			handle: async (res) => {
				if (res.status !== 201 && res.status !== 200)
					throw await unexpected(res, `storing manifest ${repo}:${reference}`);
				await res.body.dump().catch(() => {});
				const claimed = header(res, "docker-content-digest");
				if (claimed?.startsWith("sha256:") && claimed !== sha256Digest(bytes))
					throw new DadiError(
						"REMOTE_PROTOCOL",
						`storing manifest ${repo}:${reference}: the registry stored it under another digest`,
					);
			},
		});
	}

	/** Whether the repository has the blob (HEAD). */
	async hasBlob(repo: string, desc: Descriptor): Promise<boolean> {
		return this.exchange({
			what: "blob",
			scopes: [pullScope(repo)],
			build: () => ({
				method: "HEAD",
				url: this.url(`${repo}/blobs/${desc.digest}`),
			}),
			handle: async (res) => {
				await res.body.dump().catch(() => {});
				if (res.status === 404) return false;
				if (res.status !== 200)
					throw await unexpected(res, `blob ${desc.digest}`);
				const size = Number(header(res, "content-length"));
				if (Number.isSafeInteger(size) && size !== desc.size)
					throw new DadiError(
						"REMOTE_PROTOCOL",
						`blob ${desc.digest} in ${repo}: the registry says ${size} bytes, the descriptor ${desc.size}`,
					);
				return true;
			},
		});
	}

	/** A whole small blob (config, manifest-sized), checked against its digest and size. */
	async readBlob(
		repo: string,
		desc: Descriptor,
		limit = MAX_JSON_BLOB,
	): Promise<Buffer> {
		if (desc.size > limit)
			throw new DadiError(
				"INPUT_INVALID",
				`blob ${desc.digest}: ${desc.size} bytes is more than the ${limit} allowed here`,
			);
		return this.exchange({
			what: "blob",
			scopes: [pullScope(repo)],
			build: () => ({
				method: "GET",
				url: this.url(`${repo}/blobs/${desc.digest}`),
			}),
			handle: async (res) => {
				const what = `blob ${desc.digest} in ${this.registry}/${repo}`;
				if (res.status !== 200) throw await unexpected(res, what);
				const bytes = await readBody(res, limit, what);
				if (bytes.length !== desc.size || sha256Digest(bytes) !== desc.digest)
					throw new DadiError(
						"DIGEST_MISMATCH",
						`${what}: the bytes received do not match the digest`,
					);
				return bytes;
			},
		});
	}

	/** Every tag of a repository, following the registry's pagination. */
	async listTags(repo: string): Promise<string[]> {
		const tags: string[] = [];
		let next: URL | undefined = this.url(`${repo}/tags/list?n=1000`);
		for (let page = 0; next && page < 10_000; page++) {
			const url: URL = next;
			const r = await this.exchange({
				what: "tags",
				scopes: [pullScope(repo)],
				build: () => ({ method: "GET", url }),
				handle: async (res) => {
					if (res.status !== 200)
						throw await unexpected(res, `tags of ${repo}`);
					const body = await readBody(res, MAX_JSON_BLOB, `tags of ${repo}`);
					return { body, link: header(res, "link") };
				},
			});
			let doc: { tags?: unknown };
			try {
				doc = JSON.parse(r.body.toString("utf8"));
			} catch {
				throw new DadiError(
					"REMOTE_PROTOCOL",
					`tags of ${repo}: the answer is not JSON`,
				);
			}
			if (doc.tags !== null && doc.tags !== undefined) {
				if (
					!Array.isArray(doc.tags) ||
					doc.tags.some((t) => typeof t !== "string")
				)
					throw new DadiError(
						"REMOTE_PROTOCOL",
						`tags of ${repo}: "tags" is not a list of strings`,
					);
				tags.push(...(doc.tags as string[]));
			}
			const m = r.link ? /<([^>]+)>\s*;\s*rel="?next"?/.exec(r.link) : null;
			next = m ? new URL(m[1] as string, url) : undefined;
		}
		return tags;
	}

	async close(): Promise<void> {
		await this.transport.close();
	}
}

export function pullScope(repo: string): string {
	return `repository:${repo}:pull`;
}

export function pushScope(repo: string): string {
	return `repository:${repo}:pull,push`;
}

function manifestMediaType(
	res: HttpResponse,
	bytes: Buffer,
	what: string,
): string {
	const fromHeader = (header(res, "content-type") ?? "").split(";")[0]?.trim();
	if (fromHeader && MANIFEST_TYPES.includes(fromHeader)) return fromHeader;
	try {
		const doc = JSON.parse(bytes.toString("utf8")) as { mediaType?: unknown };
		if (
			typeof doc.mediaType === "string" &&
			MANIFEST_TYPES.includes(doc.mediaType)
		)
			return doc.mediaType;
	} catch {
		throw new DadiError("REMOTE_PROTOCOL", `manifest ${what}: not valid JSON`);
	}
	throw new DadiError(
		"INPUT_INVALID",
		`manifest ${what}: media type ${fromHeader || "(none)"} is not an OCI or docker v2 manifest or index`,
	);
}

/**
 * The error for an answer the operation did not expect, with the registry's own error code and
 * message when it sent a distribution error document. 404s with *_UNKNOWN codes are
 * INPUT_NOT_FOUND.
 */
export async function unexpected(
	res: HttpResponse,
	what: string,
): Promise<DadiError> {
	let detail = "";
	let codes: string[] = [];
	try {
		const body = await readBody(res, 64 << 10, what);
		const doc = JSON.parse(body.toString("utf8")) as {
			errors?: { code?: unknown; message?: unknown }[];
		};
		if (Array.isArray(doc.errors)) {
			codes = doc.errors.map((e) => String(e.code ?? "")).filter(Boolean);
			detail = doc.errors
				.map((e) => `${String(e.code ?? "")}: ${String(e.message ?? "")}`)
				.join("; ")
				.replace(/[^\x20-\x7e]/g, "?")
				.slice(0, 300);
		}
	} catch {
		discardBody(res);
	}
	const suffix = detail ? ` (${detail})` : "";
	if (res.status === 404 || codes.some((c) => c.endsWith("_UNKNOWN")))
		return new DadiError(
			"INPUT_NOT_FOUND",
			`${what}: not found in the registry${suffix}`,
		);
	return new DadiError(
		"REMOTE_PROTOCOL",
		`${what}: the registry answered ${res.status}${suffix}`,
	);
}
