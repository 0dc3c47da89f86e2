/**
 * Registry credentials, found the way docker, podman and skopeo find them: `--creds USER:PASS`,
 * else an explicit auth file (`--authfile`, or `$REGISTRY_AUTH_FILE`), else the default files
 * `$XDG_RUNTIME_DIR/containers/auth.json`, `$XDG_CONFIG_HOME/containers/auth.json` (default
 * `~/.config/containers/auth.json`) and `$DOCKER_CONFIG/config.json` (default
 * `~/.docker/config.json`), in that order; the first file with usable credentials for the
 * registry wins. As with containers/image, an explicit file is the only one consulted, and it must
 * exist; missing default files are skipped.
 *
 * All these files share docker's format: `{"auths": {"HOST": {"auth": base64("USER:PASS")}}}`.
 * Keys may also be URLs (`https://HOST/v1/`); Docker Hub goes by several names. Credential
 * helpers (`credHelpers`, `credsStore`) and identity tokens are not supported: when they are all
 * there is for the registry, the error says so and what to do instead.
 *
 * No message here ever contains a password, an `auth` value or the text of an auth file.
 */
import { readFile, stat } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { DadiError, fromSystemError } from "../errors.js";

export interface Credentials {
	username: string;
	password: string;
	/** Where they came from, for messages: `--creds` or the auth file's path. */
	source: string;
}

export interface CredentialOptions {
	/** `USER:PASS` from the command line (split at the first colon). */
	creds?: string;
	/** An auth file to use instead of the default ones; it must exist. */
	authFile?: string;
	/** Environment to read `REGISTRY_AUTH_FILE`, `XDG_*` and `DOCKER_CONFIG` from (default: process.env). */
	env?: NodeJS.ProcessEnv;
	/** Home directory for the default files (default: os.homedir()). */
	homeDir?: string;
}

/** One `auths` entry; only the fields this module reads are kept. */
export interface AuthEntry {
	auth?: string;
	username?: string;
	password?: string;
	identitytoken?: string;
}

/** The parts of a docker `config.json` / containers `auth.json` that matter for credentials. */
export interface AuthConfig {
	/** Entries by key as written (a null-prototype object). */
	auths: Record<string, AuthEntry>;
	credHelpers?: Record<string, string>;
	credsStore?: string;
}

/** Auth files larger than this are refused (real ones are a few KiB). */
export const MAX_AUTH_FILE = 4 << 20;

/** Names of Docker Hub, all meaning the same registry. */
const DOCKER_HUB_NAMES = new Set([
	"docker.io",
	"index.docker.io",
	"registry-1.docker.io",
]);

const ENTRY_STRINGS = [
	"auth",
	"username",
	"password",
	"identitytoken",
] as const;

const isObject = (v: unknown): v is Record<string, unknown> =>
	typeof v === "object" && v !== null && !Array.isArray(v);

/** Quotes a key of an auth file for a message (keys are registry names, not secrets). */
const quoteKey = (k: string): string =>
	JSON.stringify(k.length > 100 ? `${k.slice(0, 100)}…` : k);

/**
 * Parses an auth file. Unknown fields are ignored; the fields read must have the right types.
 * Errors are INPUT_INVALID naming `file`, never quoting its contents.
 */
export function parseAuthConfig(bytes: Buffer, file: string): AuthConfig {
	const bad = (what: string) =>
		new DadiError(
			"INPUT_INVALID",
			`${file}: ${what}; expected a docker/containers auth file like {"auths": {"HOST": {"auth": "BASE64(USER:PASS)"}}}`,
		);
	if (bytes.length > MAX_AUTH_FILE)
		throw bad(`larger than ${MAX_AUTH_FILE} bytes`);
	let text: string;
	try {
		text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(
			bytes,
		);
	} catch {
		throw bad("not UTF-8 text");
	}
	let doc: unknown;
	try {
		doc = JSON.parse(text);
	} catch {
		// V8's message quotes the text, which may hold secrets: say no more than this.
		throw bad("not valid JSON");
	}
	if (!isObject(doc)) throw bad("not a JSON object");
	const auths: Record<string, AuthEntry> = Object.create(null);
	if (doc.auths !== undefined && doc.auths !== null) {
		if (!isObject(doc.auths)) throw bad(`"auths" is not an object`);
		for (const [key, v] of Object.entries(doc.auths)) {
			if (!isObject(v))
				throw bad(`"auths" entry ${quoteKey(key)} is not an object`);
			const entry: AuthEntry = {};
			for (const f of ENTRY_STRINGS) {
				const fv = v[f];
				if (fv === undefined || fv === null) continue;
				if (typeof fv !== "string")
					throw bad(`"auths" entry ${quoteKey(key)}: "${f}" is not a string`);
				entry[f] = fv;
			}
			auths[key] = entry;
		}
	}
	const config: AuthConfig = { auths };
	if (doc.credHelpers !== undefined && doc.credHelpers !== null) {
		if (!isObject(doc.credHelpers)) throw bad(`"credHelpers" is not an object`);
		const helpers: Record<string, string> = Object.create(null);
		for (const [key, v] of Object.entries(doc.credHelpers)) {
			if (typeof v !== "string")
				throw bad(`"credHelpers" entry ${quoteKey(key)} is not a string`);
			helpers[key] = v;
		}
		config.credHelpers = helpers;
	}
	if (doc.credsStore !== undefined && doc.credsStore !== null) {
		if (typeof doc.credsStore !== "string")
			throw bad(`"credsStore" is not a string`);
		config.credsStore = doc.credsStore;
	}
	return config;
}

/**
 * The host[:port] an auth file key names, lowercased, or undefined for keys scoped to a
 * repository namespace (`quay.io/org`), which cannot be matched without a repository.
 * `HOST`, `http(s)://HOST`, `HOST/v1/`, `https://HOST/v2/` all name HOST.
 */
export function authKeyHost(key: string): string | undefined {
	let k = key.trim().toLowerCase();
	if (k.startsWith("https://")) k = k.slice(8);
	else if (k.startsWith("http://")) k = k.slice(7);
	const slash = k.indexOf("/");
	if (slash >= 0) {
		if (!/^\/(?:v[12]\/?)?$/.test(k.slice(slash))) return undefined;
		k = k.slice(0, slash);
	}
	return k === "" ? undefined : k;
}

/** How well a key matches: 0 exactly, 1 as a URL or with a version path, 2 as a Docker Hub alias. */
function matchRank(key: string, host: string): number | undefined {
	if (key.toLowerCase() === host) return 0;
	const h = authKeyHost(key);
	if (h === undefined) return undefined;
	if (h === host) return 1;
	if (DOCKER_HUB_NAMES.has(h) && DOCKER_HUB_NAMES.has(host)) return 2;
	return undefined;
}

/** What one auth file offers for a host: usable credentials, or only something unsupported. */
type Found =
	| { kind: "creds"; creds: Credentials }
	| { kind: "unsupported"; what: string }
	| undefined;

/** Looks `host` (lowercased host[:port]) up in one parsed auth file. */
function lookUp(config: AuthConfig, host: string, file: string): Found {
	const matches = Object.entries(config.auths)
		.map(([key, entry], order) => ({
			key,
			entry,
			order,
			rank: matchRank(key, host),
		}))
		.filter((m) => m.rank !== undefined)
		.sort(
			(a, b) => (a.rank as number) - (b.rank as number) || a.order - b.order,
		);
	let unsupported: string | undefined;
	for (const { key, entry } of matches) {
		// docker keeps `auth` as base64("USER:") beside an identity token: the token is the secret.
		if (entry.identitytoken) {
			unsupported ??= `an identity token (entry ${quoteKey(key)})`;
			continue;
		}
		const creds = entryCredentials(entry, key, file);
		if (creds) return { kind: "creds", creds };
		if (config.credsStore)
			unsupported ??= `the credential store "${config.credsStore}" (entry ${quoteKey(key)} is empty)`;
	}
	for (const key of Object.keys(config.credHelpers ?? {}))
		if (matchRank(key, host) !== undefined)
			unsupported ??= `the credential helper "${config.credHelpers?.[key]}" (credHelpers ${quoteKey(key)})`;
	return unsupported ? { kind: "unsupported", what: unsupported } : undefined;
}

/** An entry's credentials: `auth` (base64 of USER:PASS) first, else `username` + `password`. */
function entryCredentials(
	entry: AuthEntry,
	key: string,
	file: string,
): Credentials | undefined {
	const bad = (what: string) =>
		new DadiError(
			"INPUT_INVALID",
			`${file}: the entry for ${quoteKey(key)} ${what}; log in again (podman login / docker login) or pass --creds USER:PASS`,
		);
	if (entry.auth) {
		const s = entry.auth.trim();
		if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 === 1)
			throw bad(`has an "auth" value that is not base64`);
		let text: string;
		try {
			text = new TextDecoder("utf-8", { fatal: true }).decode(
				Buffer.from(s, "base64"),
			);
		} catch {
			throw bad(`has an "auth" value that does not decode to UTF-8 text`);
		}
		const colon = text.indexOf(":");
		if (colon < 0)
			throw bad(
				`has an "auth" value without a colon between user and password`,
			);
		if (colon === 0) throw bad(`has an "auth" value with an empty user name`);
		return {
			username: text.slice(0, colon),
			password: text.slice(colon + 1),
			source: file,
		};
	}
	if (entry.username || entry.password) {
		if (!entry.username) throw bad(`has a password but no "username"`);
		if (!entry.password) throw bad(`has a "username" but no "password"`);
		return { username: entry.username, password: entry.password, source: file };
	}
	return undefined;
}

/** Splits `USER:PASS` from the command line. */
export function parseCredsOption(creds: string): Credentials {
	const colon = creds.indexOf(":");
	if (colon < 0)
		throw new DadiError(
			"USAGE",
			"--creds: no password given; pass --creds USER:PASSWORD (reading a password interactively is not supported)",
		);
	if (colon === 0)
		throw new DadiError(
			"USAGE",
			"--creds: the user name is empty; pass --creds USER:PASSWORD",
		);
	if (colon === creds.length - 1)
		throw new DadiError(
			"USAGE",
			"--creds: the password is empty; pass --creds USER:PASSWORD",
		);
	return {
		username: creds.slice(0, colon),
		password: creds.slice(colon + 1),
		source: "--creds",
	};
}

/** Reads and parses an auth file; undefined if it is missing and not `required` (what to do then). */
async function readAuthFile(
	file: string,
	required: string | undefined,
): Promise<AuthConfig | undefined> {
	let bytes: Buffer;
	try {
		const st = await stat(file);
		if (st.isFile() && st.size > MAX_AUTH_FILE)
			throw new DadiError(
				"INPUT_INVALID",
				`${file}: larger than ${MAX_AUTH_FILE} bytes; this is not an auth file`,
			);
		bytes = await readFile(file);
	} catch (e) {
		const code = (e as NodeJS.ErrnoException)?.code;
		if (code === "ENOENT" || code === "ENOTDIR") {
			if (required === undefined) return undefined;
			throw new DadiError(
				"INPUT_NOT_FOUND",
				`${file}: auth file not found; ${required}`,
			);
		}
		throw fromSystemError(e, file, "reading registry credentials");
	}
	return parseAuthConfig(bytes, file);
}

/** The auth files to consult, in order; `required` (what to do if it is missing) marks an explicit one. */
export function authFilePaths(
	o: CredentialOptions = {},
): { file: string; required?: string }[] {
	const env = o.env ?? process.env;
	if (o.authFile)
		return [
			{
				file: o.authFile,
				required:
					"check the --authfile path, or log in first (podman login --authfile FILE)",
			},
		];
	if (env.REGISTRY_AUTH_FILE)
		return [
			{
				file: env.REGISTRY_AUTH_FILE,
				required:
					"it is named by $REGISTRY_AUTH_FILE: correct or unset that variable, or log in first",
			},
		];
	const home = o.homeDir ?? homedir();
	const out: { file: string }[] = [];
	if (env.XDG_RUNTIME_DIR)
		out.push({ file: join(env.XDG_RUNTIME_DIR, "containers", "auth.json") });
	out.push({
		file: join(
			env.XDG_CONFIG_HOME || join(home, ".config"),
			"containers",
			"auth.json",
		),
	});
	out.push({
		file: env.DOCKER_CONFIG
			? join(env.DOCKER_CONFIG, "config.json")
			: join(home, ".docker", "config.json"),
	});
	return out;
}

/**
 * Finds credentials for `registryHost` (host[:port] as in the image reference, e.g. `docker.io`,
 * `ghcr.io`, `localhost:5000`), or undefined when there are none (pull anonymously).
 */
export async function findCredentials(
	registryHost: string,
	o: CredentialOptions = {},
): Promise<Credentials | undefined> {
	if (o.creds !== undefined) return parseCredsOption(o.creds);
	const host = registryHost.trim().toLowerCase();
	let unsupported: { file: string; what: string } | undefined;
	for (const { file, required } of authFilePaths(o)) {
		const config = await readAuthFile(file, required);
		if (!config) continue;
		const found = lookUp(config, host, file);
		if (found?.kind === "creds") return found.creds;
		if (found?.kind === "unsupported")
			unsupported ??= { file, what: found.what };
	}
	if (unsupported)
		throw new DadiError(
			"INPUT_INVALID",
			`${unsupported.file}: the credentials for ${registryHost} are in ${unsupported.what}, which dadi does not support (no credential helpers or identity tokens); pass --creds USER:PASS, or an --authfile whose entry for ${registryHost} has "auth"`,
		);
	return undefined;
}
