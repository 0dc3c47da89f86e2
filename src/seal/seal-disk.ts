/**
 * Sealing a raw disk image into an OCI image layout, optionally as a new layer over an existing
 * sealed image (`base`): only the chunks that differ from the base's disk are stored. The base's
 * layers are reused as they are (same blobs, same layer ids); their keys are re-wrapped when the
 * new image has another image key.
 */
import type { ImageKey } from "../crypto/image-key.js";
import { DadiError } from "../errors.js";
import {
	type CompressionName,
	isPowerOfTwoChunkSize,
} from "../format/constants.js";
import type { OpenedImage } from "../image/open-image.js";
import type { Descriptor } from "../oci/digest.js";
import type { Reference } from "../oci/reference.js";
import type {
	FsType,
	SealedConfig,
	SealedLayerEntry,
	SealedPlatform,
} from "../oci/sealed-config.js";
import type { OnProgress } from "../progress.js";
import type { RegistryClientOptions } from "../registry/client.js";
import { hostPlatform } from "../source/platform.js";
import { FileSource } from "../storage/source.js";
import { BaseImage } from "./base-image.js";
import { ImageWriter } from "./image-writer.js";
import type { WriterPolicy } from "./writer-policy.js";

export { defaultKeyRef } from "./image-writer.js";

export interface SealDiskOptions {
	disk: string;
	dest: Reference & { transport: "oci" };
	key: ImageKey;
	keyRef?: string;
	chunkSize?: number;
	compression?: CompressionName;
	fsType?: FsType;
	/** Original OCI image config to carry encrypted. */
	imageConfig?: Buffer;
	/** The platform the public config states (default: the base's, else this host's). */
	platform?: SealedPlatform;
	/** The sealed image to build on: an OCI layout, or a registry (then `registry` says how to reach it). */
	base?: { ref: Reference; key: ImageKey; registry?: RegistryClientOptions };
	/** A fixed seal id makes the output reproducible (see seal/keys.ts). */
	sealId?: Buffer;
	/** What decides chunk payloads besides their bytes (tests; default: this writer's). */
	writerPolicy?: WriterPolicy;
	onProgress?: OnProgress;
}

export interface SealDiskResult {
	manifest: Descriptor;
	config: SealedConfig;
	layer: SealedLayerEntry;
	virtualSize: number;
	reusedLayers: number;
}

export async function sealDisk(o: SealDiskOptions): Promise<SealDiskResult> {
	if (o.chunkSize !== undefined && !isPowerOfTwoChunkSize(o.chunkSize))
		throw new DadiError(
			"USAGE",
			`chunk size ${o.chunkSize} must be a power of two from 4096 to 1048576`,
		);
	if (o.dest.digest !== undefined)
		throw new DadiError(
			"USAGE",
			"a seal destination names a tag (oci:DIR:TAG), not a digest",
		);
	// Inputs first: nothing is created when the disk or the base cannot be read.
	const probe = await FileSource.open(o.disk);
	const size = probe.size;
	await probe.close();
	if (size === 0)
		throw new DadiError("INPUT_INVALID", `${o.disk}: the disk image is empty`);
	const baseImage = o.base
		? await BaseImage.open({ ...o.base, option: "--base" })
		: undefined;
	let base: OpenedImage | undefined;
	let writer: ImageWriter | undefined;
	try {
		const n = baseImage?.image.config.layers.length ?? 0;
		base = await baseImage?.open(n, o.dest.dir, o.onProgress);
		writer = await ImageWriter.start({
			destDir: o.dest.dir,
			key: o.key,
			chunkSize: o.chunkSize,
			compression: o.compression,
			sealId: o.sealId,
			writerPolicy: o.writerPolicy,
			base: base && baseImage ? { image: base, key: baseImage.key } : undefined,
		});
		await baseImage?.place(n, writer.layout);
		const layer = await writer.addDisk(o.disk, o.onProgress);
		const { manifest, config } = await writer.finish({
			tag: o.dest.tag ?? "latest",
			fsType: o.fsType ?? "raw",
			keyRef: o.keyRef,
			imageConfig: o.imageConfig,
			platform: o.platform ?? base?.config.platform ?? hostPlatform(),
		});
		return {
			manifest,
			config,
			layer,
			virtualSize: layer.virtualSize,
			reusedLayers: writer.reusedLayers,
		};
	} finally {
		await writer?.close();
		await base?.close();
		await baseImage?.close();
	}
}
