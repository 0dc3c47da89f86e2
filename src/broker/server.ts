/**
 * Starting and stopping a broker: state directory, signing key, policies, verifiers, the KBS
 * listener (HTTP or HTTPS) and, only when asked for with a token, the admin listener. Limits:
 * per-client request rate, bounded sessions, body sizes, header/request timeouts.
 */
import {
	createServer as createHttp,
	type IncomingMessage,
	type Server,
	type ServerResponse,
} from "node:http";
import { createServer as createHttps } from "node:https";
import type { AddressInfo } from "node:net";
import { availableParallelism } from "node:os";
import type { Verifier } from "../attest/claims.js";
import {
	loadTdxCollateral,
	snpCertSourceFromDir,
} from "../attest/evidence-files.js";
import { sampleVerifier } from "../attest/sample.js";
import { createSnpVerifier } from "../attest/snp/verifier.js";
import { tdxVerifier } from "../attest/tdx/verifier.js";
import { DadiError } from "../errors.js";
import { adminRoute, adminTokenDigest } from "./admin-routes.js";
import { Broker } from "./broker.js";
import { CryptoOffload } from "./crypto-offload.js";
import {
	clientOf,
	HttpProblem,
	PROBLEM_BASE,
	problemFor,
	sendProblem,
} from "./http.js";
import { kbsRoute } from "./kbs-routes.js";
import { PolicyStore } from "./policy-store.js";
import { RateLimiter } from "./rate-limit.js";
import { openStateDir } from "./state-dir.js";
import { generateSigningKey, tokenSigner } from "./token.js";

export interface BrokerConfig {
	host: string;
	port: number;
	stateDir: string;
	masterKey: Buffer;
	/** Read-only policies (e.g. the repository's policies/). */
	policiesDir?: string;
	/** Registers the sample TEE verifier (development only; loudly logged). */
	insecureDev: boolean;
	/** The admin listener: only with a token. */
	admin?: { host: string; port: number; token: string };
	tls?: { cert: Buffer; key: Buffer };
	sessionTtlSeconds?: number;
	tokenTtlSeconds?: number;
	maxSessions?: number;
	maxSessionsPerClient?: number;
	/** Requests per second per client address (0: unlimited) and burst. */
	rateLimit?: { rate: number; burst: number };
	/**
	 * Worker threads doing each release's JWE and token signature while the event loop serves
	 * HTTP (default: 1 when the machine has 2 or more CPUs, else 0).
	 */
	cryptoWorkers?: number;
	/**
	 * Verifiers for real TEEs (the sample one is added by insecureDev). Default: SEV-SNP under
	 * AMD's pinned ARKs and TDX under the pinned Intel SGX Root CA, with certificates from
	 * `snpCertsDir` and collateral from `tdxCollateralDir` when given.
	 */
	verifiers?: Verifier[];
	/** A cache of AMD certificates (ARK, ASK/ASVK, VCEK/VLEK) for reports that arrive without them. */
	snpCertsDir?: string;
	/** Intel PCS collateral (TCB info per FMSPC, QE identity, signing chain, CRLs) for TDX quotes. */
	tdxCollateralDir?: string;
	log?: (line: string) => void;
}

export interface RunningBroker {
	url: string;
	adminUrl?: string;
	broker: Broker;
	close(): Promise<void>;
}

const SIGNING_KEY = "token-signing-key";

export async function startBroker(c: BrokerConfig): Promise<RunningBroker> {
	const log = c.log ?? (() => {});
	if (c.admin && c.admin.token.trim().length < 16)
		throw new DadiError(
			"USAGE",
			"the admin token must be at least 16 characters (create one with 'dadi-broker init')",
		);
	const state = await openStateDir(c.stateDir, c.masterKey);
	const servers: Server[] = [];
	const cleanups: (() => Promise<void>)[] = [];
	try {
		let signingKey = await state.keystore.getInternal(SIGNING_KEY);
		if (!signingKey) {
			signingKey = generateSigningKey();
			await state.keystore.putInternal(SIGNING_KEY, signingKey);
		}
		const policies = await PolicyStore.open(c.stateDir, c.policiesDir);
		const verifiers = c.verifiers
			? [...c.verifiers]
			: [
					createSnpVerifier(
						c.snpCertsDir
							? { certSource: await snpCertSourceFromDir(c.snpCertsDir) }
							: {},
					),
					tdxVerifier(
						c.tdxCollateralDir
							? {
									collateralSource: (fmspc) =>
										loadTdxCollateral(c.tdxCollateralDir as string, fmspc),
								}
							: {},
					),
				];
		if (c.insecureDev) {
			verifiers.push(sampleVerifier);
			log(
				"WARNING: --insecure-dev: the sample TEE is accepted; its evidence proves nothing. Never use this in production.",
			);
		}
		const signer = tokenSigner(signingKey);
		const offload = CryptoOffload.start(
			signingKey,
			c.cryptoWorkers ?? (availableParallelism() >= 2 ? 1 : 0),
			(input) => signer.signInput(input),
		);
		cleanups.push(() => offload.close());
		const broker = new Broker({
			offload,
			state,
			signer,
			verifiers,
			policies: policies.all(),
			insecureDev: c.insecureDev,
			sessionTtlMs:
				c.sessionTtlSeconds !== undefined
					? c.sessionTtlSeconds * 1000
					: undefined,
			tokenTtlSeconds: c.tokenTtlSeconds,
			maxSessions: c.maxSessions,
			maxSessionsPerClient: c.maxSessionsPerClient,
			log,
		});
		const limiter = new RateLimiter(c.rateLimit ?? { rate: 50, burst: 100 });
		const handle =
			(route: (req: IncomingMessage, res: ServerResponse) => Promise<void>) =>
			(req: IncomingMessage, res: ServerResponse) => {
				const wait = limiter.take(clientOf(req), Date.now());
				const go =
					wait > 0
						? Promise.reject(
								new HttpProblem(
									429,
									"TooManyRequests",
									`too many requests from this client; retry in ${wait} s`,
									{
										"retry-after": String(wait),
									},
								),
							)
						: route(req, res);
				go.catch((e) => {
					const p = problemFor(e);
					if (p.status >= 500 && p.status !== 503)
						log(
							`internal error on ${req.method} ${req.url?.slice(0, 200)}: ${(e as Error)?.stack ?? e}`,
						);
					sendProblem(res, p);
				});
			};
		const make = (
			fn: (req: IncomingMessage, res: ServerResponse) => void,
		): Server => {
			const opts = { maxHeaderSize: 16 << 10 };
			const s = c.tls
				? createHttps({ ...opts, cert: c.tls.cert, key: c.tls.key }, fn)
				: createHttp(opts, fn);
			s.headersTimeout = 10_000;
			s.requestTimeout = 30_000;
			s.keepAliveTimeout = 5_000;
			s.maxConnections = 4096;
			s.on("clientError", (e: NodeJS.ErrnoException, socket) => {
				if (!socket.writable) {
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
			});
			servers.push(s);
			return s;
		};
		const listen = (s: Server, host: string, port: number) =>
			new Promise<number>((resolve, reject) => {
				s.once("error", (e) =>
					reject(
						new DadiError(
							"IO",
							`cannot listen on ${host}:${port}: ${(e as Error).message}`,
						),
					),
				);
				s.listen(port, host, () => resolve((s.address() as AddressInfo).port));
			});
		const scheme = c.tls ? "https" : "http";
		const fmt = (host: string, port: number) =>
			`${scheme}://${host.includes(":") ? `[${host}]` : host}:${port}`;
		const kbs = make(
			handle((req, res) => kbsRoute(broker, req, res, Boolean(c.tls))),
		);
		const port = await listen(kbs, c.host, c.port);
		let adminUrl: string | undefined;
		if (c.admin) {
			const ctx = {
				broker,
				state,
				policies,
				tokenDigest: adminTokenDigest(c.admin.token),
			};
			const admin = make(handle((req, res) => adminRoute(ctx, req, res)));
			adminUrl = fmt(
				c.admin.host,
				await listen(admin, c.admin.host, c.admin.port),
			);
		}
		let closed: Promise<void> | undefined;
		return {
			url: fmt(c.host, port),
			adminUrl,
			broker,
			close: () => {
				closed ??= (async () => {
					await Promise.all(
						servers.map(
							(s) =>
								new Promise<void>((r) => {
									s.close(() => r());
									s.closeAllConnections();
								}),
						),
					);
					for (const f of cleanups) await f();
					await state.close();
				})();
				return closed;
			},
		};
	} catch (e) {
		for (const s of servers) s.close();
		for (const f of cleanups) await f();
		await state.close();
		throw e;
	}
}
