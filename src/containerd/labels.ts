/**
 * The labels containerd's pull writes, computed the way containerd computes them (pure):
 *
 * - on content, references for its garbage collector from a parent to its children
 *   (images/handlers.go SetChildrenMappedLabels with ChildGCLabels): a manifest gets
 *   `containerd.io/gc.ref.content.config` and `containerd.io/gc.ref.content.l.<i>`, an index
 *   `containerd.io/gc.ref.content.m.<i>`; and where each blob came from
 *   (`containerd.io/distribution.source.<host>` = the repositories, sorted, comma-separated);
 * - on each layer's unpack snapshot, what a remote snapshotter decides on (unpacker.go): the layer
 *   descriptor's annotations that containerd passes on to snapshotters (`containerd.io/snapshot/…`),
 *   the image facts containerd's CRI plugin adds for remote snapshotters
 *   (pkg/snapshotters/annotations.go: `containerd.io/snapshot/cri.*`), and
 *   `containerd.io/snapshot.ref` = the layer's chain ID;
 * - on the image config, `containerd.io/gc.ref.snapshot.<snapshotter>` = the top layer's chain ID,
 *   which keeps the unpacked snapshots alive as long as the image is.
 */
import type { Descriptor } from "../oci/digest.js";
import {
	INHERITED_LABEL_PREFIX,
	LABEL_SNAPSHOT_REF,
	MAX_LABEL_BYTES,
} from "../snapshotter/labels.js";
import { isKnownConfig, isLayerType, isManifestType } from "./media-types.js";

export const LABEL_GC_CONTENT = "containerd.io/gc.ref.content.";
export const LABEL_GC_SNAPSHOT = "containerd.io/gc.ref.snapshot.";
export const LABEL_DISTRIBUTION_SOURCE = "containerd.io/distribution.source.";
export const LABEL_UNCOMPRESSED = "containerd.io/uncompressed";
export const LABEL_GC_EXPIRE = "containerd.io/gc.expire";

export const LABEL_CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref";
export const LABEL_CRI_MANIFEST_DIGEST =
	"containerd.io/snapshot/cri.manifest-digest";
export const LABEL_CRI_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest";
export const LABEL_CRI_IMAGE_LAYERS = "containerd.io/snapshot/cri.image-layers";

/** containerd's label limit (labels/validate.go): key and value together, in bytes. */
export function labelFits(key: string, value: string): boolean {
	return Buffer.byteLength(key) + Buffer.byteLength(value) <= MAX_LABEL_BYTES;
}

/** The garbage-collection key prefix containerd uses for a child of this media type. */
function childKey(mediaType: string): string {
	if (isKnownConfig(mediaType)) return `${LABEL_GC_CONTENT}config`;
	if (isManifestType(mediaType)) return `${LABEL_GC_CONTENT}m.`;
	if (isLayerType(mediaType)) return `${LABEL_GC_CONTENT}l.`;
	return LABEL_GC_CONTENT;
}

/**
 * A parent's labels naming its children, in their order: each key is numbered by how many
 * children used it before (`l.0`, `l.1`, …); a key that does not end in `.` gets no number the
 * first time (`config`, then `config1`).
 */
export function childGcLabels(
	children: readonly Pick<Descriptor, "mediaType" | "digest">[],
): Record<string, string> {
	const out: Record<string, string> = {};
	const used = new Map<string, number>();
	for (const c of children) {
		const key = childKey(c.mediaType);
		const n = used.get(key) ?? 0;
		used.set(key, n + 1);
		out[n > 0 || key.endsWith(".") ? `${key}${n}` : key] = c.digest;
	}
	return out;
}

/** `containerd.io/distribution.source.<host>`: the registry's host name, without its port. */
export function distributionSourceKey(registry: string): string {
	let host = registry;
	if (host.startsWith("[")) host = host.slice(1, host.indexOf("]"));
	else if (host.includes(":")) host = host.slice(0, host.lastIndexOf(":"));
	return `${LABEL_DISTRIBUTION_SOURCE}${host}`;
}

/** The label's value with `repo` added: repositories sorted, each once. */
export function appendDistributionSource(
	existing: string | undefined,
	repo: string,
): string {
	const repos = new Set((existing ?? "").split(",").filter((r) => r !== ""));
	repos.add(repo);
	return [...repos].sort().join(",");
}

/**
 * The comma-separated digests of `layers` that fit in the label `key` (containerd's getLayers:
 * as many as fit, from the first).
 */
export function layersLabel(
	key: string,
	layers: readonly Pick<Descriptor, "digest">[],
): string {
	let value = "";
	for (const l of layers) {
		const next = value === "" ? l.digest : `${value},${l.digest}`;
		if (!labelFits(key, next)) break;
		value = next;
	}
	return value;
}

/** What a pulled image tells snapshotters about itself (containerd's CRI plugin's labels). */
export interface ImageFacts {
	/** The image's name, as containerd names it. */
	ref: string;
	/** The manifest's digest. */
	manifest: string;
	/** The manifest's layers, bottom first. */
	layers: readonly Descriptor[];
}

/**
 * The labels of layer `index`'s unpack snapshot: its descriptor's annotations that containerd
 * passes on (the `containerd.io/snapshot/` ones; containerd's own ref label is replaced), the
 * image facts, and the snapshot ref (the chain ID).
 */
export function layerSnapshotLabels(
	facts: ImageFacts,
	index: number,
	chainId: string,
): Record<string, string> {
	const layer = facts.layers[index];
	if (!layer) throw new RangeError(`no layer ${index}`);
	const labels: Record<string, string> = {};
	for (const [k, v] of Object.entries(layer.annotations ?? {}))
		if (k.startsWith(INHERITED_LABEL_PREFIX)) labels[k] = v;
	labels[LABEL_CRI_IMAGE_REF] = facts.ref;
	labels[LABEL_CRI_LAYER_DIGEST] = layer.digest;
	labels[LABEL_CRI_IMAGE_LAYERS] = layersLabel(
		LABEL_CRI_IMAGE_LAYERS,
		facts.layers.slice(index),
	);
	labels[LABEL_CRI_MANIFEST_DIGEST] = facts.manifest;
	labels[LABEL_SNAPSHOT_REF] = chainId;
	return labels;
}

/** The label on the image config that keeps its unpacked snapshots. */
export function snapshotGcKey(snapshotter: string): string {
	return `${LABEL_GC_SNAPSHOT}${snapshotter}`;
}
