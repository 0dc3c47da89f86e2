/**
 * Building a sealed image layer by layer in an OCI image layout. Each new disk is sealed against
 * the disk of the layers below it (only differing chunks are stored), the blob is committed, and
 * the layer is opened again to serve as the lower disk of the next one. `finish` writes the config
 * and manifest and points the tag at them; until then the layout's tags are untouched.
 */
import { configMac, openRecord, sealRecord } from "../crypto/config-auth.js";
import type { ImageKey } from "../crypto/image-key.js";
import { wrapLayerKey } from "../crypto/keywrap.js";
import { DadiError } from "../errors.js";
import { codecVersion } from "../format/codec.js";
import {
	type CompressionName,
	DEFAULT_CHUNK_SIZE,
	isPowerOfTwoChunkSize,
} from "../format/constants.js";
import type { OpenedImage } from "../image/open-image.js";
import type { Descriptor } from "../oci/digest.js";
import { MAX_JSON_BLOB, OciLayout } from "../oci/layout.js";
import { buildManifest } from "../oci/manifest.js";
import {
	MT_OCI_CONFIG,
	MT_OCI_MANIFEST,
	MT_SEALED_LAYER,
} from "../oci/media-types.js";
import {
	parsePublicConfig,
	serializePublicConfig,
} from "../oci/public-config.js";
import {
	CONFIG_SCHEMA_VERSION,
	type FsType,
	type SealedConfig,
	type SealedLayerEntry,
	type SealedPlatform,
	WRAP_ALG,
} from "../oci/sealed-config.js";
import type { OnProgress } from "../progress.js";
import { SealedLayer } from "../storage/sealed-layer.js";
import { FileSource, type RangeSource } from "../storage/source.js";
import { readChunksOrZero, VirtualDisk } from "../storage/virtual-disk.js";
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
import {
	type FsParams,
	openSealParams,
	sealSealParams,
} from "./seal-params.js";
import {
	DEFAULT_WRITER_POLICY,
	type WriterPolicy,
	writerPolicyId,
} from "./writer-policy.js";

export interface ImageWriterOptions {
	destDir: string;
	key: ImageKey;
	chunkSize?: number;
	compression?: CompressionName;
	/** A fixed seal id makes the output reproducible (seal/keys.ts). */
	sealId?: Buffer;
	/** What decides chunk payloads besides their bytes (tests; default: this writer's). */
	writerPolicy?: WriterPolicy;
	/**
	 * An opened sealed image whose layers (the first `layers`, default all) become the bottom of
	 * this one; their blobs must already be in the destination layout (BaseImage.place).
	 */
	base?: { image: OpenedImage; key: ImageKey; layers?: number };
}

export interface FinishOptions {
	tag: string;
	fsType: FsType;
	keyRef?: string;
	/** The platform the public config states. */
	platform: SealedPlatform;
	/** Labels to publish in the public config (`--public-labels`); none by default. */
	publicLabels?: Record<string, string>;
	/** The original OCI image config; without one, the base's carries over. */
	imageConfig?: Buffer;
	/**
	 * Container images: the file-system parameters of the layers' disks; written, with each layer's
	 * source diff_ids, into the encrypted seal parameters.
	 */
	fs?: FsParams;
}

export function defaultKeyRef(key: ImageKey): string {
	return `kbs:///default/image-key/${key.kid}`;
}

export class ImageWriter {
	readonly layers: SealedLayerEntry[] = [];
	/** Per layer: the source diff_ids it adds (container images), aligned with `layers`. */
	readonly sourceDiffIds: string[][] = [];
	readonly #opened: SealedLayer[] = [];
	readonly #sources: RangeSource[] = [];
	readonly #sealId: Buffer;

	private constructor(
		readonly layout: OciLayout,
		readonly o: ImageWriterOptions,
		readonly chunkSize: number,
		readonly compression: CompressionName,
	) {
		this.#sealId = o.sealId ?? newSealId();
	}

	get reusedLayers(): number {
		const b = this.o.base;
		return b ? (b.layers ?? b.image.config.layers.length) : 0;
	}

	static async start(o: ImageWriterOptions): Promise<ImageWriter> {
		if (o.chunkSize !== undefined && !isPowerOfTwoChunkSize(o.chunkSize))
			throw new DadiError(
				"USAGE",
				`chunk size ${o.chunkSize} must be a power of two from 4096 to 1048576`,
			);
		const base = o.base?.image;
		const chunkSize =
			o.chunkSize ?? base?.config.chunkSize ?? DEFAULT_CHUNK_SIZE;
		if (base && chunkSize !== base.config.chunkSize)
			throw new DadiError(
				"USAGE",
				`--chunk-size ${chunkSize} differs from the base image's ${base.config.chunkSize}; all layers of an image share one chunk size`,
			);
		const layout = await OciLayout.openOrCreate(o.destDir);
		const w = new ImageWriter(layout, o, chunkSize, o.compression ?? "zstd");
		if (base && o.base) {
			// Reused base layers: same blobs (the caller placed them in the layout), keys re-wrapped,
			// their source diff_ids carried over from the base's seal parameters.
			const n = o.base.layers ?? base.config.layers.length;
			const baseParams = openSealParams(o.base.key.key, base.config);
			for (const [i, l] of base.config.layers.slice(0, n).entries()) {
				const wrapped = wrapLayerKey(
					o.key.key,
					Buffer.from(l.layerId, "hex"),
					base.layerKeys[i] as Buffer,
				);
				w.layers.push({ ...l, wrappedKey: wrapped.toString("base64url") });
				w.sourceDiffIds.push(baseParams?.layers[i] ?? []);
			}
			w.#opened.push(...base.disk.layers.slice(0, n));
		}
		return w;
	}

	/** The disk of the layers so far, or undefined before the first layer. */
	#lowerDisk(): VirtualDisk | undefined {
		return this.#opened.length > 0 ? new VirtualDisk(this.#opened) : undefined;
	}

	/** Seals `diskPath` as the next layer; returns its config entry. */
	async addDisk(
		diskPath: string,
		onProgress?: OnProgress,
		sourceDiffIds?: string[],
	): Promise<SealedLayerEntry> {
		const disk = await FileSource.open(diskPath);
		try {
			if (disk.size === 0)
				throw new DadiError(
					"INPUT_INVALID",
					`${diskPath}: the disk image is empty`,
				);
			const position = this.layers.length;
			const lower = this.#lowerDisk();
			let layerId: Buffer;
			let layerKey: Buffer;
			if (this.o.sealId) {
				const total = disk.size;
				const diskDigest = await digestSource(disk, (d) =>
					onProgress?.({ phase: "hashing", done: d, total }),
				);
				const material = layerMaterial({
					position,
					chunkSize: this.chunkSize,
					codec: codecVersion(this.compression),
					policy: writerPolicyId(this.o.writerPolicy ?? DEFAULT_WRITER_POLICY),
					lower: lowerIdentity(this.layers),
					diskDigest,
				});
				({ layerId, layerKey } = reproducibleLayer(
					this.o.key.key,
					this.#sealId,
					material,
				));
			} else {
				layerId = layerIdOf(this.#sealId, position);
				layerKey = randomLayerKey();
			}
			const writer = await this.layout.createBlobWriter();
			let desc: Descriptor;
			let sealed: Awaited<ReturnType<typeof sealLayer>>;
			try {
				sealed = await sealLayer({
					disk,
					lower: lower
						? (first, n) => readChunksOrZero(lower, first, n)
						: undefined,
					chunkSize: this.chunkSize,
					compression: this.compression,
					layerKey,
					layerId,
					policy: this.o.writerPolicy,
					sink: writer,
					onProgress: (d, t) =>
						onProgress?.({ phase: "sealing", done: d, total: t }),
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
				compression: this.compression,
				wrappedKey: wrapLayerKey(this.o.key.key, layerId, layerKey).toString(
					"base64url",
				),
				storedChunks: sealed.storedChunks,
				zeroChunks: sealed.zeroChunks,
			};
			const src = await this.layout.openBlob(
				desc,
				`sealed layer ${position + 1} (${desc.digest.slice(0, 19)})`,
			);
			this.#sources.push(src);
			this.#opened.push(
				await SealedLayer.open(src, layerKey, {
					layerId,
					chunkSize: this.chunkSize,
					virtualSize: disk.size,
					compression: this.compression,
				}),
			);
			this.layers.push(entry);
			this.sourceDiffIds.push(sourceDiffIds ?? []);
			return entry;
		} finally {
			await disk.close();
		}
	}

	/** Writes config and manifest, then points the tag at the manifest. */
	async finish(
		f: FinishOptions,
	): Promise<{ manifest: Descriptor; config: SealedConfig }> {
		const top = this.layers[this.layers.length - 1];
		if (!top)
			throw new DadiError("INTERNAL", "an image needs at least one layer");
		const sealIdHex = this.#sealId.toString("hex");
		const base = this.o.base;
		const key = this.o.key.key;
		const imageConfig =
			f.imageConfig ??
			(base?.image.config.imageConfig
				? openRecord(
						base.key.key,
						"image-config",
						base.image.config.sealId,
						base.image.config.imageConfig,
					)
				: undefined);
		const body: Omit<SealedConfig, "mac"> = {
			schemaVersion: CONFIG_SCHEMA_VERSION,
			sealId: sealIdHex,
			chunkSize: this.chunkSize,
			suite: "AES256GCM-HKDFSHA256",
			fsType: f.fsType,
			virtualSize: top.virtualSize,
			platform: f.platform,
			...(f.publicLabels ? { publicLabels: f.publicLabels } : {}),
			key: {
				ref: f.keyRef ?? defaultKeyRef(this.o.key),
				kid: this.o.key.kid,
				wrap: WRAP_ALG,
			},
			layers: this.layers,
			imageConfig: imageConfig
				? sealRecord(key, "image-config", sealIdHex, imageConfig)
				: null,
			...(f.fs
				? {
						sealParams: sealSealParams(key, sealIdHex, {
							fs: f.fs,
							layers: this.sourceDiffIds,
						}),
					}
				: {}),
		};
		const config: SealedConfig = { ...body, mac: configMac(key, body) };
		const configBytes = serializePublicConfig(config);
		// Readers refuse larger JSON documents, platforms and labels they cannot check: say so now
		// rather than write an image nobody can read.
		if (configBytes.length > MAX_JSON_BLOB)
			throw new DadiError(
				"INPUT_INVALID",
				`the sealed config would be ${configBytes.length} bytes, more than the ${MAX_JSON_BLOB} a reader accepts (is the image config or are the labels that large?)`,
			);
		try {
			parsePublicConfig(configBytes);
		} catch (e) {
			throw new DadiError(
				"INPUT_INVALID",
				`cannot seal this image: a reader would refuse its config (${(e as Error).message})`,
			);
		}
		const configDesc = await this.layout.writeBlob(configBytes, MT_OCI_CONFIG);
		const manifest = await this.layout.writeBlob(
			buildManifest(configDesc, this.layers),
			MT_OCI_MANIFEST,
		);
		await this.layout.setTag(f.tag, manifest);
		return { manifest, config };
	}

	async close(): Promise<void> {
		await Promise.all(
			this.#sources.splice(0).map((s) => s.close().catch(() => {})),
		);
	}
}
