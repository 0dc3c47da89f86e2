/**
 * The OCI image manifest of a sealed image (format v2, docs/format.md §6.2): an ordinary OCI image
 * manifest — public OCI config (public-config.ts), one sealed blob per layer — that container tools
 * accept. Each layer descriptor carries annotations containerd passes to a snapshotter as labels
 * while unpacking (the layer's digest, the config's digest, its position); the manifest names the
 * dadi format version. No `artifactType`: this is an image, not an artifact.
 *
 * None of it is authenticated by the MAC (only by the manifest digest); a reader checks that what
 * it uses agrees with the authenticated sealed config.
 */
import { DadiError } from "../errors.js";
import { type Descriptor, shown } from "./digest.js";
import { parseDescriptor } from "./layout.js";
import {
	ANNOTATION_FORMAT_VERSION,
	ANNOTATION_LAYER_ID,
	ANNOTATION_LAYER_INDEX,
	ANNOTATION_SEALED_CONFIG,
	ANNOTATION_SEALED_LAYER,
	FORMAT_VERSION_TEXT,
	MT_OCI_CONFIG,
	MT_OCI_MANIFEST,
	MT_SEALED_CONFIG_V1,
	MT_SEALED_LAYER,
	MT_SEALED_LAYER_V1,
} from "./media-types.js";
import { MAX_LAYERS, V1_REFUSAL } from "./sealed-config.js";

export interface SealedManifest {
	config: Descriptor;
	layers: Descriptor[];
}

/** The annotations of layer `i` of `n` (format §6.1). */
export function layerAnnotations(
	layer: { digest: string; layerId: string },
	config: { digest: string },
	i: number,
	n: number,
): Record<string, string> {
	return {
		[ANNOTATION_SEALED_LAYER]: layer.digest,
		[ANNOTATION_SEALED_CONFIG]: config.digest,
		[ANNOTATION_LAYER_INDEX]: `${i}/${n}`,
		[ANNOTATION_LAYER_ID]: layer.layerId,
	};
}

export function buildManifest(
	config: Descriptor,
	layers: { digest: string; size: number; layerId: string }[],
): Buffer {
	const doc = {
		schemaVersion: 2,
		mediaType: MT_OCI_MANIFEST,
		config: {
			mediaType: MT_OCI_CONFIG,
			digest: config.digest,
			size: config.size,
		},
		layers: layers.map((l, i) => ({
			mediaType: MT_SEALED_LAYER,
			digest: l.digest,
			size: l.size,
			annotations: layerAnnotations(l, config, i, layers.length),
		})),
		annotations: { [ANNOTATION_FORMAT_VERSION]: FORMAT_VERSION_TEXT },
	};
	return Buffer.from(JSON.stringify(doc, null, 2), "utf8");
}

const E = (what: string, msg: string) =>
	new DadiError("LAYOUT_INVALID", `${what}: ${msg}`);

/**
 * Checks a manifest: INPUT_INVALID when it is not a dadi image at all, FORMAT_UNSUPPORTED for a v1
 * or unknown-version image, LAYOUT_INVALID when it is malformed or its annotations contradict it.
 */
export function parseSealedManifest(v: unknown, what: string): SealedManifest {
	if (typeof v !== "object" || v === null || Array.isArray(v))
		throw E(what, "not a JSON object");
	const o = v as Record<string, unknown>;
	if (o.schemaVersion !== 2) throw E(what, "schemaVersion must be 2");
	if (o.mediaType !== undefined && o.mediaType !== MT_OCI_MANIFEST)
		throw E(what, `not an OCI image manifest (${shown(o.mediaType)})`);
	const config = parseDescriptor(o.config, `${what}: config`);
	if (config.mediaType === MT_SEALED_CONFIG_V1)
		throw new DadiError("FORMAT_UNSUPPORTED", `${what}: ${V1_REFUSAL}`);
	const version = annotationsOf(o.annotations, what)[ANNOTATION_FORMAT_VERSION];
	if (config.mediaType !== MT_OCI_CONFIG || version === undefined)
		throw new DadiError(
			"INPUT_INVALID",
			`${what}: not a dadi sealed image (no ${ANNOTATION_FORMAT_VERSION} annotation); seal it first with 'dadi-seal seal'`,
		);
	if (version !== FORMAT_VERSION_TEXT)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`${what}: dadi format version "${version.slice(0, 20)}" is not supported (this build reads version ${FORMAT_VERSION_TEXT})`,
		);
	if (!Array.isArray(o.layers) || o.layers.length === 0)
		throw E(what, "no layers");
	if (o.layers.length > MAX_LAYERS)
		throw E(what, `more than ${MAX_LAYERS} layers`);
	const n = o.layers.length;
	const layers = o.layers.map((l, i) => {
		const d = parseDescriptor(l, `${what}: layers[${i}]`);
		if (d.mediaType === MT_SEALED_LAYER_V1)
			throw new DadiError("FORMAT_UNSUPPORTED", `${what}: ${V1_REFUSAL}`);
		if (d.mediaType !== MT_SEALED_LAYER)
			throw E(
				what,
				`layers[${i}] has media type ${d.mediaType.slice(0, 80)}, expected ${MT_SEALED_LAYER}`,
			);
		checkLayerAnnotations(d, config, i, n, what);
		return d;
	});
	return { config, layers };
}

function annotationsOf(v: unknown, what: string): Record<string, string> {
	if (v === undefined) return {};
	if (typeof v !== "object" || v === null || Array.isArray(v))
		throw E(what, "annotations must be an object");
	const out: Record<string, string> = {};
	for (const [k, val] of Object.entries(v)) {
		if (typeof val !== "string")
			throw E(what, `annotation ${k.slice(0, 80)} must be a string`);
		out[k] = val;
	}
	return out;
}

/** Annotations a host acts on must not contradict the manifest (they may be absent). */
function checkLayerAnnotations(
	d: Descriptor,
	config: Descriptor,
	i: number,
	n: number,
	what: string,
): void {
	const a = d.annotations ?? {};
	const expect: [string, string][] = [
		[ANNOTATION_SEALED_LAYER, d.digest],
		[ANNOTATION_SEALED_CONFIG, config.digest],
		[ANNOTATION_LAYER_INDEX, `${i}/${n}`],
	];
	for (const [k, want] of expect)
		if (Object.hasOwn(a, k) && a[k] !== want)
			throw E(what, `layers[${i}] annotation ${k} says something else`);
}
