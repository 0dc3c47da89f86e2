/**
 * Opening a sealed image from an OCI image layout: manifest and config checked against their
 * digests, the public config checked against the sealed config it carries, the sealed config's MAC
 * checked under the image key, layer keys unwrapped, layers opened and merged into one virtual disk.
 */

import { checkConfigMac } from "../crypto/config-auth.js";
import type { ImageKey } from "../crypto/image-key.js";
import { unwrapLayerKey } from "../crypto/keywrap.js";
import { DadiError } from "../errors.js";
import { layerAt } from "../layer-label.js";
import type { Descriptor } from "../oci/digest.js";
import { OciLayout, parseJson } from "../oci/layout.js";
import { parseSealedManifest, type SealedManifest } from "../oci/manifest.js";
import { ANNOTATION_LAYER_ID } from "../oci/media-types.js";
import { parsePublicConfig } from "../oci/public-config.js";
import { formatReference, type Reference } from "../oci/reference.js";
import type { SealedConfig } from "../oci/sealed-config.js";
import { SealedLayer } from "../storage/sealed-layer.js";
import type { RangeSource } from "../storage/source.js";
import { VirtualDisk } from "../storage/virtual-disk.js";
import {
	decryptImageConfigBytes,
	parseDecryptedImageConfig,
} from "./image-config.js";

export interface SealedImageRef {
	/** Where the image is, for messages. */
	name: string;
	/** The layout it was read from (local images only). */
	layout?: OciLayout;
	manifestDesc: Descriptor;
	manifest: SealedManifest;
	/** The sealed config (the public config's `io.dadi.sealed` member), parsed and checked. */
	config: SealedConfig;
	/** The config blob as stored: the public OCI image config. */
	configBytes: Buffer;
}

/** Reads and checks manifest and config from an OCI layout; needs no key. */
export async function loadSealedImage(ref: Reference): Promise<SealedImageRef> {
	if (ref.transport !== "oci")
		throw new DadiError(
			"USAGE",
			"a sealed image is read from an oci: reference here",
		);
	const layout = await OciLayout.open(ref.dir);
	const manifestDesc = await layout.resolve(ref);
	const manifestBytes = await layout.readBlob(manifestDesc, "manifest");
	const manifest = parseManifestBytes(manifestBytes);
	const configBytes = await layout.readBlob(manifest.config, "image config");
	return {
		...checkSealedImage(manifest, configBytes),
		name: formatReference(ref),
		layout,
		manifestDesc,
	};
}

export function parseManifestBytes(bytes: Buffer): SealedManifest {
	return parseSealedManifest(parseJson(bytes, "manifest"), "manifest");
}

/**
 * Parses the config blob (the public config and the sealed config in it, which must agree) and
 * checks that the manifest names the same layers, layer by layer (pure).
 */
export function checkSealedImage(
	manifest: SealedManifest,
	configBytes: Buffer,
): { manifest: SealedManifest; config: SealedConfig; configBytes: Buffer } {
	const config = parsePublicConfig(configBytes);
	if (config.layers.length !== manifest.layers.length)
		throw new DadiError(
			"LAYOUT_INVALID",
			"manifest and sealed config list different numbers of layers",
		);
	config.layers.forEach((l, i) => {
		const d = manifest.layers[i] as Descriptor;
		if (d.digest !== l.digest || d.size !== l.size)
			throw new DadiError(
				"LAYOUT_INVALID",
				`manifest ${layerAt(i, config.layers.length)} is not the layer the sealed config names`,
			);
		const ann = d.annotations?.[ANNOTATION_LAYER_ID];
		if (ann !== undefined && ann !== l.layerId)
			throw new DadiError(
				"LAYOUT_INVALID",
				`manifest ${layerAt(i, config.layers.length)}: its annotation names another layer id`,
			);
	});
	return { manifest, config, configBytes };
}

/** Checks that `key` is the image's key and that the config is authentic under it. */
export function authenticateConfig(image: SealedImageRef, key: ImageKey): void {
	if (key.kid !== image.config.key.kid)
		throw new DadiError(
			"KEY_MISMATCH",
			`the image was sealed for key ${image.config.key.kid}, but the key given is ${key.kid}`,
		);
	checkConfigMac(key.key, image.config);
}

/**
 * The original OCI image config, decrypted, after checking that `key` is the image's key and the
 * sealed config authentic: the exact bytes that were sealed, or null for a raw disk.
 */
export function openImageConfigBytes(
	image: SealedImageRef,
	key: ImageKey,
): Buffer | null {
	authenticateConfig(image, key);
	return decryptImageConfigBytes(image.config, key.key);
}

/** As openImageConfigBytes, parsed: a JSON object, or null for a raw disk. */
export function openImageConfig(
	image: SealedImageRef,
	key: ImageKey,
): Record<string, unknown> | null {
	const bytes = openImageConfigBytes(image, key);
	return bytes === null ? null : parseDecryptedImageConfig(bytes);
}

/** Unwraps every layer's key (after authenticateConfig). */
export function unwrapLayerKeys(
	image: SealedImageRef,
	key: ImageKey,
): Buffer[] {
	return image.config.layers.map((l) =>
		unwrapLayerKey(
			key.key,
			Buffer.from(l.layerId, "hex"),
			Buffer.from(l.wrappedKey, "base64url"),
		),
	);
}

export interface OpenedImage extends SealedImageRef {
	disk: VirtualDisk;
	layerKeys: Buffer[];
	/**
	 * The original OCI image config (entrypoint, env, labels, …) the image was sealed from,
	 * decrypted; null for a raw disk. AUTH_FAILED if the encrypted record was changed.
	 */
	imageConfig(): Promise<Record<string, unknown> | null>;
	/** Hashes a whole blob against its descriptor (DIGEST_MISMATCH), reporting bytes as it goes. */
	checkBlobDigest(
		desc: Descriptor,
		what: string,
		onBytes?: (n: number) => void,
	): Promise<void>;
	close(): Promise<void>;
}

/**
 * Where the image key comes from: a key in hand, or a provider asked once the image's public
 * facts (key reference, key id, manifest digest) are known — e.g. a key broker.
 */
export type KeySource =
	| ImageKey
	| ((image: SealedImageRef) => Promise<ImageKey>);

export function resolveKey(
	key: KeySource,
	image: SealedImageRef,
): Promise<ImageKey> {
	return typeof key === "function" ? key(image) : Promise.resolve(key);
}

/** Opens a local image for reading with its key: every layer's header, trailer and index checked. */
export async function openSealedImage(
	ref: Reference,
	key: KeySource,
): Promise<OpenedImage> {
	const image = await loadSealedImage(ref);
	const layout = image.layout as OciLayout;
	return openLayers(
		image,
		await resolveKey(key, image),
		(desc, i) => layout.openBlob(desc, layerAt(i, image.config.layers.length)),
		(desc, what, onBytes) => layout.checkBlobDigest(desc, what, onBytes),
	);
}

/**
 * Authenticates the config under the key, unwraps the layer keys and opens the layers from the
 * sources `openSource` gives (files, or lazy registry blobs): all of them, or the first `count`
 * (the disk is then the disk of those layers: a base that an image reuses part of).
 */
export async function openLayers(
	image: SealedImageRef,
	key: ImageKey,
	openSource: (desc: Descriptor, index: number) => Promise<RangeSource>,
	checkBlobDigest: OpenedImage["checkBlobDigest"],
	count = image.config.layers.length,
): Promise<OpenedImage> {
	authenticateConfig(image, key);
	const layerKeys = unwrapLayerKeys(image, key);
	const sources: RangeSource[] = [];
	try {
		// Every layer's header, trailer and index at once (a chain of round trips otherwise); the
		// first failure in layer order is the one reported, after all have settled.
		const settled = await Promise.allSettled(
			image.config.layers.slice(0, count).map(async (l, i) => {
				const src = await openSource(image.manifest.layers[i] as Descriptor, i);
				sources.push(src);
				const opened = await SealedLayer.open(src, layerKeys[i] as Buffer, {
					layerId: Buffer.from(l.layerId, "hex"),
					chunkSize: image.config.chunkSize,
					virtualSize: l.virtualSize,
					compression: l.compression,
					maxExtents: l.storedChunks + l.zeroChunks,
				});
				if (
					opened.storedChunks !== l.storedChunks ||
					opened.zeroChunks !== l.zeroChunks
				)
					throw new DadiError(
						"LAYER_MISMATCH",
						`${layerAt(i, image.config.layers.length)}: its index does not match the chunk counts in the sealed config`,
					);
				return opened;
			}),
		);
		const layers: SealedLayer[] = [];
		for (const r of settled) {
			if (r.status === "rejected") throw r.reason;
			layers.push(r.value);
		}
		const disk = new VirtualDisk(layers);
		return {
			...image,
			disk,
			layerKeys,
			imageConfig: async () => openImageConfig(image, key),
			checkBlobDigest,
			close: async () => {
				await Promise.all(sources.map((s) => s.close()));
			},
		};
	} catch (e) {
		await Promise.all(sources.map((s) => s.close().catch(() => {})));
		throw e;
	}
}
