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
import { type OpenedImage, openSealedImage } from "../image/open-image.js";
import type { Descriptor } from "../oci/digest.js";
import type { Reference } from "../oci/reference.js";
import type { SealedConfig, SealedLayerEntry } from "../oci/sealed-config.js";
import type { RegistryClientOptions } from "../registry/client.js";
import { applyLayer } from "../rootfs/apply.js";
import { snapshotTree, updateExt4InPlace } from "../rootfs/ext4-update.js";
import { buildFilesystem, type FsKind } from "../rootfs/mkfs.js";
import { readTar } from "../rootfs/tar.js";
import { labelsOf } from "../source/image-config.js";
import type { Platform, SourceImage } from "../source/image-source.js";
import { openSourceImage } from "../source/open-source.js";
import { formatPlatform } from "../source/platform.js";
import { trackTemp, untrackTemp } from "../temp-files.js";
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
	/** A sealed image (sealed from an image this one starts with) whose layers are reused. */
	baseImage?: { ref: Reference; key: ImageKey };
	/** Where the staging directory and file-system images go (default: the OS temp dir). */
	workDir?: string;
	/** How to reach the registry of a docker:// source. */
	registry?: RegistryClientOptions;
	onProgress?: (phase: string, done: number, total: number) => void;
}

export interface SealedImageLayerReport {
	/** The source layer's stored (compressed) size. */
	sourceBytes: number;
	entry: SealedLayerEntry;
	/** How the layer's file system was made: updated in place from the one below, or rebuilt whole. */
	built: "in-place" | "rebuilt";
	/** Why an upper layer's file system was rebuilt rather than updated in place. */
	rebuildReason?: string;
}

export interface SealImageResult {
	manifest: Descriptor;
	config: SealedConfig;
	source: string;
	fsType: FsKind;
	fsBytes: number;
	layers: SealedImageLayerReport[];
	/** Sealed layers taken over from --base-image. */
	reusedLayers: number;
}

/** What the layers hold, from a pass over their tar headers (which also verifies their digests). */
interface Census {
	fileBytes: number;
	entries: number;
}

async function census(
	image: SourceImage,
	onProgress?: SealImageOptions["onProgress"],
): Promise<Census> {
	let fileBytes = 0;
	let entries = 0;
	for (const [i, layer] of image.layers.entries()) {
		onProgress?.(`checking layer ${i + 1}/${image.layers.length}`, 0, 0);
		const stream = await layer.open();
		try {
			for await (const e of readTar(stream.chunks)) {
				entries++;
				fileBytes += Math.ceil(e.size / 4096) * 4096;
				await e.skip();
			}
			await stream.finish();
		} finally {
			await stream.close();
		}
	}
	return { fileBytes, entries };
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
	const image = await openSourceImage(o.source, o.platform, {
		registry: o.registry,
		workDir: o.workDir,
		onProgress: o.onProgress,
	});
	let base: OpenedImage | undefined;
	let work: string | undefined;
	let writer: ImageWriter | undefined;
	try {
		if (image.layers.length === 0)
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
		if (o.baseImage) {
			base = await openSealedImage(o.baseImage.ref, o.baseImage.key);
			const bc = base.config;
			// The base's file-system parameters and source diff_ids are encrypted: its key opens them.
			const params = openSealParams(o.baseImage.key.key, bc);
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
			reuse = sharedPrefix(
				params.layers,
				image.layers.map((l) => l.diffId),
			);
			if (reuse.layers === 0)
				throw new DadiError(
					"INPUT_INVALID",
					`--base-image: ${image.description} does not start with the base image's first layer`,
				);
			if (o.flatten)
				throw new DadiError(
					"USAGE",
					"--flatten and --base-image do not go together: a flattened image shares no layers",
				);
			const least = ext4LeastFor(c);
			if (
				fsType === "ext4" &&
				(params.fs.sizeBytes < least.sizeBytes ||
					params.fs.inodes < least.inodes)
			)
				throw new DadiError(
					"INPUT_INVALID",
					`--base-image: its file system (${params.fs.sizeBytes} bytes, ${params.fs.inodes} inodes) is too small for this image (at least ${least.sizeBytes} bytes, ${least.inodes} inodes); seal without --base-image`,
				);
			// Build the new layers exactly like the base's, so they stack on its disks chunk for chunk.
			fs = params.fs;
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
				base && o.baseImage
					? { image: base, key: o.baseImage.key, layers: reuse.layers }
					: undefined,
		});
		const reports: SealedImageLayerReport[] = [];
		let sourceBytes = 0;
		let pending: string[] = [];
		let diskHoldsPrevious = false; // `disk` is the file system of the previous sealed layer
		for (const [i, layer] of image.layers.entries()) {
			const label = `layer ${i + 1}/${image.layers.length}`;
			o.onProgress?.(`${label}: applying`, 0, 0);
			// Keep unchanged files where they are: update the previous ext4 in place when possible.
			const old =
				fsType === "ext4" && diskHoldsPrevious && !o.flatten
					? snapshotTree(staging)
					: undefined;
			const touched: string[] = [];
			const stream = await layer.open();
			try {
				await applyLayer(staging, readTar(stream.chunks), {
					onEntry: (p) => touched.push(p),
				});
				await stream.finish();
			} finally {
				await stream.close();
			}
			if (i < reuse.sourceLayers) continue; // already sealed in the base image
			sourceBytes += layer.size;
			pending.push(layer.diffId);
			if (o.flatten && i < image.layers.length - 1) continue;
			o.onProgress?.(`${label}: building ${fsType}`, 0, 0);
			let built: SealedImageLayerReport["built"] = "rebuilt";
			let rebuildReason: string | null = old
				? null
				: "the first layer, or after reused or flattened layers";
			if (old)
				rebuildReason = await updateExt4InPlace(
					disk,
					staging,
					old,
					touched,
					fs.timestamp,
				).catch((e: Error) => e.message);
			if (old && rebuildReason === null) built = "in-place";
			else
				await buildFilesystem({
					fsType,
					staging,
					out: disk,
					sizeBytes: fs.sizeBytes,
					inodes: fs.inodes,
					uuid: fs.uuid,
					timestamp: fs.timestamp,
				});
			const entry = await writer.addDisk(
				disk,
				(phase, d, t) => o.onProgress?.(`${label}: ${phase}`, d, t),
				pending,
			);
			reports.push({
				sourceBytes,
				entry,
				built,
				...(built === "rebuilt" && rebuildReason ? { rebuildReason } : {}),
			});
			sourceBytes = 0;
			pending = [];
			diskHoldsPrevious = true;
		}
		const { manifest, config } = await writer.finish({
			tag: o.dest.tag ?? "latest",
			fsType,
			keyRef: o.keyRef,
			imageConfig: image.config,
			platform,
			...(o.publicLabels ? { publicLabels: labelsOf(image.config) } : {}),
			fs,
		});
		return {
			manifest,
			config,
			source: image.description,
			fsType,
			fsBytes: fs.sizeBytes,
			layers: reports,
			reusedLayers: reuse.layers,
		};
	} finally {
		await writer?.close();
		await base?.close();
		await image.close();
		if (work) {
			await rm(work, { recursive: true, force: true });
			untrackTemp(work);
		}
	}
}
