/** The OCI image manifest of a sealed image: dadi config + one sealed blob per layer. */
import { DadiError } from "../errors.js";
import type { Descriptor } from "./digest.js";
import { parseDescriptor } from "./layout.js";
import {
	ANNOTATION_LAYER_ID,
	ARTIFACT_TYPE,
	MT_OCI_MANIFEST,
	MT_SEALED_CONFIG,
	MT_SEALED_LAYER,
} from "./media-types.js";

export interface SealedManifest {
	config: Descriptor;
	layers: Descriptor[];
}

export function buildManifest(
	config: Descriptor,
	layers: { digest: string; size: number; layerId: string }[],
): Buffer {
	const doc = {
		schemaVersion: 2,
		mediaType: MT_OCI_MANIFEST,
		artifactType: ARTIFACT_TYPE,
		config: {
			mediaType: MT_SEALED_CONFIG,
			digest: config.digest,
			size: config.size,
		},
		layers: layers.map((l) => ({
			mediaType: MT_SEALED_LAYER,
			digest: l.digest,
			size: l.size,
			annotations: { [ANNOTATION_LAYER_ID]: l.layerId },
		})),
	};
	return Buffer.from(JSON.stringify(doc, null, 2), "utf8");
}

export function parseSealedManifest(v: unknown, what: string): SealedManifest {
	if (typeof v !== "object" || v === null)
		throw new DadiError("LAYOUT_INVALID", `${what}: not a JSON object`);
	const o = v as Record<string, unknown>;
	if (o.schemaVersion !== 2)
		throw new DadiError("LAYOUT_INVALID", `${what}: schemaVersion must be 2`);
	if (o.mediaType !== undefined && o.mediaType !== MT_OCI_MANIFEST)
		throw new DadiError(
			"LAYOUT_INVALID",
			`${what}: not an OCI image manifest (${String(o.mediaType)})`,
		);
	const config = parseDescriptor(o.config, `${what}: config`);
	if (config.mediaType !== MT_SEALED_CONFIG)
		throw new DadiError(
			"INPUT_INVALID",
			`${what}: not a dadi sealed image (config media type ${config.mediaType}); seal it first with 'dadi-seal seal'`,
		);
	if (!Array.isArray(o.layers) || o.layers.length === 0)
		throw new DadiError("LAYOUT_INVALID", `${what}: no layers`);
	const layers = o.layers.map((l, i) => {
		const d = parseDescriptor(l, `${what}: layers[${i}]`);
		if (d.mediaType !== MT_SEALED_LAYER)
			throw new DadiError(
				"LAYOUT_INVALID",
				`${what}: layers[${i}] has media type ${d.mediaType}, expected ${MT_SEALED_LAYER}`,
			);
		return d;
	});
	return { config, layers };
}
