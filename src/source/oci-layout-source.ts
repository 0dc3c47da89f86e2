/**
 * Ordinary images in an OCI image layout (as skopeo, umoci and buildah write them): an image
 * index is resolved to the wanted platform, then the manifest, config and layers are read and
 * checked against their digests.
 */
import { DadiError } from "../errors.js";
import { layerAt } from "../layer-label.js";
import type { Descriptor } from "../oci/digest.js";
import { OciLayout, parseDescriptor, parseJson } from "../oci/layout.js";
import {
	ANNOTATION_FORMAT_VERSION,
	LAYER_COMPRESSION,
	MT_DOCKER_MANIFEST,
	MT_DOCKER_MANIFEST_LIST,
	MT_OCI_INDEX,
	MT_OCI_MANIFEST,
	MT_SEALED_CONFIG_V1,
	MT_SEALED_LAYER,
} from "../oci/media-types.js";
import type { Reference } from "../oci/reference.js";
import { readImageConfig } from "./image-config.js";
import type { Platform, SourceImage } from "./image-source.js";
import { openLayerBlob } from "./layer-stream.js";
import { formatPlatform, platformMatches } from "./platform.js";

const MAX_INDEX_DEPTH = 4;

export async function openOciLayoutImage(
	ref: Reference & { transport: "oci" },
	platform: Platform,
): Promise<SourceImage> {
	const layout = await OciLayout.open(ref.dir);
	let desc: Descriptor = await layout.resolve(ref);
	const name = ref.tag
		? `${ref.dir}:${ref.tag}`
		: ref.digest
			? `${ref.dir}@${ref.digest}`
			: ref.dir;
	for (let depth = 0; ; depth++) {
		if (
			desc.mediaType !== MT_OCI_INDEX &&
			desc.mediaType !== MT_DOCKER_MANIFEST_LIST
		)
			break;
		if (depth >= MAX_INDEX_DEPTH)
			throw new DadiError(
				"INPUT_INVALID",
				`${name}: image indexes nested too deep`,
			);
		const index = parseJson(
			await layout.readBlob(desc, "image index"),
			"image index",
		) as { manifests?: unknown };
		if (!Array.isArray(index.manifests))
			throw new DadiError(
				"INPUT_INVALID",
				`${name}: image index without manifests`,
			);
		const entries = index.manifests.map((m, i) => ({
			d: parseDescriptor(m, `image index manifests[${i}]`),
			p: (m as { platform?: Partial<Platform> }).platform,
		}));
		const hit = entries.find((e) => platformMatches(e.p, platform));
		if (!hit) {
			const have = entries
				.map((e) => (e.p ? formatPlatform(e.p as Platform) : "?"))
				.join(", ");
			throw new DadiError(
				"INPUT_NOT_FOUND",
				`${name}: no image for platform ${formatPlatform(platform)} (the index has: ${have || "nothing"}); choose one with --platform`,
			);
		}
		desc = hit.d;
	}
	if (
		desc.mediaType !== MT_OCI_MANIFEST &&
		desc.mediaType !== MT_DOCKER_MANIFEST
	)
		throw new DadiError(
			"INPUT_INVALID",
			`${name}: ${desc.mediaType} is not an image manifest`,
		);
	const manifest = parseJson(
		await layout.readBlob(desc, "manifest"),
		"manifest",
	) as Record<string, unknown>;
	const configDesc = parseDescriptor(manifest.config, "manifest config");
	if (isSealedManifest(manifest, configDesc))
		throw new DadiError("INPUT_INVALID", `${name}: is already a sealed image`);
	if (!Array.isArray(manifest.layers))
		throw new DadiError(
			"INPUT_INVALID",
			`${name}: the manifest has no layers array`,
		);
	const config = await layout.readBlob(configDesc, "image config");
	const facts = readImageConfig(config, `${name} image config`);
	if (
		!platformMatches(facts.platform, {
			os: platform.os,
			architecture: platform.architecture,
		}) &&
		facts.platform.architecture !== "unknown"
	)
		throw new DadiError(
			"INPUT_INVALID",
			`${name}: the image is for ${formatPlatform(facts.platform)}, not ${formatPlatform(platform)}; choose with --platform`,
		);
	const layerDescs = manifest.layers.map((l, i) =>
		parseDescriptor(l, `manifest layers[${i}]`),
	);
	if (layerDescs.length !== facts.diffIds.length)
		throw new DadiError(
			"INPUT_INVALID",
			`${name}: ${layerDescs.length} layers but ${facts.diffIds.length} diff_ids in the config`,
		);
	const layers = layerDescs.map((d, i) => {
		const compression = LAYER_COMPRESSION[d.mediaType];
		if (compression === undefined)
			throw new DadiError(
				"INPUT_INVALID",
				`${name}: ${layerAt(i, layerDescs.length)} has unsupported media type ${d.mediaType}`,
			);
		const diffId = facts.diffIds[i] as string;
		return {
			diffId,
			size: d.size,
			open: () =>
				openLayerBlob({
					path: layout.blobPath(d.digest),
					size: d.size,
					compression,
					digest: d.digest,
					diffId,
					name: `${name} ${layerAt(i, layerDescs.length)} (${d.digest.slice(0, 19)})`,
				}),
		};
	});
	return {
		description: `oci:${name}@${desc.digest}`,
		config,
		platform: facts.platform,
		layers,
		close: async () => {},
	};
}

/** A dadi sealed image of any version: not something to seal again. */
function isSealedManifest(
	manifest: Record<string, unknown>,
	config: Descriptor,
): boolean {
	if (config.mediaType === MT_SEALED_CONFIG_V1) return true;
	const ann = manifest.annotations as Record<string, unknown> | undefined;
	if (
		typeof ann === "object" &&
		ann !== null &&
		ANNOTATION_FORMAT_VERSION in ann
	)
		return true;
	return (
		Array.isArray(manifest.layers) &&
		manifest.layers.some(
			(l) =>
				(l as { mediaType?: unknown } | null)?.mediaType === MT_SEALED_LAYER,
		)
	);
}
