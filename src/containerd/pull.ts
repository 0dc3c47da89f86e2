/**
 * Pulling an image into containerd with unpacking through a snapshotter, as containerd's own
 * client.Pull with unpack does it (pull.go, unpacker.go) — the path on which a remote snapshotter
 * can claim layers so that they are never downloaded, which `ctr images pull` (fetch everything,
 * then unpack without the snapshot labels) never takes:
 *
 * 1. containerd is asked its version (is it there?) and its snapshotters (is ours one?);
 * 2. the reference is resolved in the registry, an index narrowed to the platform's manifest, and
 *    the config read for its diff IDs (chain IDs follow);
 * 3. under a lease (so nothing is collected half-way), the index(es), manifest and config go into
 *    containerd's content store with the labels containerd's pull gives them (labels.ts);
 * 4. each layer, bottom first, is unpacked (unpack.ts): claimed by the snapshotter, or downloaded
 *    and applied by containerd;
 * 5. the config is labelled with the top chain ID for the snapshotter, the image record created or
 *    updated to point at the manifest (or index), and the lease released.
 *
 * I/O goes through the two clients passed in; what labels and names to write is computed by the
 * pure modules beside this one.
 */
import { randomBytes } from "node:crypto";
import { DadiError } from "../errors.js";
import { layerAt } from "../layer-label.js";
import type { Descriptor } from "../oci/digest.js";
import { announce, type OnProgress } from "../progress.js";
import type { Platform } from "../source/image-source.js";
import { chainIds } from "./chain-id.js";
import type { ContainerdClient } from "./client.js";
import { writeBlob } from "./content-write.js";
import type { PullReference } from "./image-name.js";
import {
	kindOf,
	parseDiffIds,
	parseImageManifest,
	parseIndex,
	selectEntry,
} from "./image-parts.js";
import {
	appendDistributionSource,
	childGcLabels,
	distributionSourceKey,
	LABEL_GC_EXPIRE,
	labelFits,
	layerSnapshotLabels,
	snapshotGcKey,
} from "./labels.js";
import type { PullSource } from "./pull-source.js";
import { type LayerOutcome, unpackLayer } from "./unpack.js";

export const SNAPSHOTTER_PLUGIN_TYPE = "io.containerd.snapshotter.v1";
/** containerd's default lease lifetime for a pull (client.WithLease). */
const LEASE_HOURS = 24;
/** Indexes inside indexes, at most. */
const MAX_INDEX_DEPTH = 4;

export interface PullOptions {
	ref: PullReference;
	platform: Platform;
	snapshotter: string;
	source: PullSource;
	containerd: ContainerdClient;
	onProgress?: OnProgress;
	/** Warnings (a label that does not fit), for stderr. */
	warn?: (line: string) => void;
}

export interface PulledLayer {
	digest: string;
	size: number;
	mediaType: string;
	diffId: string;
	chainId: string;
	outcome: LayerOutcome;
	/** Bytes of this layer downloaded from the registry. */
	downloaded: number;
}

export interface PullResult {
	name: string;
	/** What the image record points at: the manifest, or the index the reference named. */
	target: Descriptor;
	manifest: Descriptor;
	config: Descriptor;
	/** The top layer's chain ID: the snapshot a container of this image starts from. */
	chainId: string;
	layers: PulledLayer[];
	/** Bytes downloaded from the registry (manifests, config and layers). */
	downloaded: number;
	image: "created" | "updated";
	containerd: string;
}

/** Checks containerd is reachable and has the snapshotter; its version. */
export async function checkContainerd(
	c: ContainerdClient,
	snapshotter: string,
): Promise<string> {
	const v = await c.version();
	const plugins = await c.plugins([`type==${SNAPSHOTTER_PLUGIN_TYPE}`]);
	const p = plugins.find((x) => x.id === snapshotter);
	if (!p)
		throw new DadiError(
			"INPUT_NOT_FOUND",
			`containerd at ${c.socket} has no snapshotter "${snapshotter}" (it has: ${
				plugins
					.map((x) => x.id)
					.sort()
					.join(", ") || "none"
			}); configure dadi-snapshotter as [proxy_plugins.${snapshotter}] in containerd's config (docs/snapshotter.md §1), or name another with --snapshotter`,
		);
	if (p.initError)
		throw new DadiError(
			"PRECONDITION_FAILED",
			`containerd's snapshotter "${snapshotter}" failed to load: ${p.initError}`,
		);
	return v.version;
}

interface Resolved {
	/** Indexes from the one the reference names down, each with its children's labels. */
	indexes: {
		desc: Descriptor;
		bytes: Buffer;
		labels: Record<string, string>;
	}[];
	manifest: { desc: Descriptor; bytes: Buffer };
}

async function resolve(
	source: PullSource,
	platform: Platform,
	what: string,
): Promise<{ top: Descriptor; resolved: Resolved; downloaded: number }> {
	let { descriptor: desc, bytes } = await source.top();
	const top = desc;
	let downloaded = bytes.length;
	const indexes: Resolved["indexes"] = [];
	for (let depth = 0; kindOf(desc.mediaType, what) === "index"; depth++) {
		if (depth >= MAX_INDEX_DEPTH)
			throw new DadiError("LAYOUT_INVALID", `${what}: indexes nested too deep`);
		const entries = parseIndex(bytes, `${what}: index ${desc.digest}`);
		indexes.push({
			desc,
			bytes,
			labels: childGcLabels(entries.map((e) => e.descriptor)),
		});
		const child = selectEntry(entries, platform, what);
		desc = {
			mediaType: child.mediaType,
			digest: child.digest,
			size: child.size,
		};
		bytes = await source.manifest(desc);
		downloaded += bytes.length;
	}
	return {
		top: { mediaType: top.mediaType, digest: top.digest, size: top.size },
		resolved: { indexes, manifest: { desc, bytes } },
		downloaded,
	};
}

/** containerd's ingest refs (remotes.MakeRefKey). */
function ingestRef(kind: string, desc: Descriptor): string {
	return `${kind}-${desc.digest}`;
}

export async function pullImage(o: PullOptions): Promise<PullResult> {
	const { containerd: c, snapshotter, ref, source } = o;
	const what = `${source.name}:${ref.digest ?? ref.tag ?? "latest"}`;
	announce(o.onProgress, `asking containerd at ${c.socket}`);
	const version = await checkContainerd(c, snapshotter);

	announce(o.onProgress, `resolving ${ref.name}`);
	const {
		top,
		resolved,
		downloaded: metaBytes,
	} = await resolve(source, o.platform, what);
	const manifestDesc = resolved.manifest.desc;
	const manifest = parseImageManifest(
		resolved.manifest.bytes,
		`${what}: manifest ${manifestDesc.digest}`,
	);
	const configBytes = await source.config(manifest.config);
	const diffIds = parseDiffIds(
		configBytes,
		manifest.layers.length,
		`${what}: config ${manifest.config.digest}`,
	);
	const chains = chainIds(diffIds);
	let downloaded = metaBytes + configBytes.length;

	const lease = `dadi-pull-${Date.now()}-${randomBytes(6).toString("hex")}`;
	const expires = new Date(Date.now() + LEASE_HOURS * 3600_000);
	await c.leaseCreate(lease, {
		[LABEL_GC_EXPIRE]: expires.toISOString().replace(/\.\d+Z$/, "Z"),
	});
	c.useLease(lease);
	try {
		const sourceKey = distributionSourceKey(ref.registry);
		/** Labels plus the distribution source merged into what the blob has. */
		const withSource = (
			labels: Record<string, string>,
			existing: Record<string, string> | undefined,
		): Record<string, string> => {
			const value = appendDistributionSource(
				existing?.[sourceKey],
				ref.repository,
			);
			if (labelFits(sourceKey, value)) return { ...labels, [sourceKey]: value };
			o.warn?.(
				`not labelling the blob's source: ${sourceKey}=${value.slice(0, 40)}… is over containerd's label limit`,
			);
			return labels;
		};
		/** Stores a blob (or labels the one containerd has); bytes downloaded. */
		const store = async (
			kind: string,
			desc: Descriptor,
			labels: Record<string, string>,
			open: () => AsyncIterable<Buffer> | Promise<AsyncIterable<Buffer>>,
			onBytes?: (n: number) => void,
		): Promise<number> => {
			const have = await c.contentInfo(desc.digest);
			if (!have) {
				let n = 0;
				const r = await writeBlob(c, {
					ref: ingestRef(kind, desc),
					desc,
					labels: withSource(labels, undefined),
					open,
					onProgress: (b) => {
						n = b;
						onBytes?.(b);
					},
				});
				if (r === "written") return n;
			}
			const now = have ?? (await c.contentInfo(desc.digest));
			await c.contentLabel(desc.digest, withSource(labels, now?.labels));
			return 0;
		};
		const bytesOf = (b: Buffer) =>
			async function* () {
				yield b;
			};

		announce(o.onProgress, "storing the manifest and config in containerd");
		for (const ix of resolved.indexes)
			await store("index", ix.desc, ix.labels, bytesOf(ix.bytes));
		await store(
			"manifest",
			manifestDesc,
			childGcLabels([manifest.config, ...manifest.layers]),
			bytesOf(resolved.manifest.bytes),
		);
		await store("config", manifest.config, {}, bytesOf(configBytes));

		const facts = {
			ref: ref.name,
			manifest: manifestDesc.digest,
			layers: manifest.layers,
		};
		const layers: PulledLayer[] = [];
		for (const [i, desc] of manifest.layers.entries()) {
			const number = { number: i + 1, of: manifest.layers.length };
			const chainId = chains[i] as string;
			const r = await unpackLayer(
				{
					client: c,
					snapshotter,
					onProgress: o.onProgress,
					fetch: (d, onBytes) =>
						store("layer", d, {}, () => source.blob(d), onBytes),
				},
				{
					desc,
					diffId: diffIds[i] as string,
					chainId,
					parent: i === 0 ? "" : (chains[i - 1] as string),
					labels: layerSnapshotLabels(facts, i, chainId),
					number,
				},
			).catch((e: unknown) => {
				if (e instanceof DadiError)
					throw new DadiError(
						e.code,
						`${layerAt(i, manifest.layers.length)} (${desc.digest}): ${e.message}`,
						{ cause: e },
					);
				throw e;
			});
			downloaded += r.downloaded;
			layers.push({
				digest: desc.digest,
				size: desc.size,
				mediaType: desc.mediaType,
				diffId: diffIds[i] as string,
				chainId,
				outcome: r.outcome,
				downloaded: r.downloaded,
			});
		}

		const topChain = chains[chains.length - 1] as string;
		announce(o.onProgress, `creating the image ${ref.name}`);
		await c.contentLabel(manifest.config.digest, {
			[snapshotGcKey(snapshotter)]: topChain,
		});
		const image = await c.imagePut(ref.name, top);
		return {
			name: ref.name,
			target: top,
			manifest: manifestDesc,
			config: manifest.config,
			chainId: topChain,
			layers,
			downloaded,
			image,
			containerd: version,
		};
	} finally {
		c.useLease(undefined);
		await c
			.leaseDelete(lease)
			.catch((e: unknown) =>
				o.warn?.(
					`could not release the lease ${lease} (it expires by itself at ${expires.toISOString()}): ${(e as Error).message}`,
				),
			);
	}
}
