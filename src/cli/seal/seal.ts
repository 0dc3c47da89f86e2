import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Command } from "commander";
import { AdminClient, readAdminToken } from "../../broker/admin-client.js";
import { type ImageKey, toJwk } from "../../crypto/image-key.js";
import { DadiError, fromSystemError } from "../../errors.js";
import {
	type CompressionName,
	isPowerOfTwoChunkSize,
} from "../../format/constants.js";
import { resourcePathOf } from "../../kbs/client.js";
import { parseReference, type Reference } from "../../oci/reference.js";
import { KEY_REF_RE } from "../../oci/sealed-config.js";
import { announce, type ProgressEvent } from "../../progress.js";
import type { BlobOrigin } from "../../registry/endpoints.js";
import type { FsKind } from "../../rootfs/mkfs.js";
import { parseSealId } from "../../seal/keys.js";
import { sealDisk } from "../../seal/seal-disk.js";
import { sealImage } from "../../seal/seal-image.js";
import { hostPlatform, parsePlatform } from "../../source/platform.js";
import { trackTemp, untrackTemp } from "../../temp-files.js";
import { parseSize, readKeyFile, runAction } from "../common.js";
import { Progress } from "../progress.js";
import {
	addRegistryOptions,
	type RegistryFlags,
	registryClientOptions,
} from "../registry-options.js";
import { PushTarget } from "./push-target.js";
import {
	elapsed,
	type Published,
	type RegisteredKey,
	reportDisk,
	reportImage,
} from "./seal-report.js";

interface SealOpts extends RegistryFlags {
	key: string;
	chunkSize?: string;
	compress: string;
	base?: string;
	baseImage?: string;
	baseKey?: string;
	keyRef?: string;
	broker?: string;
	brokerTokenFile?: string;
	brokerCa?: string;
	sealId?: string;
	platform?: string;
	publicLabels?: boolean;
	fs: string;
	flatten?: boolean;
	workDir?: string;
	json?: boolean;
	quiet?: boolean;
}

export function sealCommand(program: Command): void {
	const c = program
		.command("seal")
		.description(
			"seal a container image or a disk image into an encrypted, lazily readable OCI image",
		)
		.argument(
			"<SRC>",
			"oci:DIR[:TAG], docker://HOST/REPO[:TAG|@DIGEST] or docker-archive:FILE[:NAME:TAG] (a container image), or raw:DISK.img (a disk image)",
		)
		.argument(
			"<DEST>",
			"oci:DIR[:TAG] — the OCI image layout to write (created if missing; tag defaults to latest) — or docker://HOST/REPO[:TAG] to push to (sealed in a staging layout, then pushed)",
		)
		.requiredOption(
			"--key <KEYFILE>",
			"image key (JWK from 'dadi-seal keygen')",
		)
		.option(
			"--chunk-size <N>",
			"chunk size, a power of two from 4k to 1M (default 64k, or the base image's)",
		)
		.option("--compress <ALG>", "per-chunk compression: zstd or none", "zstd")
		.option(
			"--platform <OS/ARCH[/VARIANT]>",
			"container images: which platform of a multi-platform index (default: the host's); raw disks: the platform the public image config states (default: the base's, else the host's)",
		)
		.option(
			"--public-labels",
			"container images: copy the source image's labels into the public image config (default: publish none; labels may say what the image is)",
		)
		.option(
			"--fs <TYPE>",
			"container images: file system of the sealed disk, ext4 or erofs",
			"ext4",
		)
		.option(
			"--flatten",
			"container images: seal the final file system as one layer instead of one layer per image layer",
		)
		.option(
			"--work-dir <DIR>",
			"container images: where the staging directory and file-system images go (default: the temp dir)",
		)
		.option(
			"--base <REF>",
			"raw disks: oci:DIR[:TAG] — add the disk as a new layer over this sealed image, storing only changed chunks",
		)
		.option(
			"--base-image <REF>",
			"container images: oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST] of a sealed image whose source this image starts with; its sealed layers are reused (mounted, not uploaded again, when pushing to its registry)",
		)
		.option(
			"--base-key <KEYFILE>",
			"key of the base image (--base or --base-image), when it differs from --key",
		)
		.option(
			"--key-ref <URI>",
			"key broker resource for the image key, kbs:///REPO/TYPE/TAG (default kbs:///default/image-key/<kid>)",
		)
		.option(
			"--broker <URL>",
			"register the image key with a dadi-broker's admin API (http[s]://HOST:PORT) under --key-ref once sealed",
		)
		.option(
			"--broker-token-file <FILE>",
			"with --broker: the admin token (or $DADI_BROKER_ADMIN_TOKEN)",
		)
		.option(
			"--broker-ca <PEM>",
			"with --broker: CA certificates for an https admin API",
		)
		.option(
			"--seal-id <HEX>",
			"32 hex digits: reproducible output (same input, key and seal id give identical blobs)",
		)
		.option(
			"--json",
			"print the result as JSON (and progress on stderr as JSON lines)",
		)
		.option("--quiet", "no progress on stderr");
	addRegistryOptions(c).action(
		async (srcText: string, destText: string, opts: SealOpts) =>
			runAction("dadi-seal seal", Boolean(opts.json), async () => {
				const src = parseReference(srcText);
				const target = parseReference(destText);
				if (target.transport !== "oci" && target.transport !== "docker")
					throw new DadiError(
						"USAGE",
						`destination "${destText}": must be oci:DIR[:TAG] or docker://HOST/REPO[:TAG]`,
					);
				if (target.transport === "docker" && target.digest)
					throw new DadiError(
						"USAGE",
						`destination "${destText}": name a tag, not a digest`,
					);
				if (opts.compress !== "zstd" && opts.compress !== "none")
					throw new DadiError(
						"USAGE",
						`--compress "${opts.compress}": use zstd or none`,
					);
				if (opts.fs !== "ext4" && opts.fs !== "erofs")
					throw new DadiError("USAGE", `--fs "${opts.fs}": use ext4 or erofs`);
				if (opts.keyRef !== undefined && !KEY_REF_RE.test(opts.keyRef))
					throw new DadiError(
						"USAGE",
						`--key-ref "${opts.keyRef}": expected kbs:///REPO/TYPE/TAG`,
					);
				if (opts.baseKey && !opts.base && !opts.baseImage)
					throw new DadiError(
						"USAGE",
						"--base-key needs --base or --base-image",
					);
				const chunkSize =
					opts.chunkSize === undefined
						? undefined
						: parseSize(opts.chunkSize, "--chunk-size");
				if (chunkSize !== undefined && !isPowerOfTwoChunkSize(chunkSize))
					throw new DadiError(
						"USAGE",
						`--chunk-size ${chunkSize}: must be a power of two from 4k to 1M`,
					);
				const sealId = opts.sealId ? parseSealId(opts.sealId) : undefined;
				const platform = opts.platform
					? parsePlatform(opts.platform)
					: hostPlatform();
				const isDisk = src.transport === "raw";
				if (!isDisk && opts.base)
					throw new DadiError(
						"USAGE",
						"--base applies to raw: disks; a container image brings its own layers",
					);
				if (
					isDisk &&
					(opts.flatten ||
						opts.fs !== "ext4" ||
						opts.workDir ||
						opts.baseImage ||
						opts.publicLabels)
				)
					throw new DadiError(
						"USAGE",
						"--fs, --flatten, --work-dir, --base-image and --public-labels apply to container images, not raw: disks",
					);
				const baseRef = opts.base ? parseReference(opts.base) : undefined;
				if (baseRef && baseRef.transport !== "oci")
					throw new DadiError(
						"USAGE",
						`--base "${opts.base}": must be oci:DIR[:TAG]`,
					);
				const baseImageRef = opts.baseImage
					? parseReference(opts.baseImage)
					: undefined;
				if (
					baseImageRef &&
					baseImageRef.transport !== "oci" &&
					baseImageRef.transport !== "docker"
				)
					throw new DadiError(
						"USAGE",
						`--base-image "${opts.baseImage}": must be oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]`,
					);
				if ((opts.brokerTokenFile || opts.brokerCa) && !opts.broker)
					throw new DadiError(
						"USAGE",
						"--broker-token-file and --broker-ca apply with --broker only",
					);
				// Every input is read, and a registry destination checked, before anything is built.
				const key = await readKeyFile(opts.key);
				const baseKey = opts.baseKey
					? await readKeyFile(opts.baseKey, "open")
					: key;
				const adminToken = opts.broker
					? await readAdminToken(opts.brokerTokenFile)
					: undefined;
				const registry =
					src.transport === "docker"
						? await registryClientOptions(src, opts)
						: undefined;
				const baseImage = baseImageRef
					? {
							ref: baseImageRef,
							key: baseKey,
							registry:
								baseImageRef.transport === "docker"
									? await registryClientOptions(baseImageRef, opts)
									: undefined,
						}
					: undefined;
				const progress = new Progress(!opts.quiet, Boolean(opts.json));
				const onProgress = (e: ProgressEvent) => progress.report(e);
				const pushTarget =
					target.transport === "docker"
						? await PushTarget.open(target, destText, opts)
						: undefined;
				let staging: string | undefined;
				try {
					await pushTarget?.check(onProgress);
					// A registry destination: seal into a private staging layout, push it, remove it.
					if (pushTarget) staging = await makeStaging(opts.workDir);
					const dest: Reference & { transport: "oci" } =
						target.transport === "oci"
							? target
							: { transport: "oci", dir: staging as string, tag: "sealed" };
					const started = performance.now();
					const publish = async (
						keyRef: string,
						origins: ReadonlyMap<string, BlobOrigin> = new Map(),
					): Promise<Published> => {
						const pushed = await pushTarget?.push(
							dest.dir,
							"sealed",
							origins,
							onProgress,
						);
						const registered = await register(
							opts,
							adminToken,
							key,
							keyRef,
							onProgress,
						);
						return { pushed, registered };
					};
					const common = {
						dest,
						key,
						keyRef: opts.keyRef,
						chunkSize,
						compression: opts.compress as CompressionName,
						sealId,
						onProgress,
					};
					if (isDisk) {
						const r = await sealDisk({
							...common,
							disk: (src as Reference & { transport: "raw" }).path,
							base: baseRef ? { ref: baseRef, key: baseKey } : undefined,
							...(opts.platform ? { platform } : {}),
						});
						const published = await publish(r.config.key.ref);
						progress.done();
						reportDisk(
							r,
							srcText,
							destText,
							tagOf(target),
							elapsed(started),
							opts.json,
							published,
						);
						return;
					}
					const r = await sealImage({
						...common,
						source: src,
						platform,
						fsType: opts.fs as FsKind,
						flatten: opts.flatten,
						publicLabels: opts.publicLabels,
						workDir: opts.workDir,
						baseImage,
						registry,
					});
					const published = await publish(r.config.key.ref, r.blobOrigins);
					progress.done();
					reportImage(
						r,
						destText,
						tagOf(target),
						elapsed(started),
						opts.json,
						published,
					);
				} finally {
					progress.done();
					await pushTarget?.close();
					if (staging) await removeStaging(staging);
				}
			}),
	);
}

/** Stores the image key at the broker (after the image is complete: a key without its image is harmless). */
async function register(
	opts: SealOpts,
	adminToken: string | undefined,
	key: ImageKey,
	keyRef: string,
	onProgress: (e: ProgressEvent) => void,
): Promise<RegisteredKey | undefined> {
	if (!opts.broker || !adminToken) return undefined;
	announce(onProgress, `registering the image key at ${opts.broker}`);
	const resource = resourcePathOf(keyRef);
	const client = await AdminClient.open({
		url: opts.broker,
		token: adminToken,
		caFile: opts.brokerCa,
	});
	const jwk = Buffer.from(JSON.stringify(toJwk(key)));
	try {
		await client.putResource(resource, jwk);
	} catch (e) {
		const err = e as DadiError;
		throw new DadiError(
			err.code ?? "NETWORK",
			`the image is sealed, but registering its key failed: ${err.message}; register it with 'dadi-broker resource put ${keyRef} --image-key KEYFILE --admin ${opts.broker}'`,
		);
	} finally {
		jwk.fill(0);
		await client.close();
	}
	return { broker: opts.broker, resource, kid: key.kid };
}

function tagOf(r: Reference): string | undefined {
	return r.transport === "oci" || r.transport === "docker" ? r.tag : undefined;
}

async function makeStaging(workDir: string | undefined): Promise<string> {
	const base = workDir ?? tmpdir();
	try {
		const dir = await mkdtemp(join(base, "dadi-push-"));
		trackTemp(dir);
		return dir;
	} catch (e) {
		throw fromSystemError(e, base, "creating a staging layout");
	}
}

async function removeStaging(dir: string): Promise<void> {
	await rm(dir, { recursive: true, force: true });
	untrackTemp(dir);
}
