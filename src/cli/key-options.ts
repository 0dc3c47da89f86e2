/**
 * Where a guest command gets the image key: a key file (--key), or a key broker (--broker) that
 * releases it after attestation. The broker path keeps the key in memory only.
 */
import { join } from "node:path";
import type { Command } from "commander";
import { chooseAttester, tsmRootFrom } from "../attest/attester.js";
import { DadiError } from "../errors.js";
import type { KeySource } from "../image/open-image.js";
import { brokerKeySource } from "../kbs/key-provider.js";
import { readKeyFile } from "./common.js";

export interface KeyFlags {
	key?: string;
	keyDir?: string;
	broker?: string;
	attester?: string;
	tsmRoot?: string;
	brokerCa?: string;
	brokerKey?: string;
	brokerRetry?: string;
}

export function addKeyOptions(c: Command): Command {
	return c
		.option("--key <KEYFILE>", "the image key (or use --broker)")
		.option(
			"--key-dir <DIR>",
			"image keys as DIR/<kid>.jwk: the one the image names is used (hosts serving many images)",
		)
		.option(
			"--broker <URL>",
			"get the image key from a KBS-protocol key broker (dadi-broker, Trustee) by attesting this sandbox",
		)
		.option(
			"--attester <auto|snp|tdx|az-snp-vtpm|az-tdx-vtpm|sample>",
			"with --broker: evidence from the TEE found here (auto, default), SEV-SNP (configfs-tsm or /dev/sev-guest), TDX (configfs-tsm), Azure CVMs through the vTPM (az-snp-vtpm, az-tdx-vtpm), or the insecure development 'sample' TEE",
		)
		.option(
			"--tsm-root <DIR>",
			"with --broker: configfs-tsm's report directory (default $DADI_TSM_ROOT or /sys/kernel/config/tsm/report)",
		)
		.option(
			"--broker-ca <PEM>",
			"with --broker: CA certificates for an https broker",
		)
		.option(
			"--broker-key <ec|rsa>",
			"with --broker: the ephemeral key type the key is wrapped to (default ec: ECDH-ES+A256KW; rsa: RSA-OAEP-256)",
		)
		.option(
			"--broker-retry <SECONDS>",
			"with --broker: keep retrying a broker that is unreachable or answers 429/5xx this long (default 30; 0: once); denials are never retried",
		);
}

/** The image key source the flags name, or a USAGE error. */
export async function keySourceFrom(
	f: KeyFlags,
	log?: (line: string) => void,
	/** early: a broker's auth and attest begin at once (the caller cancels what it does not use). */
	o: { early?: boolean } = {},
): Promise<KeySource> {
	if ([f.key, f.keyDir, f.broker].filter(Boolean).length > 1)
		throw new DadiError("USAGE", "give one of --key, --key-dir or --broker");
	if (f.keyDir) {
		if (brokerOnly(f))
			throw new DadiError(
				"USAGE",
				"--attester, --tsm-root, --broker-ca, --broker-key and --broker-retry apply with --broker only",
			);
		const dir = f.keyDir;
		return (image) => readKeyFile(keyFileIn(dir, image.config.key.kid), "open");
	}
	if (f.key) {
		if (brokerOnly(f))
			throw new DadiError(
				"USAGE",
				"--attester, --tsm-root, --broker-ca, --broker-key and --broker-retry apply with --broker only",
			);
		return readKeyFile(f.key, "open");
	}
	if (!f.broker)
		throw new DadiError(
			"USAGE",
			"the image key is needed: --key KEYFILE, --key-dir DIR or --broker URL",
		);
	return brokerKeySource({
		url: f.broker,
		attester: await chooseAttester(f.attester ?? "auto", {
			tsmRoot: tsmRootFrom(f.tsmRoot),
		}),
		caFile: f.brokerCa,
		keyKind: parseKeyKind(f.brokerKey),
		retryForMs: parseBrokerRetry(f.brokerRetry),
		log,
		early: o.early,
	});
}

function brokerOnly(f: KeyFlags): boolean {
	return Boolean(
		f.attester || f.tsmRoot || f.brokerCa || f.brokerKey || f.brokerRetry,
	);
}

/** --broker-retry SECONDS → ms (0 to 3600). */
export function parseBrokerRetry(v: string | undefined): number | undefined {
	if (v === undefined) return undefined;
	if (!/^\d{1,4}(\.\d+)?$/.test(v) || Number(v) > 3600)
		throw new DadiError(
			"USAGE",
			`--broker-retry "${v}": seconds, from 0 to 3600`,
		);
	return Math.round(Number(v) * 1000);
}

/** --broker-key: the guest's ephemeral key type. */
export function parseKeyKind(v: string | undefined): "ec" | "rsa" | undefined {
	if (v !== undefined && v !== "ec" && v !== "rsa")
		throw new DadiError("USAGE", `--broker-key "${v}": expected ec or rsa`);
	return v;
}

/** DIR/<kid>.jwk, with the kid (public, from the image's config) checked to be a plain name. */
export function keyFileIn(dir: string, kid: string): string {
	if (!/^[A-Za-z0-9_-]{1,128}$/.test(kid))
		throw new DadiError(
			"FORMAT_INVALID",
			"the image's key id is not a plain base64url name",
		);
	return join(dir, `${kid}.jwk`);
}
