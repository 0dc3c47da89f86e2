/** The options every command that talks to a registry shares, and turning them into a client. */
import { readFile } from "node:fs/promises";
import type { Command } from "commander";
import { DadiError, fromSystemError } from "../errors.js";
import type { RemoteOpenOptions } from "../lazy/open-remote.js";
import type { Reference } from "../oci/reference.js";
import type { RegistryClientOptions } from "../registry/client.js";
import { findCredentials } from "../registry/credentials.js";
import { parseSize } from "./common.js";

export interface RegistryFlags {
	insecure?: boolean;
	caFile?: string[];
	creds?: string;
	authfile?: string;
	retries?: string;
	timeout?: string;
}

export interface LazyFlags extends RegistryFlags {
	cacheDir?: string;
	cacheSize?: string;
	concurrency?: string;
	stallTimeout?: string;
	layers?: string;
	hedgeAfter?: string;
	stats?: string;
}

const collect = (v: string, all: string[]): string[] => [...all, v];

export function addRegistryOptions(c: Command): Command {
	return c
		.option(
			"--insecure",
			"talk plain HTTP to the registry (loopback or test registries only)",
		)
		.option(
			"--ca-file <FILE>",
			"trust this PEM CA certificate for the registry's TLS (repeatable)",
			collect,
			[],
		)
		.option(
			"--creds <USER:PASS>",
			"registry credentials (else from --authfile, $REGISTRY_AUTH_FILE, containers auth.json or docker config.json)",
		)
		.option(
			"--authfile <FILE>",
			"a docker/podman auth file to take credentials from",
		)
		.option(
			"--retries <N>",
			"attempts per request before giving up (default 5)",
		)
		.option(
			"--timeout <SECONDS>",
			"longest wait for response headers or between body bytes (default 30)",
		);
}

export function addLazyOptions(c: Command): Command {
	return addRegistryOptions(c)
		.option(
			"--cache-dir <DIR>",
			"persistent cache of ciphertext chunks (safe on an untrusted disk; verified on every read)",
		)
		.option("--cache-size <SIZE>", "bound of the chunk cache (default 10G)")
		.option("--concurrency <N>", "range requests in flight at once (default 8)")
		.option(
			"--layers <N>",
			"open only the bottom N layers (the disk as it was after layer N)",
		)
		.option(
			"--stall-timeout <SECONDS>",
			"a read fails (EIO) when the registry makes no progress on it for this long (default 5)",
		)
		.option(
			"--hedge-after <SECONDS>",
			"re-issue a range request that made no progress for this long (default 1; 0: never)",
		)
		.option(
			"--stats <FILE>",
			"write fetch statistics as JSON (chunks and bytes fetched, cache hits, requests, latency)",
		);
}

function positiveInt(
	text: string | undefined,
	what: string,
): number | undefined {
	if (text === undefined) return undefined;
	if (!/^\d{1,6}$/.test(text) || Number(text) < 1)
		throw new DadiError(
			"USAGE",
			`${what}: "${text}" is not a positive integer`,
		);
	return Number(text);
}

/** Client options for a registry reference: CA files read, credentials looked up. */
export async function registryClientOptions(
	ref: Reference & { transport: "docker" },
	f: RegistryFlags,
): Promise<RegistryClientOptions> {
	const ca: string[] = [];
	for (const file of f.caFile ?? []) {
		try {
			ca.push(await readFile(file, "utf8"));
		} catch (e) {
			throw fromSystemError(e, file, "reading the CA certificate");
		}
		if (!ca[ca.length - 1]?.includes("-----BEGIN CERTIFICATE-----"))
			throw new DadiError(
				"INPUT_INVALID",
				`${file}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----)`,
			);
	}
	let credentials: Awaited<ReturnType<typeof findCredentials>>;
	try {
		credentials = await findCredentials(ref.registry, {
			creds: f.creds,
			authFile: f.authfile,
		});
	} catch (e) {
		// A default auth file that only names a credential helper for this registry must not stop
		// anonymous pulls; an explicit --creds or --authfile problem must.
		if (
			f.creds ||
			f.authfile ||
			!(e instanceof DadiError) ||
			e.code !== "INPUT_INVALID"
		)
			throw e;
		process.stderr.write(
			`warning: ${e.message}; going on without credentials\n`,
		);
		credentials = undefined;
	}
	const attempts = positiveInt(f.retries, "--retries");
	const seconds = positiveInt(f.timeout, "--timeout");
	return {
		insecure: Boolean(f.insecure),
		ca,
		credentials,
		retry: attempts ? { attempts } : undefined,
		timeouts: seconds
			? {
					headersMs: seconds * 1000,
					bodyMs: seconds * 1000,
					connectMs: seconds * 1000,
					requestMs: Math.max(120_000, seconds * 4000),
				}
			: undefined,
	};
}

export async function lazyOpenOptions(
	ref: Reference & { transport: "docker" },
	f: LazyFlags,
): Promise<RemoteOpenOptions> {
	return {
		...(await registryClientOptions(ref, f)),
		cacheDir: f.cacheDir,
		cacheBytes:
			f.cacheSize === undefined
				? undefined
				: parseSize(f.cacheSize, "--cache-size"),
		concurrency: positiveInt(f.concurrency, "--concurrency"),
		layers: positiveInt(f.layers, "--layers"),
		tuning: {
			...seconds(f.stallTimeout, "--stall-timeout", "stallMs", 0.1),
			...seconds(f.hedgeAfter, "--hedge-after", "hedgeMs", 0),
		},
	};
}

/** A duration flag in seconds (decimals allowed) as `{[key]: ms}`, or nothing when absent. */
function seconds<K extends string>(
	text: string | undefined,
	what: string,
	key: K,
	min: number,
): Partial<Record<K, number>> {
	if (text === undefined) return {};
	const v = Number(text);
	if (!/^\d+(\.\d+)?$/.test(text) || v < min || v > 3600)
		throw new DadiError(
			"USAGE",
			`${what} "${text}": seconds, from ${min} to 3600`,
		);
	return { [key]: Math.round(v * 1000) } as Partial<Record<K, number>>;
}
