/**
 * Recognising a sealed layer from the labels containerd passes to Prepare while it unpacks an
 * image (pure). containerd hands over every layer-descriptor annotation prefixed
 * `containerd.io/snapshot/`: a sealed image's manifest marks each layer with its own digest, the
 * config's digest and its position (docs/format.md §6); the CRI plugin (with
 * disable_snapshot_annotations = false) and `dadi-snapshotter pull` add where the image lives.
 */
import { DadiError } from "../errors.js";
import { DIGEST_RE } from "../oci/digest.js";
import {
	type DockerReference,
	parseDockerReference,
} from "../oci/docker-reference.js";
import {
	ANNOTATION_LAYER_INDEX,
	ANNOTATION_SEALED_CONFIG,
	ANNOTATION_SEALED_LAYER,
} from "../oci/media-types.js";
import type { Labels } from "./types.js";

/** The sealed layer's annotations, which containerd passes on as labels (docs/format.md §6). */
export const LABEL_SEALED_LAYER = ANNOTATION_SEALED_LAYER;
export const LABEL_SEALED_CONFIG = ANNOTATION_SEALED_CONFIG;
export const LABEL_LAYER_INDEX = ANNOTATION_LAYER_INDEX;
/** Set by containerd's CRI plugin (and by `dadi-snapshotter pull`). */
export const LABEL_CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref";
export const LABEL_CRI_MANIFEST = "containerd.io/snapshot/cri.manifest-digest";
export const LABEL_CRI_LAYER = "containerd.io/snapshot/cri.layer-digest";

/** What the snapshotter keeps about a claimed sealed layer (stored as its claim metadata). */
export interface SealedLayerRef {
	/** The layer blob's digest. */
	layer: string;
	/** The (public) image config's digest, which carries the sealed config. */
	config: string;
	/** Position from the bottom (0-based) and the image's layer count. */
	index: number;
	count: number;
	/** docker://HOST/REPO@MANIFEST-DIGEST: where the image is read from, pinned. */
	image: string;
}

const E = (msg: string) => new DadiError("INPUT_INVALID", msg);

/**
 * The sealed layer these labels describe; undefined for an ordinary layer. A sealed layer whose
 * labels do not say where its image lives is an error (containerd would otherwise download and
 * fail to apply it): the CRI needs `disable_snapshot_annotations = false`, ctr users
 * `dadi-snapshotter pull`.
 */
export function sealedLayerOf(labels: Labels): SealedLayerRef | undefined {
	const layer = labels[LABEL_SEALED_LAYER];
	if (layer === undefined) return undefined;
	const config = labels[LABEL_SEALED_CONFIG] ?? "";
	const position = labels[LABEL_LAYER_INDEX] ?? "";
	if (!DIGEST_RE.test(layer) || !DIGEST_RE.test(config))
		throw E(
			`sealed layer labels: ${LABEL_SEALED_LAYER} and ${LABEL_SEALED_CONFIG} must be sha256 digests`,
		);
	const m = /^(\d{1,4})\/(\d{1,4})$/.exec(position);
	const index = Number(m?.[1]);
	const count = Number(m?.[2]);
	if (!m || !(index < count))
		throw E(
			`sealed layer ${layer}: ${LABEL_LAYER_INDEX} "${position}" is not "i/n"`,
		);
	if (
		labels[LABEL_CRI_LAYER] !== undefined &&
		labels[LABEL_CRI_LAYER] !== layer
	)
		throw E(`sealed layer ${layer}: the CRI names another layer digest`);
	const refText = labels[LABEL_CRI_IMAGE_REF];
	const manifest = labels[LABEL_CRI_MANIFEST];
	if (
		refText === undefined ||
		manifest === undefined ||
		!DIGEST_RE.test(manifest)
	)
		throw E(
			`sealed layer ${layer}: no ${LABEL_CRI_IMAGE_REF} and ${LABEL_CRI_MANIFEST} labels, so where the image lives is unknown; with Kubernetes set disable_snapshot_annotations = false in containerd's CRI configuration, with ctr pull through 'dadi-snapshotter pull'`,
		);
	let ref: DockerReference;
	try {
		ref = parseDockerReference(
			`//${refText.replace(/^docker:\/\//, "")}`,
			refText,
		);
	} catch (e) {
		throw E(`sealed layer ${layer}: ${(e as Error).message}`);
	}
	return {
		layer,
		config,
		index,
		count,
		image: `docker://${ref.registry}/${ref.repository}@${manifest}`,
	};
}

/** The claim metadata read back (it was written by this module; still checked). */
export function sealedLayerFromMetadata(v: unknown): SealedLayerRef {
	const o = v as Partial<SealedLayerRef> | null;
	if (
		!o ||
		typeof o.layer !== "string" ||
		typeof o.config !== "string" ||
		typeof o.index !== "number" ||
		typeof o.count !== "number" ||
		typeof o.image !== "string"
	)
		throw new DadiError(
			"FORMAT_INVALID",
			"claimed layer metadata is malformed",
		);
	return o as SealedLayerRef;
}
