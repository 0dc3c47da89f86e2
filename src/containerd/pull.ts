/**
 * Pulling an image into containerd with unpacking through a snapshotter, as containerd's own
 * client.Pull with unpack does it (pull.go, unpacker.go) — the path on which a remote snapshotter
 * can claim layers so that they are never downloaded, which `ctr images pull` (fetch everything,
 * then unpack without the snapshot labels) never takes:
 *
 * 1. containerd is asked its version (is it there?) and its snapshotters (is ours one?);
 * 2. the reference is resolved in the registry (resolve.ts), and the config read for its diff IDs
 *    (chain IDs follow);
 * 3. under a lease (so nothing is collected half-way), the index(es), manifest and config go into
 *    containerd's content store with the labels containerd's pull gives them (content-store.ts,
 *    labels.ts);
 * 4. each layer, bottom first, is unpacked (unpack.ts): claimed by the snapshotter, or downloaded
 *    and applied by containerd;
 * 5. the config is labelled with the top chain ID for the snapshotter, the image record created or
 *    pointed at the manifest (or index), and the lease released.
 */
import { randomBytes } from "node:crypto";
import { DadiError } from "../errors.js";
import { layerAt } from "../layer-label.js";
import type { Descriptor } from "../oci/digest.js";
import { announce, type OnProgress } from "../progress.js";
import type { Platform } from "../source/image-source.js";
import { chainIds } from "./chain-id.js";
import type { ContainerdClient } from "./client.js";
import { ContentStore } from "./content-store.js";
import type { PullReference } from "./image-name.js";
import { parseDiffIds, parseImageManifest } from "./image-parts.js";
import {
	childGcLabels,
	LABEL_GC_EXPIRE,
	layerSnapshotLabels,
	snapshotGcKey,
} from "./labels.js";
import type { PullSource } from "./pull-source.js";
import { resolveImage } from "./resolve.js";
import { type LayerOutcome, unpackLayer } from "./unpack.js";

export const SNAPSHOTTER_PLUGIN_TYPE = "io.containerd.snapshotter.v1";
/** containerd's default lease lifetime for a pull (client.WithLease). */
const LEASE_HOURS = 24;

export interface PullOptions {
	ref: PullReference;
	platform: Platform;
	snapshotter: string;
	source: PullSource;
	containerd: ContainerdClient;
	onProgress?: OnProgress;
	/** Warnings (a label that does not fit, a lease not released), for stderr. */
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
	/** Bytes downloaded from the registry (indexes, manifest, config and layers). */
	downloaded: number;
	image: "created" | "updated";
	/** containerd's version. */
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

/** Takes a lease like containerd's client (random ID, expiring in a day); its ID. */
async function takeLease(c: ContainerdClient): Promise<string> {
	const id = `dadi-pull-${Date.now()}-${randomBytes(6).toString("hex")}`;
	const expires = new Date(Date.now() + LEASE_HOURS * 3600_000);
	await c.leaseCreate(id, {
		[LABEL_GC_EXPIRE]: expires.toISOString().replace(/\.\d+Z$/, "Z"),
	});
	return id;
}

export async function pullImage(o: PullOptions): Promise<PullResult> {
	const { containerd: c, snapshotter, ref, source } = o;
	const what = `${source.name}:${ref.digest ?? ref.tag ?? "latest"}`;
	announce(o.onProgress, `asking containerd at ${c.socket}`);
	const version = await checkContainerd(c, snapshotter);

	announce(o.onProgress, `resolving ${ref.name}`);
	const resolved = await resolveImage(source, o.platform, what);
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
	let downloaded = resolved.downloaded + configBytes.length;

	const lease = await takeLease(c);
	c.useLease(lease);
	try {
		const store = new ContentStore(c, ref, o.warn);
		announce(o.onProgress, "storing the manifest and config in containerd");
		for (const ix of resolved.indexes)
			await store.putBytes("index", ix.desc, ix.labels, ix.bytes);
		await store.putBytes(
			"manifest",
			manifestDesc,
			childGcLabels([manifest.config, ...manifest.layers]),
			resolved.manifest.bytes,
		);
		await store.putBytes("config", manifest.config, {}, configBytes);

		const facts = {
			ref: ref.name,
			manifest: manifestDesc.digest,
			layers: manifest.layers,
		};
		const layers: PulledLayer[] = [];
		for (const [i, desc] of manifest.layers.entries()) {
			const chainId = chains[i] as string;
			const diffId = diffIds[i] as string;
			const r = await unpackLayer(
				{
					client: c,
					snapshotter,
					onProgress: o.onProgress,
					fetch: (d, onBytes) =>
						store.put("layer", d, {}, () => source.blob(d), onBytes),
				},
				{
					desc,
					diffId,
					chainId,
					parent: i === 0 ? "" : (chains[i - 1] as string),
					labels: layerSnapshotLabels(facts, i, chainId),
					number: { number: i + 1, of: manifest.layers.length },
				},
			).catch((e: unknown) => {
				if (!(e instanceof DadiError)) throw e;
				throw new DadiError(
					e.code,
					`${layerAt(i, manifest.layers.length)} (${desc.digest}): ${e.message}`,
					{ cause: e },
				);
			});
			downloaded += r.downloaded;
			layers.push({
				digest: desc.digest,
				size: desc.size,
				mediaType: desc.mediaType,
				diffId,
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
		const image = await c.imagePut(ref.name, resolved.top);
		return {
			name: ref.name,
			target: resolved.top,
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
					`could not release the lease ${lease} (containerd drops it by itself within ${LEASE_HOURS} h): ${(e as Error).message}`,
				),
			);
	}
}
