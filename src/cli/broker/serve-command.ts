/** `dadi-broker serve`: run the key broker until SIGINT/SIGTERM. */
import { readFile } from "node:fs/promises";
import type { Command } from "commander";
import { readAdminToken } from "../../broker/admin-client.js";
import { parseTrustedProxies } from "../../broker/client-address.js";
import { readMasterKey } from "../../broker/master-key.js";
import { type BrokerConfig, startBroker } from "../../broker/server.js";
import { DadiError, fromSystemError } from "../../errors.js";
import { parseListen } from "../../guest/serve.js";
import { handleSignals } from "../../temp-files.js";
import { printJson, runAction } from "../common.js";

interface ServeFlags {
	config?: string;
	state?: string;
	masterKey?: string;
	listen?: string;
	policies?: string;
	insecureDev?: boolean;
	adminListen?: string;
	adminTokenFile?: string;
	tlsCert?: string;
	tlsKey?: string;
	sessionTtl?: string;
	tokenTtl?: string;
	maxSessions?: string;
	rateLimit?: string;
	cryptoWorkers?: string;
	snpCerts?: string;
	tdxCollateral?: string;
	maxConnections?: string;
	trustedProxy?: string;
	auditFileMib?: string;
	auditKeep?: string;
	json?: boolean;
}

const CONFIG_KEYS: (keyof ServeFlags)[] = [
	"state",
	"masterKey",
	"listen",
	"policies",
	"insecureDev",
	"adminListen",
	"adminTokenFile",
	"tlsCert",
	"tlsKey",
	"sessionTtl",
	"tokenTtl",
	"maxSessions",
	"rateLimit",
	"cryptoWorkers",
	"snpCerts",
	"tdxCollateral",
	"maxConnections",
	"trustedProxy",
	"auditFileMib",
	"auditKeep",
];

export function serveCommand(program: Command): void {
	program
		.command("serve")
		.description(
			"serve the KBS protocol (auth, attest, resource) and, with a token, the admin API",
		)
		.option(
			"--config <FILE>",
			"a JSON file with any of the options below (camelCase keys); flags win",
		)
		.option("--state <DIR>", "the state directory (made by 'dadi-broker init')")
		.option(
			"--master-key <FILE>",
			"the master key file (or $DADI_BROKER_MASTER_KEY)",
		)
		.option(
			"--listen <tcp:HOST:PORT>",
			"the KBS listener (default tcp:127.0.0.1:8080)",
		)
		.option(
			"--policies <DIR>",
			"read-only key release policies (*.json), besides those uploaded",
		)
		.option(
			"--insecure-dev",
			"DEVELOPMENT ONLY: accept the sample TEE, whose evidence anyone can forge",
		)
		.option(
			"--admin-listen <tcp:HOST:PORT>",
			"the admin API listener (off unless given, needs --admin-token-file)",
		)
		.option(
			"--admin-token-file <FILE>",
			"the admin API's bearer token (or $DADI_BROKER_ADMIN_TOKEN)",
		)
		.option("--tls-cert <PEM>", "serve HTTPS with this certificate chain")
		.option("--tls-key <PEM>", "and this private key")
		.option(
			"--session-ttl <SECONDS>",
			"how long an auth session lives (default 300)",
		)
		.option(
			"--token-ttl <SECONDS>",
			"how long an attestation token is valid (default 300)",
		)
		.option("--max-sessions <N>", "open sessions at most (default 10000)")
		.option(
			"--rate-limit <N[/BURST]>",
			"requests per second per client address (default 50/100; 0 = off); the admin listener counts apart",
		)
		.option(
			"--max-connections <N[/PER-CLIENT]>",
			"open connections of the KBS listener, in all and per client address (default 4096/128)",
		)
		.option(
			"--trusted-proxy <ADDR[/BITS],…>",
			"reverse proxies whose X-Forwarded-For names the client (per-client limits then count the client, not the proxy)",
		)
		.option(
			"--audit-file-mib <N>",
			"rotate the audit log when it reaches N MiB (default 64)",
		)
		.option(
			"--audit-keep <N>",
			"rotated audit log files kept; older ones are removed (default 15)",
		)
		.option(
			"--snp-certs <DIR>",
			"AMD certificates (ARK, ASK/ASVK, VCEK/VLEK; PEM or DER) for SEV-SNP reports sent without them, and the ASK/ARK for Azure SEV-SNP vTPM evidence (which carries only the VCEK)",
		)
		.option(
			"--tdx-collateral <DIR>",
			"TDX collateral: Intel PCS responses (TCB info per FMSPC, QE identity), *tcb-signing-chain*.pem, pck-crl.der, root-crl.der, or dcap-qvl bundles / Intel PCS Client Tool files (docs/broker.md §3); what it holds is logged at start",
		)
		.option(
			"--crypto-workers <N>",
			"threads doing each release's JWE and token signature beside the event loop (default 1 with 2+ CPUs; 0 = inline)",
		)
		.option("--json", "print the ready line as JSON")
		.action(async (flags: ServeFlags) =>
			runAction("dadi-broker serve", Boolean(flags.json), async () => {
				const opts = await withConfig(flags);
				const log = (line: string) =>
					process.stderr.write(`dadi-broker: ${line}\n`);
				if (!opts.state)
					throw new DadiError(
						"USAGE",
						"--state DIR is required (create one with 'dadi-broker init')",
					);
				const listen = parseListen(
					opts.listen ?? "tcp:127.0.0.1:8080",
					"--listen",
					false,
				) as { host: string; port: number };
				const config: BrokerConfig = {
					host: listen.host,
					port: listen.port,
					stateDir: opts.state,
					masterKey: await readMasterKey({
						file: opts.masterKey,
						envValue: process.env.DADI_BROKER_MASTER_KEY,
					}),
					policiesDir: opts.policies,
					insecureDev: Boolean(opts.insecureDev),
					sessionTtlSeconds: seconds(opts.sessionTtl, "--session-ttl"),
					tokenTtlSeconds: seconds(opts.tokenTtl, "--token-ttl"),
					maxSessions: count(opts.maxSessions, "--max-sessions"),
					rateLimit: rate(opts.rateLimit),
					cryptoWorkers: workers(opts.cryptoWorkers),
					snpCertsDir: opts.snpCerts,
					tdxCollateralDir: opts.tdxCollateral,
					maxConnections: connections(opts.maxConnections),
					trustedProxies:
						opts.trustedProxy === undefined
							? undefined
							: parseTrustedProxies(opts.trustedProxy),
					audit: {
						rotateBytes: mib(opts.auditFileMib),
						keep: whole(opts.auditKeep, "--audit-keep", 0, 10_000),
					},
					log,
				};
				if (opts.adminListen) {
					const a = parseListen(opts.adminListen, "--admin-listen", false) as {
						host: string;
						port: number;
					};
					config.admin = {
						...a,
						token: await readAdminToken(opts.adminTokenFile),
					};
				} else if (opts.adminTokenFile)
					throw new DadiError(
						"USAGE",
						"--admin-token-file needs --admin-listen",
					);
				if (Boolean(opts.tlsCert) !== Boolean(opts.tlsKey))
					throw new DadiError("USAGE", "--tls-cert and --tls-key go together");
				if (opts.tlsCert && opts.tlsKey)
					config.tls = {
						cert: await readPem(opts.tlsCert),
						key: await readPem(opts.tlsKey),
					};
				let stop: (sig: string) => void = () => {};
				const stopped = new Promise<string>((r) => {
					stop = r;
				});
				handleSignals((sig) => stop(sig));
				const running = await startBroker(config).catch((e) => {
					handleSignals(undefined);
					throw e;
				});
				try {
					const ready = {
						ok: true,
						url: running.url,
						admin: running.adminUrl ?? null,
						tees: running.broker.tees,
						policies: running.broker.policies.map((p) => p.name),
						insecureDev: config.insecureDev,
					};
					if (flags.json) printJson(ready);
					else
						process.stdout.write(
							`broker listening on ${ready.url}${ready.admin ? `, admin API on ${ready.admin}` : ""}\n  TEEs      ${ready.tees.join(", ") || "none (no verifier enabled)"}\n  policies  ${ready.policies.join(", ") || "none (everything is denied)"}\n`,
						);
					const sig = await stopped;
					log(`${sig}: shutting down`);
				} finally {
					await running.close();
					handleSignals(undefined);
				}
				log("stopped");
			}),
		);
}

async function withConfig(flags: ServeFlags): Promise<ServeFlags> {
	if (!flags.config) return flags;
	let v: unknown;
	try {
		v = JSON.parse(await readFile(flags.config, "utf8"));
	} catch (e) {
		if (e instanceof SyntaxError)
			throw new DadiError("INPUT_INVALID", `${flags.config}: not JSON`);
		throw fromSystemError(e, flags.config, "reading the config file");
	}
	if (typeof v !== "object" || v === null || Array.isArray(v))
		throw new DadiError(
			"INPUT_INVALID",
			`${flags.config}: expected a JSON object`,
		);
	const out: Record<string, unknown> = {};
	for (const [k, val] of Object.entries(v)) {
		if (!CONFIG_KEYS.includes(k as keyof ServeFlags))
			throw new DadiError(
				"INPUT_INVALID",
				`${flags.config}: unknown key "${k.slice(0, 64)}" (known: ${CONFIG_KEYS.join(", ")})`,
			);
		const ok =
			k === "insecureDev"
				? typeof val === "boolean"
				: typeof val === "string" || typeof val === "number";
		if (!ok)
			throw new DadiError(
				"INPUT_INVALID",
				`${flags.config}: "${k}" has the wrong type`,
			);
		out[k] = typeof val === "number" ? String(val) : val;
	}
	return {
		...(out as ServeFlags),
		...Object.fromEntries(
			Object.entries(flags).filter(([, x]) => x !== undefined),
		),
	};
}

async function readPem(path: string): Promise<Buffer> {
	return readFile(path).catch((e) => {
		throw fromSystemError(e, path, "reading a TLS file");
	});
}

function seconds(v: string | undefined, what: string): number | undefined {
	if (v === undefined) return undefined;
	const n = Number(v);
	if (!Number.isInteger(n) || n < 1 || n > 86_400)
		throw new DadiError(
			"USAGE",
			`${what} "${v}": whole seconds from 1 to 86400`,
		);
	return n;
}

function count(v: string | undefined, what: string): number | undefined {
	if (v === undefined) return undefined;
	const n = Number(v);
	if (!Number.isInteger(n) || n < 1 || n > 10_000_000)
		throw new DadiError(
			"USAGE",
			`${what} "${v}": a whole number from 1 to 10000000`,
		);
	return n;
}

function workers(v: string | undefined): number | undefined {
	if (v === undefined) return undefined;
	const n = Number(v);
	if (!Number.isInteger(n) || n < 0 || n > 64)
		throw new DadiError(
			"USAGE",
			`--crypto-workers "${v}": a whole number from 0 to 64`,
		);
	return n;
}

function whole(
	v: string | undefined,
	what: string,
	min: number,
	max: number,
): number | undefined {
	if (v === undefined) return undefined;
	const n = Number(v);
	if (!Number.isInteger(n) || n < min || n > max)
		throw new DadiError(
			"USAGE",
			`${what} "${v}": a whole number from ${min} to ${max}`,
		);
	return n;
}

function mib(v: string | undefined): number | undefined {
	const n = whole(v, "--audit-file-mib", 1, 65_536);
	return n === undefined ? undefined : n * (1 << 20);
}

function connections(
	v: string | undefined,
): { max: number; perClient: number } | undefined {
	if (v === undefined) return undefined;
	const m = /^(\d{1,6})(?:\/(\d{1,6}))?$/.exec(v);
	const max = m ? Number(m[1]) : 0;
	const perClient = m?.[2] ? Number(m[2]) : Math.min(max, 128);
	if (!m || max < 1 || perClient < 1 || perClient > max)
		throw new DadiError(
			"USAGE",
			`--max-connections "${v}": N or N/PER-CLIENT, 1 ≤ PER-CLIENT ≤ N`,
		);
	return { max, perClient };
}

function rate(
	v: string | undefined,
): { rate: number; burst: number } | undefined {
	if (v === undefined) return undefined;
	const m = /^(\d{1,7})(?:\/(\d{1,7}))?$/.exec(v);
	if (!m)
		throw new DadiError(
			"USAGE",
			`--rate-limit "${v}": N or N/BURST requests per second (0 = off)`,
		);
	const r = Number(m[1]);
	return { rate: r, burst: m[2] ? Number(m[2]) : Math.max(1, r * 2) };
}
