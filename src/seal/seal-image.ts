/**
 * Sealing an ordinary container image: its layers are applied one by one to a staging directory
 * with OCI semantics, each state becomes a file-system image (ext4 via `mke2fs -d`, or EROFS), and
 * each file-system image is sealed as one layer over the previous ones, storing only the chunks
 * that changed. `flatten` seals only the final state, as one layer. The original image config
 * travels encrypted in the sealed config.
 */
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ImageKey } from "../crypto/image-key.js";
import { DadiError } from "../errors.js";
import type { CompressionName } from "../format/constants.js";
import type { OpenedImage } from "../image/open-image.js";
import { type LayerNumber, layerLabel } from "../layer-label.js";
import type { Descriptor } from "../oci/digest.js";
import type { Reference } from "../oci/reference.js";
import type { SealedConfig, SealedLayerEntry } from "../oci/sealed-config.js";
import { announce, inLayer, type OnProgress } from "../progress.js";
import type { RegistryClientOptions } from "../registry/client.js";
import type { BlobOrigin } from "../registry/endpoints.js";
import { applyLayer } from "../rootfs/apply.js";
import {
	snapshotTree,
	type TreeSnapshot,
	updateExt4InPlace,
} from "../rootfs/ext4-update.js";
import { buildFilesystem, type FsKind } from "../rootfs/mkfs.js";
import { readTar } from "../rootfs/tar.js";
import { labelsOf } from "../source/image-config.js";
import type { Platform, SourceImage } from "../source/image-source.js";
import { openSourceImage } from "../source/open-source.js";
import { formatPlatform } from "../source/platform.js";
import { trackTemp, untrackTemp } from "../temp-files.js";
import { BaseImage } from "./base-image.js";
import { fsIdentity } from "./fs-identity.js";
import { ImageWriter } from "./image-writer.js";
import { type FsParams, openSealParams } from "./seal-params.js";

export interface SealImageOptions {
	source: Reference;
	platform: Platform;
	dest: Reference & { transport: "oci" };
	key: ImageKey;
	keyRef?: string;
	chunkSize?: number;
	compression?: CompressionName;
	fsType?: FsKind;
	flatten?: boolean;
	sealId?: Buffer;
	/** Publish the source image's labels in the public config (default: publish nothing). */
	publicLabels?: boolean;
	/**
	 * A sealed image (sealed from an image this one starts with) whose layers are reused: an OCI
	 * layout or a registry image (`registry` says how to reach it).
	 */
	baseImage?: {
		ref: Reference;
		key: ImageKey;
		registry?: RegistryClientOptions;
	};
	/** Where the staging directory and file-system images go (default: the OS temp dir). */
	workDir?: string;
	/** How to reach the registry of a docker:// source. */
	registry?: RegistryClientOptions;
	/** Progress; per-layer events carry the source layer (1-based, bottom first). */
	onProgress?: OnProgress;
}

export interface SealedImageLayerReport {
	/** Where it is in the sealed image: 1-based, bottom first. */
	position: number;
	/** The source image's layers it holds (1-based, bottom first; several with --flatten). */
	sourceLayers: number[];
	/** The source layers' stored (compressed) size. */
	sourceBytes: number;
	entry: SealedLayerEntry;
	/** How the layer's file system was made: updated in place from the one below, or rebuilt whole. */
	built: "in-place" | "rebuilt";
	/** Why an upper layer's file system was rebuilt rather than updated in place. */
	rebuildReason?: string;
}

export interface ReusedLayerReport {
	/** Where it is in the sealed image: 1-based, bottom first. */
	position: number;
	/** The source image's layers it holds (1-based, bottom first). */
	sourceLayers: number[];
	digest: string;
}

export interface SealImageResult {
	manifest: Descriptor;
	config: SealedConfig;
	source: string;
	/** How many layers the source image has. */
	sourceLayerCount: number;
	fsType: FsKind;
	fsBytes: number;
	layers: SealedImageLayerReport[];
	/** Sealed layers taken over from --base-image. */
	reusedLayers: number;
	reused: ReusedLayerReport[];
	/** Blobs of the destination layout that came from a registry repository (a registry base's). */
	blobOrigins: ReadonlyMap<string, BlobOrigin>;
}

/** What the layers hold, from a pass over their tar headers (which also verifies their digests). */
interface Census {
	fileBytes: number;
	entries: number;
}

async function census(
	image: SourceImage,
	onProgress?: OnProgress,
): Promise<Census> {
	let fileBytes = 0;
	let entries = 0;
	for (const [i, layer] of image.layers.entries()) {
		const at = { number: i + 1, of: image.layers.length };
		await inLayerContext(at, async () => {
			const stream = await layer.open();
			const report = () =>
				onProgress?.({
					phase: "checking",
					layer: at,
					done: stream.bytesRead(),
					total: layer.size,
				});
			report();
			try {
				for await (const e of readTar(stream.chunks)) {
					entries++;
					fileBytes += Math.ceil(e.size / 4096) * 4096;
					await e.skip();
					report();
				}
				await stream.finish();
				report();
			} finally {
				await stream.close();
			}
		});
	}
	return { fileBytes, entries };
}

/**
 * Runs one layer's work with its name on every error it raises ("layer 2/3: …"), so errors
 * number layers as progress and the report do.
 */
async function inLayerContext<T>(
	at: LayerNumber,
	work: () => Promise<T>,
): Promise<T> {
	try {
		return await work();
	} catch (e) {
		const label = layerLabel(at);
		if (e instanceof DadiError && !e.message.includes(label))
			throw new DadiError(e.code, `${label}: ${e.message}`, { cause: e });
		throw e;
	}
}

/** ext4 size for the largest state any prefix of the layers can reach, with room to spare. */
export function ext4SizeFor(c: Census): { sizeBytes: number; inodes: number } {
	const meta = c.entries * 4096; // an inode, a directory entry and, for many, a block of their own
	const raw = (c.fileBytes + meta) * 1.25 + (32 << 20);
	const mib = 1 << 20;
	return {
		sizeBytes: Math.ceil(raw / (4 * mib)) * 4 * mib,
		inodes: Math.max(1024, Math.ceil(c.entries * 1.25) + 1024),
	};
}

/** The least an ext4 file system must have for the image (no headroom): for reusing a base's. */
export function ext4LeastFor(c: Census): { sizeBytes: number; inodes: number } {
	return {
		sizeBytes: c.fileBytes + c.entries * 4096 + (8 << 20),
		inodes: c.entries + 64,
	};
}

/**
 * How many of the base's sealed layers the source image starts with, and how many source layers
 * they cover. `base` lists, per sealed layer, the source diff_ids it adds (its seal parameters).
 */
export function sharedPrefix(
	base: readonly (readonly string[])[],
	diffIds: readonly string[],
): { layers: number; sourceLayers: number } {
	let layers = 0;
	let covered = 0;
	for (const ids of base) {
		if (!ids || ids.length === 0) break;
		if (
			covered + ids.length > diffIds.length ||
			ids.some((d, j) => diffIds[covered + j] !== d)
		)
			break;
		covered += ids.length;
		layers++;
	}
	return { layers, sourceLayers: covered };
}

export async function sealImage(o: SealImageOptions): Promise<SealImageResult> {
	const fsType = o.fsType ?? "ext4";
	if (process.getuid?.() !== 0)
		throw new DadiError(
			"USAGE",
			"sealing a container image needs root: its files' owners, modes and device nodes are rebuilt in a staging directory (run as root)",
		);
	if (o.flatten && o.baseImage)
		throw new DadiError(
			"USAGE",
			"--flatten and --base-image do not go together: a flattened image shares no layers",
		);
	// The base first: its key and kind are checked before the source is read.
	const baseImage = o.baseImage
		? await openBase(o.baseImage, fsType, o.onProgress)
		: undefined;
	let image: SourceImage | undefined;
	let base: OpenedImage | undefined;
	let work: string | undefined;
	let writer: ImageWriter | undefined;
	try {
		image = await openSourceImage(o.source, o.platform, {
			registry: o.registry,
			workDir: o.workDir,
			onProgress: o.onProgress,
		});
		const n = image.layers.length;
		if (n === 0)
			throw new DadiError(
				"INPUT_INVALID",
				`${image.description}: the image has no layers`,
			);
		const c = await census(image, o.onProgress);
		// A source config that names no architecture is for the platform asked for.
		const platform =
			image.platform.architecture === "unknown" ? o.platform : image.platform;
		let fs: FsParams = {
			...ext4SizeFor(c),
			...fsIdentity(o.key.key, image.config),
		};
		let reuse = { layers: 0, sourceLayers: 0 };
		let baseSources: string[][] = [];
		if (baseImage) {
			const checked = checkBase(baseImage, image, c, fsType, platform);
			reuse = checked.reuse;
			baseSources = checked.sources;
			// Build the new layers exactly like the base's, so they stack on its disks chunk for chunk.
			fs = checked.fs;
			base = await baseImage.open(reuse.layers, o.dest.dir, o.onProgress);
		}
		work = await mkdtemp(join(o.workDir ?? tmpdir(), "dadi-seal-"));
		trackTemp(work);
		const staging = join(work, "rootfs");
		await mkdir(staging, { mode: 0o755 });
		const disk = join(work, "disk.img");
		writer = await ImageWriter.start({
			destDir: o.dest.dir,
			key: o.key,
			chunkSize: o.chunkSize,
			compression: o.compression,
			sealId: o.sealId,
			base:
				base && baseImage
					? { image: base, key: baseImage.key, layers: reuse.layers }
					: undefined,
		});
		await baseImage?.place(reuse.layers, writer.layout);
		const reports: SealedImageLayerReport[] = [];
		let sourceBytes = 0;
		let pending: string[] = [];
		let pendingNumbers: number[] = [];
		let diskHoldsPrevious = false; // `disk` is the file system of the previous sealed layer
		for (const [i, layer] of image.layers.entries()) {
			const at: LayerNumber = { number: i + 1, of: n };
			// Keep unchanged files where they are: update the previous ext4 in place when possible.
			const old =
				fsType === "ext4" && diskHoldsPrevious && !o.flatten
					? snapshotTree(staging)
					: undefined;
			const touched = await inLayerContext(at, () =>
				applySourceLayer(layer, staging, at, o.onProgress),
			);
			if (i < reuse.sourceLayers) continue; // already sealed in the base image
			sourceBytes += layer.size;
			pending.push(layer.diffId);
			pendingNumbers.push(at.number);
			if (o.flatten && i < n - 1) continue;
			const sealedAt: LayerNumber = {
				...at,
				from: pendingNumbers[0] as number,
			};
			const onLayer = inLayer(o.onProgress, sealedAt);
			const made = await inLayerContext(sealedAt, async () => {
				const built = await buildLayerDisk({
					fsType,
					fs,
					disk,
					staging,
					old,
					touched,
					onProgress: onLayer,
				});
				const entry = await (writer as ImageWriter).addDisk(
					disk,
					onLayer,
					pending,
				);
				return { ...built, entry };
			});
			reports.push({
				position: reuse.layers + reports.length + 1,
				sourceLayers: pendingNumbers,
				sourceBytes,
				...made,
			});
			sourceBytes = 0;
			pending = [];
			pendingNumbers = [];
			diskHoldsPrevious = true;
		}
		announce(o.onProgress, "writing the sealed config and manifest");
		const { manifest, config } = await writer.finish({
			tag: o.dest.tag ?? "latest",
			fsType,
			keyRef: o.keyRef,
			imageConfig: image.config,
			platform,
			...(o.publicLabels ? { publicLabels: labelsOf(image.config) } : {}),
			fs,
		});
		const origin = baseImage?.origin;
		return {
			manifest,
			config,
			source: image.description,
			sourceLayerCount: n,
			fsType,
			fsBytes: fs.sizeBytes,
			layers: reports,
			reusedLayers: reuse.layers,
			reused: reusedReport(config, reuse.layers, baseSources),
			blobOrigins: new Map(
				origin
					? config.layers
							.slice(0, reuse.layers)
							.map((l) => [l.digest, origin] as const)
					: [],
			),
		};
	} finally {
		if (work || image) announce(o.onProgress, "removing temporary files");
		await writer?.close();
		await base?.close();
		await baseImage?.close();
		await image?.close();
		if (work) {
			await rm(work, { recursive: true, force: true });
			untrackTemp(work);
		}
	}
}

/** Opens --base-image and checks it can carry this image's layers at all (fs type). */
async function openBase(
	o: NonNullable<SealImageOptions["baseImage"]>,
	fsType: FsKind,
	onProgress?: OnProgress,
): Promise<BaseImage> {
	announce(onProgress, "reading the base image");
	const b = await BaseImage.open({ ...o, option: "--base-image" });
	const bc = b.image.config;
	// The base's file-system parameters and source diff_ids are encrypted: its key opens them.
	if (!openSealParams(b.key.key, bc) || bc.fsType !== fsType) {
		await b.close();
		throw new DadiError(
			"INPUT_INVALID",
			`--base-image: was not sealed from a container image as ${fsType}, so its layers cannot be shared`,
		);
	}
	return b;
}

/**
 * How many of the base's layers this image reuses and the file-system parameters to build with;
 * INPUT_INVALID when it shares none, is for another platform, or its file system is too small.
 */
function checkBase(
	b: BaseImage,
	image: SourceImage,
	c: Census,
	fsType: FsKind,
	platform: SealedConfig["platform"],
): {
	reuse: { layers: number; sourceLayers: number };
	fs: FsParams;
	sources: string[][];
} {
	const bc = b.image.config;
	const params = openSealParams(b.key.key, bc);
	if (!params || bc.fsType !== fsType)
		throw new DadiError(
			"INPUT_INVALID",
			`--base-image: was not sealed from a container image as ${fsType}, so its layers cannot be shared`,
		);
	if (
		bc.platform.os !== platform.os ||
		bc.platform.architecture !== platform.architecture ||
		bc.platform.variant !== platform.variant
	)
		throw new DadiError(
			"INPUT_INVALID",
			`--base-image: is for ${formatPlatform(bc.platform)}, ${image.description} for ${formatPlatform(platform)}`,
		);
	const reuse = sharedPrefix(
		params.layers,
		image.layers.map((l) => l.diffId),
	);
	if (reuse.layers === 0)
		throw new DadiError(
			"INPUT_INVALID",
			`--base-image: ${image.description} does not start with the base image's first layer`,
		);
	const least = ext4LeastFor(c);
	if (
		fsType === "ext4" &&
		(params.fs.sizeBytes < least.sizeBytes || params.fs.inodes < least.inodes)
	)
		throw new DadiError(
			"INPUT_INVALID",
			`--base-image: its file system (${params.fs.sizeBytes} bytes, ${params.fs.inodes} inodes) is too small for this image (at least ${least.sizeBytes} bytes, ${least.inodes} inodes); seal without --base-image`,
		);
	return { reuse, fs: params.fs, sources: params.layers };
}

/** Applies one source layer to the staging tree; returns the paths its entries named. */
async function applySourceLayer(
	layer: SourceImage["layers"][number],
	staging: string,
	at: LayerNumber,
	onProgress?: OnProgress,
): Promise<string[]> {
	const touched: string[] = [];
	const stream = await layer.open();
	const report = () =>
		onProgress?.({
			phase: "applying",
			layer: at,
			done: stream.bytesRead(),
			total: layer.size,
		});
	report();
	try {
		await applyLayer(staging, readTar(stream.chunks), {
			onEntry: (p) => {
				touched.push(p);
				report();
			},
		});
		await stream.finish();
		report();
	} finally {
		await stream.close();
	}
	return touched;
}

/** Makes `disk` the file system of the staging tree: updated in place from the previous layer's when possible. */
async function buildLayerDisk(o: {
	fsType: FsKind;
	fs: FsParams;
	disk: string;
	staging: string;
	old: TreeSnapshot | undefined;
	touched: string[];
	onProgress?: OnProgress;
}): Promise<Pick<SealedImageLayerReport, "built" | "rebuildReason">> {
	let rebuildReason: string | null = o.old
		? null
		: "the first layer, or after reused or flattened layers";
	if (o.old) {
		announce(o.onProgress, `updating ${o.fsType} in place`);
		rebuildReason = await updateExt4InPlace(
			o.disk,
			o.staging,
			o.old,
			o.touched,
			o.fs.timestamp,
			o.onProgress,
		).catch((e: Error) => e.message);
		if (rebuildReason === null) return { built: "in-place" };
	}
	await buildFilesystem({
		fsType: o.fsType,
		staging: o.staging,
		out: o.disk,
		sizeBytes: o.fs.sizeBytes,
		inodes: o.fs.inodes,
		uuid: o.fs.uuid,
		timestamp: o.fs.timestamp,
		onProgress: o.onProgress,
	});
	return { built: "rebuilt", ...(rebuildReason ? { rebuildReason } : {}) };
}

/** The base's layers the sealed image reuses, with the source layers they hold. */
function reusedReport(
	config: SealedConfig,
	n: number,
	/** Per base layer: the source diff_ids it holds (from the base's seal parameters). */
	sources: readonly (readonly string[])[],
): ReusedLayerReport[] {
	let next = 1;
	return config.layers.slice(0, n).map((l, i) => {
		const count = sources[i]?.length ?? 0;
		const sourceLayers = Array.from({ length: count }, (_, k) => next + k);
		next += count;
		return { position: i + 1, sourceLayers, digest: l.digest };
	});
}
