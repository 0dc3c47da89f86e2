/**
 * The parts of an image a pull needs, read from what a registry sent (untrusted, parsed strictly,
 * every failure a DadiError naming the part): an index's entries and the one for a platform, a
 * manifest's config and layers, the config's diff IDs.
 */
import { DadiError } from "../errors.js";
import type { Descriptor } from "../oci/digest.js";
import { parseDescriptor, parseJson } from "../oci/layout.js";
import { MT_SEALED_CONFIG_V1 } from "../oci/media-types.js";
import { readImageConfig } from "../source/image-config.js";
import type { Platform } from "../source/image-source.js";
import { formatPlatform, platformMatches } from "../source/platform.js";
import {
	isConfigType,
	isIndexType,
	isLayerType,
	isManifestType,
	MT_DOCKER_SCHEMA1,
} from "./media-types.js";

/** More than any real image has; bounds the labels and work a hostile manifest can cause. */
export const MAX_LAYERS = 1000;
export const MAX_INDEX_ENTRIES = 10_000;

export interface IndexEntry {
	descriptor: Descriptor;
	platform?: Partial<Platform>;
}

function object(bytes: Buffer, what: string): Record<string, unknown> {
	const v = parseJson(bytes, what);
	if (typeof v !== "object" || v === null || Array.isArray(v))
		throw new DadiError("LAYOUT_INVALID", `${what}: not a JSON object`);
	return v as Record<string, unknown>;
}

function platformOf(v: unknown): Partial<Platform> | undefined {
	if (typeof v !== "object" || v === null) return undefined;
	const p = v as Record<string, unknown>;
	const out: Partial<Platform> = {};
	if (typeof p.os === "string") out.os = p.os;
	if (typeof p.architecture === "string") out.architecture = p.architecture;
	if (typeof p.variant === "string") out.variant = p.variant;
	return out;
}

/** An index's (or docker manifest list's) entries, in order. */
export function parseIndex(bytes: Buffer, what: string): IndexEntry[] {
	const doc = object(bytes, what);
	if (doc.schemaVersion !== 2)
		throw new DadiError("LAYOUT_INVALID", `${what}: schemaVersion must be 2`);
	if (!Array.isArray(doc.manifests))
		throw new DadiError("LAYOUT_INVALID", `${what}: no manifests array`);
	if (doc.manifests.length > MAX_INDEX_ENTRIES)
		throw new DadiError(
			"LAYOUT_INVALID",
			`${what}: ${doc.manifests.length} entries, more than ${MAX_INDEX_ENTRIES}`,
		);
	return doc.manifests.map((m, i) => {
		const descriptor = parseDescriptor(m, `${what}: manifests[${i}]`);
		const platform = platformOf((m as { platform?: unknown }).platform);
		return platform ? { descriptor, platform } : { descriptor };
	});
}

/** The first entry for the platform: a manifest, or a nested index to look into. */
export function selectEntry(
	entries: readonly IndexEntry[],
	platform: Platform,
	what: string,
): Descriptor {
	const hit = entries.find(
		(e) =>
			(isManifestType(e.descriptor.mediaType) ||
				isIndexType(e.descriptor.mediaType)) &&
			platformMatches(e.platform, platform),
	);
	if (hit) return hit.descriptor;
	const have = entries
		.filter((e) => e.platform?.os && e.platform.architecture)
		.map((e) => formatPlatform(e.platform as Platform));
	throw new DadiError(
		"INPUT_NOT_FOUND",
		`${what}: no image for platform ${formatPlatform(platform)} (the index has: ${
			[...new Set(have)].join(", ") || "no platforms"
		}); choose one with --platform`,
	);
}

export interface ImageManifest {
	config: Descriptor;
	layers: Descriptor[];
}

/** A manifest's config and layers, checked to be an image containerd can unpack. */
export function parseImageManifest(bytes: Buffer, what: string): ImageManifest {
	const doc = object(bytes, what);
	if (doc.schemaVersion !== 2)
		throw new DadiError("LAYOUT_INVALID", `${what}: schemaVersion must be 2`);
	const config = parseDescriptor(doc.config, `${what}: config`);
	if (config.mediaType === MT_SEALED_CONFIG_V1)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`${what}: a dadi sealed image of format v1, which this build does not read; re-seal it (format v2 images pull through dadi-snapshotter)`,
		);
	if (!isConfigType(config.mediaType))
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`${what}: config media type ${config.mediaType.slice(0, 100)} is not a container image config (expected ${"application/vnd.oci.image.config.v1+json"} or docker's); not a container image`,
		);
	if (!Array.isArray(doc.layers) || doc.layers.length === 0)
		throw new DadiError("LAYOUT_INVALID", `${what}: no layers`);
	if (doc.layers.length > MAX_LAYERS)
		throw new DadiError(
			"LAYOUT_INVALID",
			`${what}: ${doc.layers.length} layers, more than ${MAX_LAYERS}`,
		);
	const layers = doc.layers.map((l, i) => {
		const d = parseDescriptor(l, `${what}: layers[${i}]`);
		if (!isLayerType(d.mediaType))
			throw new DadiError(
				"FORMAT_UNSUPPORTED",
				`${what}: layers[${i}] has media type ${d.mediaType.slice(0, 100)}, not a container image layer`,
			);
		return d;
	});
	return { config, layers };
}

/** The config's diff IDs, one per manifest layer. */
export function parseDiffIds(
	bytes: Buffer,
	layers: number,
	what: string,
): string[] {
	const { diffIds } = readImageConfig(bytes, what);
	if (diffIds.length !== layers)
		throw new DadiError(
			"INPUT_INVALID",
			`${what}: ${diffIds.length} diff_ids for ${layers} layers in the manifest`,
		);
	return diffIds;
}

/** What a registry's manifest media type means for a pull. */
export function kindOf(mediaType: string, what: string): "index" | "manifest" {
	if (isIndexType(mediaType)) return "index";
	if (isManifestType(mediaType)) return "manifest";
	if (mediaType === MT_DOCKER_SCHEMA1)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`${what}: a docker schema 1 manifest (deprecated); push the image again with a current tool`,
		);
	throw new DadiError(
		"FORMAT_UNSUPPORTED",
		`${what}: media type ${mediaType.slice(0, 100)} is neither an image manifest nor an index`,
	);
}
