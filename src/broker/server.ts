/**
 * Starting and stopping a broker: state directory, signing key, policies, verifiers, the KBS
 * listener (HTTP or HTTPS) and, only when asked for with a token, the admin listener. Each
 * listener has its own limits (listener.ts): connections, request rate and body memory per client
 * and in all, timeouts; the broker bounds sessions (sessions.ts). Every log line is made printable
 * (clients choose some of its text).
 */
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { availableParallelism } from "node:os";
import { createAzSnpVtpmVerifier } from "../attest/azure/snp-vtpm-verifier.js";
import { createAzTdxVtpmVerifier } from "../attest/azure/tdx-vtpm-verifier.js";
import type { Verifier } from "../attest/claims.js";
import {
	loadTdxCollateral,
	readTdxCollateralDir,
	snpCertSourceFromDir,
} from "../attest/evidence-files.js";
import { sampleVerifier } from "../attest/sample.js";
import { createSnpVerifier } from "../attest/snp/verifier.js";
import { describeCollateralItems } from "../attest/tdx/collateral-dir.js";
import { tdxVerifier } from "../attest/tdx/verifier.js";
import { DadiError } from "../errors.js";
import { printable } from "../printable.js";
import { adminRoute, adminTokenDigest } from "./admin-routes.js";
import { Broker } from "./broker.js";
import type { TrustedProxies } from "./client-address.js";
import { CryptoOffload } from "./crypto-offload.js";
import type { CoalescerOptions } from "./denial-coalescer.js";
import { kbsRoute } from "./kbs-routes.js";
import {
	createListener,
	type Listener,
	type ListenerLimits,
	type Timeouts,
} from "./listener.js";
import { PolicyStore } from "./policy-store.js";
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
	/** How long a session may wait for its attest (default 60 s, at most the session TTL). */
	challengeTtlSeconds?: number;
	tokenTtlSeconds?: number;
	maxSessions?: number;
	maxSessionsPerClient?: number;
	/** Requests per second per client (0: unlimited) and burst; each listener has its own buckets. */
	rateLimit?: { rate: number; burst: number };
	/** Open connections of the KBS listener, in all and per client (default 4096 / 128). */
	maxConnections?: { max: number; perClient: number };
	/** Memory for request bodies being received by the KBS listener (default 128 MiB / 8 MiB per client). */
	bodyMemory?: { total: number; perClient: number };
	/** Peers (reverse proxies) whose X-Forwarded-For names the client. */
	trustedProxies?: TrustedProxies;
	/** Overrides of the listeners' timeouts, ms (tests). */
	timeouts?: Partial<Timeouts>;
	/** Rotation and retention of the audit log (default 64 MiB files, 15 rotated ones kept). */
	audit?: { rotateBytes?: number; keep?: number };
	/** How denials are coalesced in the audit log (default 5 a client per 10 s, then counted). */
	denialCoalescing?: CoalescerOptions;
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
	/** Live counts: connections and body bytes per listener, sessions. */
	stats(): {
		kbs: { connections: number; bodyBytes: number };
		admin?: { connections: number; bodyBytes: number };
		sessions: number;
	};
	close(): Promise<void>;
}

/** The admin listener serves a few operators: small fixed limits of its own. */
const ADMIN_CONNECTIONS = { max: 64, perClient: 16 };
const ADMIN_BODIES = { total: 16 << 20, perClient: 4 << 20 };

const SIGNING_KEY = "token-signing-key";

export async function startBroker(c: BrokerConfig): Promise<RunningBroker> {
	const sink = c.log ?? (() => {});
	const log = (line: string) => sink(printable(line));
	if (c.admin && c.admin.token.trim().length < 16)
		throw new DadiError(
			"USAGE",
			"the admin token must be at least 16 characters (create one with 'dadi-broker init')",
		);
	const state = await openStateDir(c.stateDir, c.masterKey, {
		audit: { ...c.audit, log },
	});
	const servers: Server[] = [];
	const cleanups: (() => Promise<void>)[] = [];
	try {
		let signingKey = await state.keystore.getInternal(SIGNING_KEY);
		if (!signingKey) {
			signingKey = generateSigningKey();
			await state.keystore.putInternal(SIGNING_KEY, signingKey);
		}
		const policies = await PolicyStore.open(c.stateDir, c.policiesDir);
		const snpCerts = c.snpCertsDir
			? { certSource: await snpCertSourceFromDir(c.snpCertsDir) }
			: {};
		if (c.tdxCollateralDir)
			// Read once at start so a wrong directory fails now, and say what it holds; each quote
			// re-reads it (updated collateral is picked up without a restart).
			log(
				describeCollateralItems(
					c.tdxCollateralDir,
					await readTdxCollateralDir(c.tdxCollateralDir),
				),
			);
		const tdxDir = c.tdxCollateralDir;
		const tdxCollateral = tdxDir
			? {
					// The details (paths, file names) go to the operator's log; the client is refused
					// with PRECONDITION_FAILED, which it sees as an internal error.
					collateralSource: async (
						fmspc: string,
						pckCa?: "processor" | "platform",
					) => {
						try {
							return await loadTdxCollateral(tdxDir, fmspc, pckCa);
						} catch (e) {
							log(
								`TDX collateral for FMSPC ${fmspc}: ${e instanceof DadiError ? e.message : String(e)}`,
							);
							throw new DadiError(
								"PRECONDITION_FAILED",
								`the broker has no usable TDX collateral for FMSPC ${fmspc} (see the broker's log)`,
							);
						}
					},
				}
			: {};
		const verifiers = c.verifiers
			? [...c.verifiers]
			: [
					createSnpVerifier(snpCerts),
					tdxVerifier(tdxCollateral),
					// Azure evidence carries only the VCEK: its ASK/ARK come from --snp-certs
					createAzSnpVtpmVerifier(snpCerts),
					createAzTdxVtpmVerifier(tdxCollateral),
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
			challengeTtlMs:
				c.challengeTtlSeconds !== undefined
					? c.challengeTtlSeconds * 1000
					: undefined,
			tokenTtlSeconds: c.tokenTtlSeconds,
			maxSessions: c.maxSessions,
			maxSessionsPerClient: c.maxSessionsPerClient,
			coalescing: c.denialCoalescing,
			log,
		});
		// before the state closes: summaries of coalesced denials
		cleanups.push(() =>
			broker.close().catch((e: unknown) => {
				log(`audit: closing: ${(e as Error).message}`);
			}),
		);
		const rate = c.rateLimit ?? { rate: 50, burst: 100 };
		const make = (
			limits: ListenerLimits,
			route: Parameters<typeof createListener>[1],
		): Listener => {
			const l = createListener(
				{
					limits,
					tls: c.tls,
					trustedProxies: c.trustedProxies,
					log,
					timeouts: c.timeouts,
				},
				route,
			);
			servers.push(l.server);
			return l;
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
			{
				connections: c.maxConnections ?? { max: 4096, perClient: 128 },
				rate,
				bodies: c.bodyMemory ?? { total: 128 << 20, perClient: 8 << 20 },
			},
			(req, res, rc) => kbsRoute(broker, req, res, Boolean(c.tls), rc),
		);
		const port = await listen(kbs.server, c.host, c.port);
		let adminUrl: string | undefined;
		let admin: Listener | undefined;
		if (c.admin) {
			const ctx = {
				broker,
				state,
				policies,
				tokenDigest: adminTokenDigest(c.admin.token),
			};
			admin = make(
				{ connections: ADMIN_CONNECTIONS, rate, bodies: ADMIN_BODIES },
				(req, res, rc) => adminRoute(ctx, req, res, rc),
			);
			adminUrl = fmt(
				c.admin.host,
				await listen(admin.server, c.admin.host, c.admin.port),
			);
		}
		let closed: Promise<void> | undefined;
		return {
			url: fmt(c.host, port),
			adminUrl,
			broker,
			stats: () => ({
				kbs: kbs.stats(),
				...(admin ? { admin: admin.stats() } : {}),
				sessions: broker.sessions.size,
			}),
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
					await broker
						.close()
						.catch((e: unknown) =>
							log(`audit: closing: ${(e as Error).message}`),
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
