/**
 * Images in a docker-archive file (`docker save`, `skopeo copy … docker-archive:`): a tar holding
 * manifest.json, the image config and one tar per layer. Members are read in place by offset.
 */
import { createHash } from "node:crypto";
import { DadiError } from "../errors.js";
import { layerAt } from "../layer-label.js";
import { parseJson } from "../oci/layout.js";
import type { Reference } from "../oci/reference.js";
import { indexTar } from "../rootfs/tar.js";
import { normalizePath } from "../rootfs/tar-path.js";
import { FileSource } from "../storage/source.js";
import { readImageConfig } from "./image-config.js";
import type { Platform, SourceImage } from "./image-source.js";
import { openLayerBlob } from "./layer-stream.js";
import { formatPlatform, platformMatches } from "./platform.js";

interface ArchiveManifestEntry {
	Config: string;
	RepoTags?: string[] | null;
	Layers: string[];
}

export async function openDockerArchiveImage(
	ref: Reference & { transport: "docker-archive" },
	platform: Platform,
): Promise<SourceImage> {
	const src = await FileSource.open(ref.path);
	try {
		const members = await indexTar(src);
		const member = (name: string) => {
			const key = normalizePath(name);
			const m = typeof key === "string" ? members.get(key) : undefined;
			if (!m)
				throw new DadiError(
					"INPUT_INVALID",
					`${ref.path}: the archive has no member "${name}"`,
				);
			return m;
		};
		const readMember = async (name: string, max = 16 << 20) => {
			const m = member(name);
			if (m.size > max)
				throw new DadiError(
					"INPUT_INVALID",
					`${ref.path}: member "${name}" is too large (${m.size} bytes)`,
				);
			return src.read(m.offset, m.size);
		};
		const manifest = parseJson(
			await readMember("manifest.json"),
			`${ref.path}: manifest.json`,
		);
		if (!Array.isArray(manifest) || manifest.length === 0)
			throw new DadiError(
				"INPUT_INVALID",
				`${ref.path}: manifest.json lists no images`,
			);
		const entries = manifest as ArchiveManifestEntry[];
		let entry: ArchiveManifestEntry | undefined;
		if (ref.name !== undefined) {
			entry = entries.find((e) =>
				(e.RepoTags ?? []).includes(ref.name as string),
			);
			if (!entry)
				throw new DadiError(
					"INPUT_NOT_FOUND",
					`${ref.path}: no image named ${ref.name} (has: ${entries.flatMap((e) => e.RepoTags ?? []).join(", ") || "none"})`,
				);
		} else if (entries.length === 1) entry = entries[0];
		else
			throw new DadiError(
				"USAGE",
				`${ref.path}: holds ${entries.length} images; name one as docker-archive:${ref.path}:NAME:TAG`,
			);
		if (
			!entry ||
			typeof entry.Config !== "string" ||
			!Array.isArray(entry.Layers) ||
			entry.Layers.some((l) => typeof l !== "string")
		)
			throw new DadiError(
				"INPUT_INVALID",
				`${ref.path}: manifest.json entry is malformed`,
			);
		const config = await readMember(entry.Config);
		const named = /^(?:blobs\/sha256\/)?([0-9a-f]{64})(?:\.json)?$/.exec(
			entry.Config,
		);
		if (named && createHash("sha256").update(config).digest("hex") !== named[1])
			throw new DadiError(
				"DIGEST_MISMATCH",
				`${ref.path}: the config ${entry.Config} does not match its name`,
			);
		const facts = readImageConfig(config, `${ref.path} image config`);
		if (!platformMatches(facts.platform, platform))
			throw new DadiError(
				"INPUT_INVALID",
				`${ref.path}: the image is for ${formatPlatform(facts.platform)}, not ${formatPlatform(platform)}; choose with --platform`,
			);
		if (entry.Layers.length !== facts.diffIds.length)
			throw new DadiError(
				"INPUT_INVALID",
				`${ref.path}: ${entry.Layers.length} layers but ${facts.diffIds.length} diff_ids in the config`,
			);
		const layers = entry.Layers.map((name, i) => {
			const m = member(name);
			const diffId = facts.diffIds[i] as string;
			return {
				diffId,
				size: m.size,
				open: () =>
					openLayerBlob({
						path: ref.path,
						start: m.offset,
						size: m.size,
						compression: "auto",
						diffId,
						name: `${ref.path} ${layerAt(i, entry.Layers.length)} (${name})`,
					}),
			};
		});
		return {
			description: `docker-archive:${ref.path}${ref.name ? `:${ref.name}` : ""}`,
			config,
			platform: facts.platform,
			layers,
			close: async () => {},
		};
	} finally {
		await src.close();
	}
}
