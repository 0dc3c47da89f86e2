/**
 * The sealed image a new one is built on (`--base`, `--base-image`), from an OCI layout or a
 * registry. First only its manifest and config are read and authenticated under its key, so a
 * wrong key or an unusable base fails before anything is built. Then the layers the new image
 * reuses are opened as the lower disk of the new layers — read in place from a layout; downloaded
 * into the destination layout (every blob checked against its digest) from a registry — and their
 * blobs placed in the destination layout: hard-linked or copied from a layout, already there from
 * a registry, and remembered as coming from that registry repository so a push to the same
 * registry can mount them instead of uploading them again.
 */
import { randomBytes } from "node:crypto";
import { copyFile, link, rename, rm } from "node:fs/promises";
import type { ImageKey } from "../crypto/image-key.js";
import { DadiError, fromSystemError } from "../errors.js";
import {
	authenticateConfig,
	loadSealedImage,
	type OpenedImage,
	openLayers,
	type SealedImageRef,
} from "../image/open-image.js";
import { layerAt } from "../layer-label.js";
import { fetchSealedImage } from "../lazy/open-remote.js";
import type { Descriptor } from "../oci/digest.js";
import type { DockerReference } from "../oci/docker-reference.js";
import { OciLayout } from "../oci/layout.js";
import type { Reference } from "../oci/reference.js";
import type { OnProgress } from "../progress.js";
import {
	RegistryClient,
	type RegistryClientOptions,
} from "../registry/client.js";
import {
	type BlobOrigin,
	LayoutEndpoint,
	RegistryEndpoint,
} from "../registry/endpoints.js";
import { trackTemp, untrackTemp } from "../temp-files.js";

export interface BaseImageOptions {
	ref: Reference;
	key: ImageKey;
	/** How to reach the registry of a docker:// base. */
	registry?: RegistryClientOptions;
	/** The option that named it, for messages ("--base-image"). */
	option: string;
}

export class BaseImage {
	/** Where a registry base's blobs were downloaded (and checked) by open(). */
	#downloadedTo?: string;

	private constructor(
		readonly image: SealedImageRef,
		readonly key: ImageKey,
		readonly option: string,
		private readonly remote?: { client: RegistryClient; ref: DockerReference },
	) {}

	/** Reads the base's manifest and config and authenticates them under its key. */
	static async open(o: BaseImageOptions): Promise<BaseImage> {
		if (o.ref.transport === "oci") {
			const image = await loadSealedImage(o.ref);
			authenticateConfig(image, o.key);
			return new BaseImage(image, o.key, o.option);
		}
		if (o.ref.transport !== "docker")
			throw new DadiError(
				"USAGE",
				`${o.option}: must be oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]`,
			);
		const client = new RegistryClient(o.ref.registry, o.registry);
		try {
			const image = await fetchSealedImage(client, o.ref);
			authenticateConfig(image, o.key);
			return new BaseImage(image, o.key, o.option, {
				client,
				ref: image.pinned,
			});
		} catch (e) {
			await client.close();
			throw e;
		}
	}

	/** Where its blobs can be mounted from, for a registry base. */
	get origin(): BlobOrigin | undefined {
		return this.remote
			? {
					registry: this.remote.ref.registry,
					repository: this.remote.ref.repository,
				}
			: undefined;
	}

	/**
	 * Opens the base's first `n` layers as a disk, every header, trailer and index
	 * checked. A registry base's blobs are downloaded into the layout at `destDir` first.
	 */
	async open(
		n: number,
		destDir: string,
		onProgress?: OnProgress,
	): Promise<OpenedImage> {
		const descs = this.image.manifest.layers.slice(0, n) as Descriptor[];
		const of = this.image.manifest.layers.length;
		const name = (i: number) => `${this.option} ${layerAt(i, of)}`;
		let layout = this.image.layout;
		if (this.remote) {
			layout = await OciLayout.openOrCreate(destDir);
			const to = await LayoutEndpoint.destination({ dir: destDir });
			const from = new RegistryEndpoint(this.remote.client, this.remote.ref);
			for (const [i, d] of descs.entries()) {
				if (await layout.hasBlob(d)) continue;
				const phase = `pulling the base image's ${layerAt(i, of)}`;
				onProgress?.({ phase, done: 0, total: d.size });
				await to.writeBlob(d, from, (done) =>
					onProgress?.({ phase, done, total: d.size }),
				);
			}
			this.#downloadedTo = destDir;
		}
		const from = layout as OciLayout;
		return openLayers(
			this.image,
			this.key,
			(desc, i) => from.openBlob(desc, name(i)),
			(desc, what, onBytes) => from.checkBlobDigest(desc, what, onBytes),
			n,
		);
	}

	/**
	 * Makes the layout at `dest` hold the blobs of the first `n` layers. From a layout they are
	 * checked against their digests, then hard-linked (or copied); a registry base's are there.
	 */
	async place(n: number, dest: OciLayout): Promise<void> {
		if (this.remote && this.#downloadedTo === dest.dir) return;
		const descs = this.image.manifest.layers.slice(0, n) as Descriptor[];
		const from = this.image.layout;
		for (const d of descs) {
			if (await dest.hasBlob(d)) continue;
			if (!from)
				throw new DadiError(
					"INTERNAL",
					`${this.option}: blob ${d.digest} was not downloaded`,
				);
			await copyBlob(from, dest, d);
		}
	}

	async close(): Promise<void> {
		await this.remote?.client.close();
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
