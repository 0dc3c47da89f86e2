/**
 * Sealing a raw disk image into an OCI image layout, optionally as a new layer over an existing
 * sealed image (`base`): only the chunks that differ from the base's disk are stored. The base's
 * layers are reused as they are (same blobs, same layer ids); their keys are re-wrapped when the
 * new image has another image key.
 */
import { randomBytes } from "node:crypto";
import { copyFile, link, rename, rm } from "node:fs/promises";
import {
	configMac,
	decryptImageConfig,
	encryptImageConfig,
} from "../crypto/config-auth.js";
import type { ImageKey } from "../crypto/image-key.js";
import { wrapLayerKey } from "../crypto/keywrap.js";
import { DadiError, fromSystemError } from "../errors.js";
import { codecVersion } from "../format/codec.js";
import {
	type CompressionName,
	DEFAULT_CHUNK_SIZE,
	isPowerOfTwoChunkSize,
} from "../format/constants.js";
import { type OpenedImage, openSealedImage } from "../image/open-image.js";
import type { Descriptor } from "../oci/digest.js";
import { OciLayout } from "../oci/layout.js";
import { buildManifest } from "../oci/manifest.js";
import {
	MT_OCI_MANIFEST,
	MT_SEALED_CONFIG,
	MT_SEALED_LAYER,
} from "../oci/media-types.js";
import type { Reference } from "../oci/reference.js";
import {
	type FsType,
	type SealedConfig,
	type SealedLayerEntry,
	serializeSealedConfig,
	WRAP_ALG,
} from "../oci/sealed-config.js";
import { FileSource, type RangeSource } from "../storage/source.js";
import { readChunksOrZero } from "../storage/virtual-disk.js";
import { trackTemp, untrackTemp } from "../temp-files.js";
import {
	digestSource,
	layerIdOf,
	layerMaterial,
	lowerIdentity,
	newSealId,
	randomLayerKey,
	reproducibleLayer,
} from "./keys.js";
import { sealLayer } from "./layer-writer.js";

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
	base?: { ref: Reference; key: ImageKey };
	/** A fixed seal id makes the output reproducible (see seal/keys.ts). */
	sealId?: Buffer;
	onProgress?: (phase: string, done: number, total: number) => void;
}

export interface SealDiskResult {
	manifest: Descriptor;
	config: SealedConfig;
	layer: SealedLayerEntry;
	virtualSize: number;
	reusedLayers: number;
}

export function defaultKeyRef(key: ImageKey): string {
	return `kbs:///default/image-key/${key.kid}`;
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
	const disk: RangeSource = await FileSource.open(o.disk);
	let base: OpenedImage | undefined;
	try {
		if (disk.size === 0)
			throw new DadiError(
				"INPUT_INVALID",
				`${o.disk}: the disk image is empty`,
			);
		if (o.base) base = await openSealedImage(o.base.ref, o.base.key);
		const chunkSize =
			o.chunkSize ?? base?.config.chunkSize ?? DEFAULT_CHUNK_SIZE;
		if (base && chunkSize !== base.config.chunkSize)
			throw new DadiError(
				"USAGE",
				`--chunk-size ${chunkSize} differs from the base image's ${base.config.chunkSize}; all layers of an image share one chunk size`,
			);
		const compression = o.compression ?? "zstd";
		const layout = await OciLayout.openOrCreate(o.dest.dir);
		const position = base ? base.config.layers.length : 0;
		const sealId = o.sealId ?? newSealId();
		let layerId: Buffer;
		let layerKey: Buffer;
		if (o.sealId) {
			const total = disk.size;
			const diskDigest = await digestSource(disk, (d) =>
				o.onProgress?.("hashing", d, total),
			);
			const material = layerMaterial({
				position,
				chunkSize,
				codec: codecVersion(compression),
				lower: lowerIdentity(base?.config.layers ?? []),
				diskDigest,
			});
			({ layerId, layerKey } = reproducibleLayer(o.key.key, sealId, material));
		} else {
			layerId = layerIdOf(sealId, position);
			layerKey = randomLayerKey();
		}

		// Reused base layers: same blobs (copied in when the layout differs), keys re-wrapped.
		const layers: SealedLayerEntry[] = [];
		if (base) {
			for (const [i, l] of base.config.layers.entries()) {
				const desc = base.manifest.layers[i] as Descriptor;
				if (!(await layout.hasBlob(desc)))
					await copyBlob(base.layout, layout, desc);
				const wrapped = wrapLayerKey(
					o.key.key,
					Buffer.from(l.layerId, "hex"),
					base.layerKeys[i] as Buffer,
				);
				layers.push({ ...l, wrappedKey: wrapped.toString("base64url") });
			}
		}

		const writer = await layout.createBlobWriter();
		let desc: Descriptor;
		let sealed: Awaited<ReturnType<typeof sealLayer>>;
		try {
			const lowerDisk = base?.disk;
			sealed = await sealLayer({
				disk,
				lower: lowerDisk
					? (first, n) => readChunksOrZero(lowerDisk, first, n)
					: undefined,
				chunkSize,
				compression,
				layerKey,
				layerId,
				sink: writer,
				onProgress: (d, t) => o.onProgress?.("sealing", d, t),
			});
			desc = await writer.commit(MT_SEALED_LAYER);
		} catch (e) {
			await writer.abort();
			throw e;
		}
		const entry: SealedLayerEntry = {
			digest: desc.digest,
			size: desc.size,
			layerId: layerId.toString("hex"),
			virtualSize: disk.size,
			compression,
			wrappedKey: wrapLayerKey(o.key.key, layerId, layerKey).toString(
				"base64url",
			),
			storedChunks: sealed.storedChunks,
			zeroChunks: sealed.zeroChunks,
		};
		layers.push(entry);

		const sealIdHex = sealId.toString("hex");
		// Without a new image config, the base image's carries over (re-encrypted for this image).
		const imageConfig =
			o.imageConfig ??
			(base?.config.imageConfig && o.base
				? decryptImageConfig(
						o.base.key.key,
						base.config.sealId,
						base.config.imageConfig,
					)
				: undefined);
		const body: Omit<SealedConfig, "mac"> = {
			schemaVersion: 1,
			sealId: sealIdHex,
			chunkSize,
			suite: "AES256GCM-HKDFSHA256",
			fsType: o.fsType ?? "raw",
			virtualSize: disk.size,
			key: {
				ref: o.keyRef ?? defaultKeyRef(o.key),
				kid: o.key.kid,
				wrap: WRAP_ALG,
			},
			layers,
			imageConfig: imageConfig
				? encryptImageConfig(o.key.key, sealIdHex, imageConfig)
				: null,
		};
		const config: SealedConfig = { ...body, mac: configMac(o.key.key, body) };
		const configDesc = await layout.writeBlob(
			serializeSealedConfig(config),
			MT_SEALED_CONFIG,
		);
		const manifestDesc = await layout.writeBlob(
			buildManifest(configDesc, layers),
			MT_OCI_MANIFEST,
		);
		await layout.setTag(o.dest.tag ?? "latest", manifestDesc);
		return {
			manifest: manifestDesc,
			config,
			layer: entry,
			virtualSize: disk.size,
			reusedLayers: position,
		};
	} finally {
		await disk.close();
		await base?.close();
	}
}

/** Copies (or hard-links) a base layer blob into another layout, checking its digest first. */
async function copyBlob(
	from: OciLayout,
	to: OciLayout,
	desc: Descriptor,
): Promise<void> {
	await from.checkBlobDigest(desc, "base layer");
	const src = from.blobPath(desc.digest);
	const dst = to.blobPath(desc.digest);
	const tmp = `${dst}.${randomBytes(6).toString("hex")}.tmp`;
	trackTemp(tmp);
	try {
		try {
			await link(src, tmp);
		} catch {
			await copyFile(src, tmp);
		}
		await rename(tmp, dst);
	} catch (e) {
		await rm(tmp, { force: true });
		throw fromSystemError(e, dst, "copying a base layer");
	} finally {
		untrackTemp(tmp);
	}
}
