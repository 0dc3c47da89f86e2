/**
 * `WWW-Authenticate` header values (RFC 9110 §11.6.1, §11.2), as registries send them:
 *
 *     Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"
 *     Basic realm="Registry Realm"
 *
 * One value may hold several challenges separated by commas; a challenge is a scheme followed by
 * either a token68 or comma-separated `name=value` parameters, a value being a token or a
 * quoted-string with backslash escapes. Schemes and parameter names are case-insensitive and are
 * returned lowercased. The parser is a single linear scan with a size cap, so a hostile registry
 * cannot make it slow; anything outside the grammar is a REMOTE_PROTOCOL error that names the
 * problem and its offset, quoting at most a short excerpt of the value.
 */
import { DadiError } from "../errors.js";

export interface Challenge {
	/** The authentication scheme, lowercased: `bearer`, `basic`, … */
	scheme: string;
	/** Parameters by lowercased name (a null-prototype object: no inherited names). */
	params: Record<string, string>;
	/** The token68 form (`Scheme abc123==`), instead of parameters. */
	token68?: string;
}

/** Header values longer than this are refused rather than parsed. */
export const MAX_WWW_AUTHENTICATE = 16 * 1024;

/** How much of the value an error message quotes. */
const EXCERPT = 100;

const TCHAR = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]$/;
const TOKEN_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const TOKEN68_RE = /^[A-Za-z0-9\-._~+/]+=*$/;

const isTchar = (c: string | undefined): boolean =>
	c !== undefined && TCHAR.test(c);
const isToken68Char = (c: string | undefined): boolean =>
	c !== undefined && /^[A-Za-z0-9\-._~+/]$/.test(c);
const isWs = (c: string | undefined): boolean => c === " " || c === "\t";

/** qdtext and the character after a backslash: HTAB, SP, VCHAR, obs-text (here: any code unit >= 0x80). */
function isQuotable(c: string): boolean {
	const u = c.charCodeAt(0);
	return u === 0x09 || (u >= 0x20 && u !== 0x7f);
}

/** Parses one `WWW-Authenticate` value into its challenges (an empty value gives none). */
export function parseWwwAuthenticate(
	value: string,
	what = "WWW-Authenticate header",
): Challenge[] {
	if (typeof value !== "string")
		throw new DadiError("REMOTE_PROTOCOL", `${what}: not a string`);
	if (value.length > MAX_WWW_AUTHENTICATE)
		throw new DadiError(
			"REMOTE_PROTOCOL",
			`${what}: ${value.length} characters, more than the ${MAX_WWW_AUTHENTICATE} this client accepts; the registry's authentication challenge cannot be used`,
		);
	return new Parser(value, what).challenges();
}

class Parser {
	#i = 0;

	constructor(
		private readonly s: string,
		private readonly what: string,
	) {}

	challenges(): Challenge[] {
		const out: Challenge[] = [];
		for (;;) {
			this.#skipSeparators();
			if (this.#i >= this.s.length) return out;
			out.push(this.#challenge());
			this.#skipWs();
			if (this.#i >= this.s.length) return out;
			if (this.s[this.#i] !== ",")
				throw this.#fail("expected a comma between challenges");
		}
	}

	/** A scheme, then a token68 or parameters; stops before the comma that ends it. */
	#challenge(): Challenge {
		const start = this.#i;
		const scheme = this.#token("an authentication scheme").toLowerCase();
		const params: Record<string, string> = Object.create(null);
		const c: Challenge = { scheme, params };
		const afterScheme = this.#i;
		this.#skipWs();
		if (this.#i >= this.s.length || this.s[this.#i] === ",") return c;
		if (this.s[this.#i] === "=") {
			this.#i = start;
			throw this.#fail("a parameter where an authentication scheme should be");
		}
		if (this.#i === afterScheme)
			throw this.#fail("expected a space after the authentication scheme");
		const t68 = this.#token68();
		if (t68 !== undefined) {
			c.token68 = t68;
			return c;
		}
		for (;;) {
			const nameAt = this.#i;
			const name = this.#token("a parameter name").toLowerCase();
			this.#skipWs();
			if (this.s[this.#i] !== "=")
				throw this.#fail(`expected "=" after parameter "${excerpt(name)}"`);
			this.#i++;
			this.#skipWs();
			const v =
				this.s[this.#i] === '"'
					? this.#quoted()
					: this.#token(`a value for parameter "${excerpt(name)}"`);
			if (Object.hasOwn(params, name)) {
				this.#i = nameAt;
				throw this.#fail(`parameter "${excerpt(name)}" given twice`);
			}
			params[name] = v;
			this.#skipWs();
			if (this.#i >= this.s.length) return c;
			if (this.s[this.#i] !== ",")
				throw this.#fail("expected a comma after a parameter");
			// After a comma: another parameter (token, optional spaces, "=") or the next challenge.
			const comma = this.#i;
			this.#skipSeparators();
			if (this.#i >= this.s.length || !this.#atParam()) {
				this.#i = comma;
				return c;
			}
		}
	}

	/** A token68 that makes up the rest of the challenge, or undefined (position unchanged). */
	#token68(): string | undefined {
		const start = this.#i;
		let j = start;
		while (isToken68Char(this.s[j])) j++;
		if (j === start) return undefined;
		while (this.s[j] === "=") j++;
		let k = j;
		while (isWs(this.s[k])) k++;
		if (k < this.s.length && this.s[k] !== ",") return undefined;
		this.#i = k;
		return this.s.slice(start, j);
	}

	/** Whether a parameter (`name =`) starts here; does not move. */
	#atParam(): boolean {
		let j = this.#i;
		while (isTchar(this.s[j])) j++;
		if (j === this.#i) return false;
		while (isWs(this.s[j])) j++;
		return this.s[j] === "=";
	}

	#token(what: string): string {
		const start = this.#i;
		while (isTchar(this.s[this.#i])) this.#i++;
		if (this.#i === start) throw this.#fail(`expected ${what}`);
		return this.s.slice(start, this.#i);
	}

	#quoted(): string {
		const open = this.#i;
		this.#i++;
		let out = "";
		let run = this.#i;
		for (;;) {
			const ch = this.s[this.#i];
			if (ch === undefined) {
				this.#i = open;
				throw this.#fail("a quoted string is not closed");
			}
			if (ch === '"') {
				out += this.s.slice(run, this.#i);
				this.#i++;
				return out;
			}
			if (ch === "\\") {
				out += this.s.slice(run, this.#i);
				const next = this.s[this.#i + 1];
				if (next === undefined || !isQuotable(next)) {
					this.#i++;
					throw this.#fail("a backslash escapes nothing valid");
				}
				out += next;
				this.#i += 2;
				run = this.#i;
				continue;
			}
			if (!isQuotable(ch))
				throw this.#fail("a control character inside a quoted string");
			this.#i++;
		}
	}

	#skipWs(): void {
		while (isWs(this.s[this.#i])) this.#i++;
	}

	/** Spaces and empty list elements (`, ,`), which the list syntax allows. */
	#skipSeparators(): void {
		while (isWs(this.s[this.#i]) || this.s[this.#i] === ",") this.#i++;
	}

	#fail(problem: string): DadiError {
		const at = this.#i;
		const near =
			at >= this.s.length
				? "at the end"
				: `at offset ${at} (near ${JSON.stringify(this.s.slice(at, at + EXCERPT))})`;
		return new DadiError(
			"REMOTE_PROTOCOL",
			`${this.what}: ${problem} ${near}; the registry's authentication challenge is malformed`,
		);
	}
}

function excerpt(s: string): string {
	return s.length > 40 ? `${s.slice(0, 40)}…` : s;
}

/**
 * Formats a challenge as a registry would send it, every parameter value quoted, so that
 * `parseWwwAuthenticate(formatChallenge(c))` gives back `c` when its scheme and names are
 * lowercase. A scheme, name, token68 or value outside the grammar is a USAGE error.
 */
export function formatChallenge(c: Challenge): string {
	if (!TOKEN_RE.test(c.scheme))
		throw new DadiError(
			"USAGE",
			`challenge scheme "${excerpt(c.scheme)}" is not a token`,
		);
	if (c.token68 !== undefined) {
		if (!TOKEN68_RE.test(c.token68))
			throw new DadiError("USAGE", "challenge token68 is not a token68");
		if (Object.keys(c.params).length > 0)
			throw new DadiError(
				"USAGE",
				"a challenge has either a token68 or parameters, not both",
			);
		return `${c.scheme} ${c.token68}`;
	}
	const parts: string[] = [];
	for (const [name, v] of Object.entries(c.params)) {
		if (!TOKEN_RE.test(name))
			throw new DadiError(
				"USAGE",
				`challenge parameter name "${excerpt(name)}" is not a token`,
			);
		let q = "";
		for (const ch of v) {
			if (!isQuotable(ch))
				throw new DadiError(
					"USAGE",
					`challenge parameter "${name}" holds a control character`,
				);
			q += ch === '"' || ch === "\\" ? `\\${ch}` : ch;
		}
		parts.push(`${name}="${q}"`);
	}
	return parts.length === 0 ? c.scheme : `${c.scheme} ${parts.join(",")}`;
}
