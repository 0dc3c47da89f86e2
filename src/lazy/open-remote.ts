/**
 * Opening a sealed image straight from a registry: the manifest is resolved once (a tag becomes
 * the digest it named at that moment, and every later read is pinned to it), manifest and config
 * are fetched whole and checked, then each layer's header, trailer and index are fetched with
 * range requests and the disk is served chunk by chunk through the caches.
 */
import { createHash } from "node:crypto";
import { DadiError } from "../errors.js";
import { HEADER_SIZE, TRAILER_SIZE } from "../format/constants.js";
import {
	decodeTrailer,
	indexLengthOf,
	indexOffsetOf,
} from "../format/trailer.js";
import {
	checkSealedImage,
	type KeySource,
	type OpenedImage,
	openLayers,
	parseManifestBytes,
	resolveKey,
	type SealedImageRef,
} from "../image/open-image.js";
import { layerAt } from "../layer-label.js";
import type { Descriptor } from "../oci/digest.js";
import {
	type DockerReference,
	formatDockerReference,
} from "../oci/docker-reference.js";
import { MT_OCI_MANIFEST } from "../oci/media-types.js";
import type { SealedLayerEntry } from "../oci/sealed-config.js";
import { blobStream } from "../registry/blob-download.js";
import {
	RegistryClient,
	type RegistryClientOptions,
} from "../registry/client.js";
import {
	type ChunkCache,
	DiskChunkCache,
	MemoryChunkCache,
} from "./chunk-cache.js";
import { Limiter } from "./limiter.js";
import {
	DEFAULT_TUNING,
	type LazyContext,
	type LazyTuning,
	RemoteBlob,
} from "./remote-blob.js";
import { StallLog } from "./stall-log.js";
import { LazyStats } from "./stats.js";

export interface RemoteOpenOptions extends RegistryClientOptions {
	/** Persistent cache of ciphertext chunks (safe on an untrusted disk). */
	cacheDir?: string;
	cacheBytes?: number;
	/** Memory for read-ahead and recent chunks. */
	memoryBytes?: number;
	/** Range requests in flight at once, for the whole image. */
	concurrency?: number;
	tuning?: Partial<LazyTuning>;
	stats?: LazyStats;
	/** Where stalled registry requests are reported (first at once, then summed up). */
	log?: (line: string) => void;
	/** Open only the bottom `layers` layers: the disk as it was after that layer. */
	layers?: number;
	/**
	 * Told as soon as manifest and config are fetched and checked (before the key is asked for
	 * and the layers opened), with the client: e.g. to look up the image's trace referrer
	 * concurrently. Must not throw; the client is closed with the image.
	 */
	onImage?: (image: SealedImageRef, client: RegistryClient) => void;
}

export const DEFAULT_CACHE_BYTES = 10 * 2 ** 30;
export const DEFAULT_MEMORY_BYTES = 64 << 20;
/** What a trace replay prefetches at most when the chunks can only wait in memory (no disk cache). */
export const MEMORY_ONLY_PREFETCH_BYTES = (DEFAULT_MEMORY_BYTES * 3) / 4;
export const DEFAULT_CONCURRENCY = 8;

export interface RemoteImage extends OpenedImage {
	stats: LazyStats;
	/** The reference pinned to the manifest digest actually read. */
	pinned: DockerReference;
}

/** Manifest and sealed config from the registry, checked; the tag resolved once to a digest. */
export async function fetchSealedImage(
	client: RegistryClient,
	ref: DockerReference,
): Promise<SealedImageRef & { pinned: DockerReference }> {
	const reference = ref.digest ?? ref.tag ?? "latest";
	const { descriptor, bytes } = await client.getManifest(
		ref.repository,
		reference,
		[MT_OCI_MANIFEST],
	);
	const pinned: DockerReference = { ...ref, digest: descriptor.digest };
	const manifest = parseManifestBytes(bytes);
	const configBytes = await client.readBlob(ref.repository, manifest.config);
	return {
		...checkSealedImage(manifest, configBytes),
		name: formatDockerReference(pinned),
		manifestDesc: descriptor,
		pinned,
	};
}

/** The public facts of a registry image (for inspect); needs no key. */
export async function loadRemoteSealedImage(
	ref: DockerReference,
	o: RegistryClientOptions = {},
): Promise<SealedImageRef> {
	const client = new RegistryClient(ref.registry, o);
	try {
		return await fetchSealedImage(client, ref);
	} finally {
		await client.close();
	}
}

export async function openRemoteSealedImage(
	ref: DockerReference,
	key: KeySource,
	o: RemoteOpenOptions = {},
): Promise<RemoteImage> {
	const stats = o.stats ?? new LazyStats();
	const client = new RegistryClient(ref.registry, {
		...o,
		onExchange: (e) => {
			stats.requests++;
			stats.bytesFetched += e.bytes;
			if (e.what === "range") stats.latency(e.ms);
			o.onExchange?.(e);
		},
		onRetry: (e, delay) => {
			stats.retries++;
			o.onRetry?.(e, delay);
		},
	});
	let disk: ChunkCache | undefined;
	const memory = new MemoryChunkCache(o.memoryBytes ?? DEFAULT_MEMORY_BYTES);
	try {
		const image = await fetchSealedImage(client, ref);
		o.onImage?.(image, client);
		const pinned = image.pinned;
		if (o.cacheDir)
			disk = await DiskChunkCache.open(
				o.cacheDir,
				o.cacheBytes ?? DEFAULT_CACHE_BYTES,
			);
		const ctx: LazyContext = {
			client,
			repo: ref.repository,
			stats,
			memory,
			disk,
			limiter: new Limiter(o.concurrency ?? DEFAULT_CONCURRENCY, {
				demandWaited: (ms, behind) => stats.demandWaited(ms, behind),
			}),
			tuning: { ...DEFAULT_TUNING, ...o.tuning },
			stallLog: new StallLog(o.log),
		};
		const count = layerCount(o.layers, image.config.layers.length);
		const blobs = image.config.layers
			.slice(0, count)
			.map(
				(l, i) =>
					new RemoteBlob(
						ctx,
						image.manifest.layers[i] as Descriptor,
						`${layerAt(i, image.config.layers.length)} (${l.digest.slice(0, 19)}…)`,
					),
			);
		// The layers' header, trailer and index are fetched while the key is being obtained (a
		// broker exchange takes round trips of its own); the open below then finds them cached and
		// checks them as always.
		const warm = blobs.map((b, i) =>
			warmLayerMetadata(b, image.config.layers[i] as SealedLayerEntry),
		);
		const imageKey = await resolveKey(key, image);
		await Promise.all(warm);
		const opened = await openLayers(
			image,
			imageKey,
			async (_desc, i) => blobs[i] as RemoteBlob,
			(desc, what, onBytes) =>
				checkRemoteBlob(client, ref.repository, desc, what, onBytes),
			count,
		);
		return {
			...opened,
			stats,
			pinned,
			close: async () => {
				ctx.closed = true;
				await opened.close();
				await disk?.close();
				await memory.close();
				await client.close();
			},
		};
	} catch (e) {
		await disk?.close().catch(() => {});
		await client.close();
		throw e;
	}
}

/**
 * Fetches a layer's header, trailer and (located by the trailer) index into the caches, without
 * trusting them: nothing is decided here. The bytes are checked when the layer is opened with its
 * key, which reads them again from the cache. An index larger than the sealed config allows is not
 * fetched; any failure is left for the open to meet and report.
 */
async function warmLayerMetadata(
	blob: RemoteBlob,
	entry: SealedLayerEntry,
): Promise<void> {
	try {
		if (blob.size < HEADER_SIZE + TRAILER_SIZE) return;
		const [, tail] = await Promise.all([
			blob.read(0, HEADER_SIZE),
			blob.read(blob.size - TRAILER_SIZE, TRAILER_SIZE),
		]);
		const trailer = decodeTrailer(tail, blob.size);
		if (trailer.extentCount > entry.storedChunks + entry.zeroChunks) return;
		await blob.read(indexOffsetOf(trailer), indexLengthOf(trailer));
	} catch {
		// the open fetches and checks again, and reports what is wrong
	}
}

/** Downloads a whole blob and checks it against its digest (for `verify`). */
async function checkRemoteBlob(
	client: RegistryClient,
	repo: string,
	desc: Descriptor,
	what: string,
	onBytes?: (n: number) => void,
): Promise<void> {
	const h = createHash("sha256");
	let n = 0;
	for await (const chunk of blobStream(client, repo, desc)) {
		h.update(chunk);
		n += chunk.length;
		onBytes?.(chunk.length);
	}
	if (n !== desc.size || `sha256:${h.digest("hex")}` !== desc.digest)
		throw new DadiError(
			"DIGEST_MISMATCH",
			`${what}: the registry's blob does not match its digest ${desc.digest}`,
		);
}

/** The number of bottom layers to open: all, or 1..all as asked. */
export function layerCount(asked: number | undefined, all: number): number {
	if (asked === undefined) return all;
	if (!Number.isSafeInteger(asked) || asked < 1 || asked > all)
		throw new DadiError(
			"USAGE",
			`--layers ${asked}: the image has ${all} layer${all === 1 ? "" : "s"}; give 1 to ${all}`,
		);
	return asked;
}
