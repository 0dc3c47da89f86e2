/**
 * Registry authentication, learned from the registry's `WWW-Authenticate` challenge: none, HTTP
 * Basic with the user's credentials, or Bearer tokens from the token server the challenge names
 * (the distribution token protocol), cached per scope until shortly before they expire. Tokens and
 * passwords never appear in messages.
 */
import { DadiError } from "../errors.js";
import { parseWwwAuthenticate } from "./challenge.js";
import type { Credentials } from "./credentials.js";
import {
	describe,
	type HttpResponse,
	type HttpTransport,
	header,
	readBody,
} from "./http.js";
import { DEFAULT_RETRY, TransientError, withRetries } from "./retry.js";

/** Tokens are renewed this long before they expire. */
const EXPIRY_MARGIN_MS = 10_000;
/** The distribution spec's default token lifetime. */
const DEFAULT_TOKEN_SECONDS = 60;
const MAX_TOKEN_RESPONSE = 1 << 20;

interface CachedToken {
	token: string;
	expiresAt: number;
}

export class RegistryAuth {
	#scheme: "unknown" | "none" | "basic" | "bearer" = "unknown";
	#realm?: URL;
	#service?: string;
	readonly #tokens = new Map<string, CachedToken>();
	readonly #pending = new Map<string, Promise<CachedToken>>();
	/** Token requests made (for stats and tests). */
	tokenRequests = 0;

	constructor(
		private readonly transport: HttpTransport,
		readonly registry: string,
		private readonly credentials: Credentials | undefined,
		/** Plain-HTTP realms other than loopback are allowed (--insecure). */
		private readonly insecure: boolean,
	) {}

	/** The Authorization header for a request needing `scopes`, when the scheme is known. */
	async authorization(scopes: string[]): Promise<string | undefined> {
		if (this.#scheme === "basic") return this.#basic();
		if (this.#scheme !== "bearer") return undefined;
		const key = scopes.join(" ");
		const t = this.#tokens.get(key);
		if (t && t.expiresAt > Date.now()) return `Bearer ${t.token}`;
		return `Bearer ${(await this.#fetchToken(scopes)).token}`;
	}

	/**
	 * Learns from a 401 answer. Returns normally when a retry with new authorization may succeed
	 * (the caller retries once); throws REMOTE_DENIED when it cannot.
	 */
	async challenged(
		res: HttpResponse,
		scopes: string[],
		what: string,
	): Promise<void> {
		const value = header(res, "www-authenticate");
		if (value === undefined)
			throw new DadiError(
				"REMOTE_DENIED",
				`${what}: the registry refused access (401) without saying how to authenticate`,
			);
		const challenges = parseWwwAuthenticate(value);
		const bearer = challenges.find((c) => c.scheme === "bearer");
		const basic = challenges.find((c) => c.scheme === "basic");
		if (bearer) {
			const realm = bearer.params.realm;
			if (!realm)
				throw new DadiError(
					"REMOTE_PROTOCOL",
					`${what}: a Bearer challenge without a realm`,
				);
			let url: URL;
			try {
				url = new URL(realm);
			} catch {
				throw new DadiError(
					"REMOTE_PROTOCOL",
					`${what}: the token realm is not a URL`,
				);
			}
			this.#scheme = "bearer";
			this.#realm = url;
			this.#service = bearer.params.service;
			this.#tokens.delete(scopes.join(" "));
			return;
		}
		if (basic) {
			if (!this.credentials) throw this.denied(what);
			this.#scheme = "basic";
			return;
		}
		throw new DadiError(
			"REMOTE_DENIED",
			`${what}: the registry asks for an authentication scheme this client does not speak (${challenges
				.map((c) => c.scheme)
				.join(", ")})`,
		);
	}

	/** Where the credentials came from ("--creds", a file), or undefined when anonymous. */
	get credentialSource(): string | undefined {
		return this.credentials?.source;
	}

	denied(what: string): DadiError {
		return new DadiError(
			"REMOTE_DENIED",
			this.credentials
				? `${what}: the registry refused the credentials from ${this.credentials.source}`
				: `${what}: the registry requires credentials; pass --creds USER:PASS or an --authfile`,
		);
	}

	#basic(): string {
		const c = this.credentials;
		if (!c)
			throw new DadiError(
				"INTERNAL",
				"basic authentication without credentials",
			);
		return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString("base64")}`;
	}

	#fetchToken(scopes: string[]): Promise<CachedToken> {
		const key = scopes.join(" ");
		const pending = this.#pending.get(key);
		if (pending) return pending;
		const p = withRetries(DEFAULT_RETRY, () => this.#requestToken(scopes))
			.then((t) => {
				this.#tokens.set(key, t);
				return t;
			})
			.finally(() => this.#pending.delete(key));
		this.#pending.set(key, p);
		return p;
	}

	async #requestToken(scopes: string[]): Promise<CachedToken> {
		const realm = this.#realm as URL;
		const url = new URL(realm);
		if (this.#service) url.searchParams.set("service", this.#service);
		for (const s of scopes) url.searchParams.append("scope", s);
		const what = `token request to ${url.origin}${url.pathname}`;
		const headers: Record<string, string> = {};
		if (this.credentials) {
			const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(
				url.hostname,
			);
			if (url.protocol !== "https:" && !loopback && !this.insecure)
				throw new DadiError(
					"REMOTE_DENIED",
					`${what}: refusing to send credentials to a plain-HTTP token server; pass --insecure if that is intended`,
				);
			headers.authorization = this.#basic();
		}
		this.tokenRequests++;
		const res = await this.transport.send({ method: "GET", url, headers });
		const body = await readBody(res, MAX_TOKEN_RESPONSE, what);
		if (res.status === 429 || res.status >= 500)
			throw new TransientError(
				"NETWORK",
				`${describe("GET", url)}: the token server answered ${res.status}`,
			);
		if (res.status === 401 || res.status === 403) throw this.denied(what);
		if (res.status !== 200)
			throw new DadiError(
				"REMOTE_PROTOCOL",
				`${what}: the token server answered ${res.status}`,
			);
		return parseTokenResponse(body, what);
	}
}

/** `{token | access_token, expires_in?, issued_at?}` from a token server. */
export function parseTokenResponse(body: Buffer, what: string): CachedToken {
	let v: unknown;
	try {
		v = JSON.parse(body.toString("utf8"));
	} catch {
		throw new DadiError("REMOTE_PROTOCOL", `${what}: the answer is not JSON`);
	}
	const o = (typeof v === "object" && v !== null ? v : {}) as Record<
		string,
		unknown
	>;
	const token = o.token ?? o.access_token;
	if (
		typeof token !== "string" ||
		token.length === 0 ||
		token.length > 65536 ||
		!/^[\x21-\x7e]+$/.test(token)
	)
		throw new DadiError(
			"REMOTE_PROTOCOL",
			`${what}: the answer has no usable token`,
		);
	const seconds =
		typeof o.expires_in === "number" &&
		Number.isFinite(o.expires_in) &&
		o.expires_in > 0
			? o.expires_in
			: DEFAULT_TOKEN_SECONDS;
	let issued = Date.now();
	if (typeof o.issued_at === "string") {
		const t = Date.parse(o.issued_at);
		// A token server's clock is trusted only to shorten a lifetime, not to extend it.
		if (!Number.isNaN(t) && t < issued) issued = t;
	}
	const ms = seconds * 1000;
	const life = ms - Math.min(EXPIRY_MARGIN_MS, ms / 4);
	return { token, expiresAt: issued + life };
}
