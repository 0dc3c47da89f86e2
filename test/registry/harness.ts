/**
 * A real OCI registry for tests: distribution 2.8 (`docker-registry serve config.yml`) on loopback,
 * optionally behind htpasswd or token auth, optionally over TLS with a test CA.
 *
 * Everything lives in one temporary directory (config, storage, certificates, log) that `stop()`
 * removes. Registries still running when the test process exits are killed.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import {
	createPrivateKey,
	type KeyObject,
	randomBytes,
	randomUUID,
	sign,
	X509Certificate,
} from "node:crypto";
import { closeSync, openSync } from "node:fs";
import {
	copyFile,
	mkdir,
	mkdtemp,
	readFile,
	rm,
	writeFile,
} from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import { createServer as createNetServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Listening, listenOnLoopback } from "./listen.js";

export interface RegistryOptions {
	/** default "none" */
	auth?: "none" | "htpasswd" | "token";
	/** default false (plain HTTP on loopback) */
	tls?: boolean;
	/** token auth: expires_in (and exp - iat) of issued tokens, default 300; may be negative */
	tokenTtlSeconds?: number;
	/** the registry's log level, default "warn" ("info" adds access logs and token rejections) */
	logLevel?: "error" | "warn" | "info" | "debug";
}

export interface RunningRegistry {
	/** "127.0.0.1:PORT" */
	host: string;
	/** "http://127.0.0.1:PORT" or "https://127.0.0.1:PORT" */
	url: string;
	/** the registry's filesystem storage root */
	storageDir: string;
	/** htpasswd and token auth: the one user the registry (or issuer) accepts */
	username?: string;
	password?: string;
	/** tls: PEM of the test CA that signed the registry's certificate */
	caFile?: string;
	/** tls: a directory holding only ca.crt (skopeo --cert-dir / --src-cert-dir / --dest-cert-dir) */
	certDir?: string;
	/** token auth only */
	tokenIssuer?: TokenIssuer;
	logFile: string;
	/** Stops and starts again on the same port with the same storage and credentials. */
	restart(): Promise<void>;
	/** SIGTERM, wait, SIGKILL after 5 s; closes the token issuer and removes the temp dir. Idempotent. */
	stop(): Promise<void>;
}

export interface TokenRequest {
	scope: string[];
	service: string;
	user?: string;
}

export interface TokenIssuer {
	/** the realm: "http://127.0.0.1:PORT/token" */
	url: string;
	/** every GET /token, in order (also those answered 401) */
	requests: TokenRequest[];
	/**
	 * Which actions to grant an authenticated user on a requested resource; default: all requested.
	 * Anonymous requests always get a token granting nothing.
	 */
	grant: (
		user: string,
		type: string,
		name: string,
		actions: string[],
	) => string[];
	/** Signs a token directly (e.g. an expired one: ttlSeconds -120; the registry allows 60 s leeway). */
	mint(o: {
		access: { type: string; name: string; actions: string[] }[];
		ttlSeconds?: number;
		subject?: string;
		audience?: string;
		issuer?: string;
	}): string;
	close(): Promise<void>;
}

const REGISTRY_BIN = "docker-registry";
const USERNAME = "dadi";
const SERVICE = "dadi-test-registry";
const ISSUER = "dadi-test-issuer";
const READY_TIMEOUT_MS = 15_000;
const STOP_GRACE_MS = 5_000;

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(child: ChildProcess): void {
	live.add(child);
	child.once("exit", () => live.delete(child));
	if (!exitHookInstalled) {
		exitHookInstalled = true;
		process.once("exit", () => {
			for (const c of live) c.kill("SIGKILL");
		});
	}
}

function run(cmd: string, args: string[], cwd?: string): Promise<string> {
	return new Promise((resolve, reject) => {
		execFile(cmd, args, { cwd, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
			if (err)
				reject(
					new Error(
						`${cmd} ${args.join(" ")} failed: ${err.message}\n${stderr}`,
					),
				);
			else resolve(stdout);
		});
	});
}

/** A port that was free a moment ago (the registry may still lose a race for it: callers retry). */
export function freePort(): Promise<number> {
	return new Promise((resolve, reject) => {
		const s = createNetServer();
		s.once("error", reject);
		s.listen(0, "127.0.0.1", () => {
			const a = s.address();
			const port = typeof a === "object" && a ? a.port : 0;
			s.close(() => (port ? resolve(port) : reject(new Error("no port"))));
		});
	});
}

/** Minimal YAML emitter: nested maps and lists, scalars as JSON (a YAML subset). */
function toYaml(v: unknown, indent = ""): string {
	if (Array.isArray(v))
		return v.map((x) => `${indent}- ${JSON.stringify(x)}\n`).join("");
	let out = "";
	for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
		if (x === undefined) continue;
		if (x !== null && typeof x === "object")
			out += `${indent}${k}:\n${toYaml(x, `${indent}  `)}`;
		else out += `${indent}${k}: ${JSON.stringify(x)}\n`;
	}
	return out;
}

async function tail(file: string, n = 30): Promise<string> {
	try {
		const lines = (await readFile(file, "utf8")).trimEnd().split("\n");
		return lines.slice(-n).join("\n");
	} catch {
		return "(no log)";
	}
}

/** GET url once; resolves with the status, or undefined on a connection error. */
function probe(url: string, ca?: Buffer): Promise<number | undefined> {
	return new Promise((resolve) => {
		const mod = url.startsWith("https:") ? https : http;
		const req = mod.get(url, { ca, agent: false, timeout: 1000 }, (res) => {
			res.resume();
			resolve(res.statusCode);
		});
		req.on("timeout", () => req.destroy());
		req.on("error", () => resolve(undefined));
	});
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function makeTlsFiles(
	dir: string,
): Promise<{ ca: string; cert: string; key: string }> {
	const ca = join(dir, "ca.crt");
	const caKey = join(dir, "ca.key");
	const key = join(dir, "server.key");
	const csr = join(dir, "server.csr");
	const cert = join(dir, "server.crt");
	const ext = join(dir, "server.ext");
	const ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
	await run("openssl", [
		...`req -x509 ${ec} -keyout ${caKey} -out ${ca} -days 2 -subj /CN=dadi-test-ca`.split(
			" ",
		),
		...["-addext", "basicConstraints=critical,CA:TRUE"],
		...["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
	]);
	await run(
		"openssl",
		`req -new ${ec} -keyout ${key} -out ${csr} -subj /CN=127.0.0.1`.split(" "),
	);
	await writeFile(
		ext,
		"subjectAltName=IP:127.0.0.1,DNS:localhost\n" +
			"basicConstraints=CA:FALSE\n" +
			"keyUsage=critical,digitalSignature\n" +
			"extendedKeyUsage=serverAuth\n",
	);
	await run(
		"openssl",
		`x509 -req -in ${csr} -CA ${ca} -CAkey ${caKey} -CAcreateserial -out ${cert} -days 2 -extfile ${ext}`.split(
			" ",
		),
	);
	return { ca, cert, key };
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString("base64url");

async function startTokenIssuer(
	dir: string,
	username: string,
	password: string,
	ttlSeconds: number,
): Promise<{ issuer: TokenIssuer; certFile: string }> {
	const keyFile = join(dir, "token.key");
	const certFile = join(dir, "token.crt");
	await run(
		"openssl",
		`req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ${keyFile} -out ${certFile} -days 2 -subj /CN=dadi-test-token-issuer`.split(
			" ",
		),
	);
	const key: KeyObject = createPrivateKey(await readFile(keyFile));
	const certDer = new X509Certificate(await readFile(certFile)).raw;
	const header = b64url(
		JSON.stringify({
			typ: "JWT",
			alg: "ES256",
			x5c: [certDer.toString("base64")],
		}),
	);

	const mint: TokenIssuer["mint"] = (o) => {
		const now = Math.floor(Date.now() / 1000);
		const ttl = o.ttlSeconds ?? ttlSeconds;
		const claims = {
			iss: o.issuer ?? ISSUER,
			sub: o.subject ?? "",
			aud: o.audience ?? SERVICE,
			exp: now + ttl,
			nbf: Math.min(now, now + ttl) - 1,
			iat: now,
			jti: randomUUID(),
			access: o.access,
		};
		const input = `${header}.${b64url(JSON.stringify(claims))}`;
		const sig = sign("sha256", Buffer.from(input), {
			key,
			dsaEncoding: "ieee-p1363",
		});
		return `${input}.${b64url(sig)}`;
	};

	let listening: Listening | undefined;
	const issuer: TokenIssuer = {
		url: "",
		requests: [],
		grant: (_user, _type, _name, actions) => actions,
		mint,
		close: async () => {
			await listening?.close();
		},
	};
	const server = http.createServer((req, res) => {
		const u = new URL(req.url ?? "/", "http://x");
		if (req.method !== "GET" || u.pathname !== "/token") {
			res.writeHead(404).end();
			return;
		}
		const scope = u.searchParams
			.getAll("scope")
			.flatMap((s) => s.split(" "))
			.filter(Boolean);
		const service = u.searchParams.get("service") ?? "";
		let user: string | undefined;
		const auth = req.headers.authorization;
		if (auth) {
			const m = /^Basic\s+(\S+)$/i.exec(auth);
			const decoded = m ? Buffer.from(m[1] as string, "base64").toString() : "";
			const i = decoded.indexOf(":");
			const [u2, p2] =
				i < 0 ? ["", ""] : [decoded.slice(0, i), decoded.slice(i + 1)];
			issuer.requests.push({ scope, service, user: u2 });
			if (u2 !== username || p2 !== password) {
				res.writeHead(401, {
					"Content-Type": "application/json",
					"WWW-Authenticate": 'Basic realm="dadi test token issuer"',
				});
				res.end(
					JSON.stringify({
						errors: [{ code: "UNAUTHORIZED", message: "bad credentials" }],
					}),
				);
				return;
			}
			user = u2;
		} else issuer.requests.push({ scope, service });
		const access: { type: string; name: string; actions: string[] }[] = [];
		if (user !== undefined)
			for (const s of scope) {
				const parts = s.split(":");
				if (parts.length < 3) continue;
				const type = parts[0] as string;
				const actions = (parts[parts.length - 1] as string)
					.split(",")
					.filter(Boolean);
				const name = parts.slice(1, -1).join(":");
				const granted = issuer.grant(user, type, name, actions);
				if (granted.length) access.push({ type, name, actions: granted });
			}
		const token = mint({
			access,
			subject: user ?? "",
			audience: service || SERVICE,
		});
		res.writeHead(200, { "Content-Type": "application/json" });
		res.end(
			JSON.stringify({
				token,
				access_token: token,
				expires_in: ttlSeconds,
				issued_at: new Date().toISOString(),
			}),
		);
	});
	listening = await listenOnLoopback(server);
	issuer.url = `http://127.0.0.1:${listening.port}/token`;
	return { issuer, certFile };
}

export async function startRegistry(
	o: RegistryOptions = {},
): Promise<RunningRegistry> {
	const auth = o.auth ?? "none";
	const dir = await mkdtemp(join(tmpdir(), "dadi-registry-"));
	let issuer: TokenIssuer | undefined;
	try {
		const storageDir = join(dir, "storage");
		const logFile = join(dir, "registry.log");
		const configFile = join(dir, "config.yml");
		await mkdir(storageDir);
		const password =
			auth === "none" ? undefined : randomBytes(12).toString("hex");
		const username = password === undefined ? undefined : USERNAME;

		let authConfig: Record<string, unknown> | undefined;
		if (auth === "htpasswd") {
			const file = join(dir, "htpasswd");
			await writeFile(
				file,
				await run("htpasswd", ["-Bbn", USERNAME, password as string]),
			);
			authConfig = { htpasswd: { realm: "dadi-test", path: file } };
		} else if (auth === "token") {
			const t = await startTokenIssuer(
				dir,
				USERNAME,
				password as string,
				o.tokenTtlSeconds ?? 300,
			);
			issuer = t.issuer;
			authConfig = {
				token: {
					realm: issuer.url,
					service: SERVICE,
					issuer: ISSUER,
					rootcertbundle: t.certFile,
				},
			};
		}

		let caFile: string | undefined;
		let certDir: string | undefined;
		let tlsConfig: Record<string, unknown> | undefined;
		let ca: Buffer | undefined;
		if (o.tls) {
			const tlsDir = join(dir, "tls");
			await mkdir(tlsDir);
			const f = await makeTlsFiles(tlsDir);
			caFile = f.ca;
			ca = await readFile(caFile);
			certDir = join(dir, "certs.d");
			await mkdir(certDir);
			await copyFile(caFile, join(certDir, "ca.crt"));
			tlsConfig = { certificate: f.cert, key: f.key };
		}

		const scheme = o.tls ? "https" : "http";
		const writeConfig = (port: number) =>
			writeFile(
				configFile,
				toYaml({
					version: "0.1",
					log: {
						level: o.logLevel ?? "warn",
						formatter: "text",
						accesslog: {
							disabled: o.logLevel !== "info" && o.logLevel !== "debug",
						},
					},
					storage: {
						filesystem: { rootdirectory: storageDir },
						delete: { enabled: true },
						redirect: { disable: true },
						maintenance: { uploadpurging: { enabled: false } },
					},
					http: {
						addr: `127.0.0.1:${port}`,
						secret: randomBytes(16).toString("hex"),
						tls: tlsConfig,
						headers: { "X-Content-Type-Options": ["nosniff"] },
					},
					auth: authConfig,
				}),
			);

		let child: ChildProcess | undefined;
		let port = 0;

		/** Spawns the registry on `port` and waits until /v2/ answers; false if it exited early. */
		const launch = async (): Promise<boolean> => {
			const fd = openSync(logFile, "a");
			const env = Object.fromEntries(
				Object.entries(process.env).filter(([k]) => !k.startsWith("REGISTRY_")),
			);
			const c = spawn(REGISTRY_BIN, ["serve", configFile], {
				cwd: dir,
				env,
				stdio: ["ignore", fd, fd],
			});
			closeSync(fd);
			track(c);
			child = c;
			let exited = false;
			c.once("exit", () => {
				exited = true;
			});
			c.once("error", () => {
				exited = true;
			});
			const deadline = Date.now() + READY_TIMEOUT_MS;
			while (Date.now() < deadline) {
				if (exited) return false;
				const s = await probe(`${scheme}://127.0.0.1:${port}/v2/`, ca);
				if (exited) return false; // someone else answered on the port
				if (s === 200 || s === 401) return true;
				await sleep(50);
			}
			await kill(c);
			throw new Error(
				`registry not ready after ${READY_TIMEOUT_MS} ms:\n${await tail(logFile)}`,
			);
		};

		const kill = async (c: ChildProcess | undefined): Promise<void> => {
			if (!c || c.exitCode !== null || c.signalCode !== null) return;
			const exited = new Promise<void>((r) => c.once("exit", () => r()));
			c.kill("SIGTERM");
			const t = setTimeout(() => c.kill("SIGKILL"), STOP_GRACE_MS);
			await exited;
			clearTimeout(t);
		};

		let started = false;
		for (let attempt = 0; attempt < 5 && !started; attempt++) {
			port = await freePort();
			await writeConfig(port);
			started = await launch();
		}
		if (!started)
			throw new Error(`registry failed to start:\n${await tail(logFile)}`);

		let stopping: Promise<void> | undefined;
		const reg: RunningRegistry = {
			host: `127.0.0.1:${port}`,
			url: `${scheme}://127.0.0.1:${port}`,
			storageDir,
			username,
			password,
			caFile,
			certDir,
			tokenIssuer: issuer,
			logFile,
			async restart() {
				if (stopping) throw new Error("registry was stopped");
				await kill(child);
				// The port was ours a moment ago; a restart keeps it (retry briefly if the kernel lags).
				for (let attempt = 0; attempt < 20; attempt++) {
					if (await launch()) return;
					await sleep(100);
				}
				throw new Error(
					`registry failed to restart on port ${port}:\n${await tail(logFile)}`,
				);
			},
			stop() {
				stopping ??= (async () => {
					await kill(child);
					await issuer?.close();
					await rm(dir, { recursive: true, force: true });
				})();
				return stopping;
			},
		};
		return reg;
	} catch (e) {
		await issuer?.close();
		await rm(dir, { recursive: true, force: true });
		throw e;
	}
}

/**
 * Flips bits of one byte of an image's first layer blob directly in the registry's storage, as a
 * malicious registry or a corrupted disk would (the registry keeps serving the changed bytes).
 */
export async function flipLayerByte(
	reg: RunningRegistry,
	repository: string,
	tag: string,
	at: number,
	mask = 1,
): Promise<void> {
	const res = await fetch(`${reg.url}/v2/${repository}/manifests/${tag}`, {
		headers: { accept: "application/vnd.oci.image.manifest.v1+json" },
	});
	if (!res.ok) throw new Error(`manifest ${repository}:${tag}: ${res.status}`);
	const manifest = (await res.json()) as { layers: { digest: string }[] };
	const layer = manifest.layers[0];
	if (!layer) throw new Error(`manifest ${repository}:${tag}: no layers`);
	const hex = layer.digest.slice(7);
	const data = join(
		reg.storageDir,
		"docker/registry/v2/blobs/sha256",
		hex.slice(0, 2),
		hex,
		"data",
	);
	const blob = await readFile(data);
	blob.writeUInt8((blob.readUInt8(at) ^ mask) & 0xff, at);
	await writeFile(data, blob);
}
