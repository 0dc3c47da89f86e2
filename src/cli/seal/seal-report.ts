/** What `dadi-seal seal` prints when it is done: text for people, `--json` for machines. */
import { layerLabel } from "../../layer-label.js";
import type { SealDiskResult } from "../../seal/seal-disk.js";
import type { SealImageResult } from "../../seal/seal-image.js";
import { formatBytes, printJson } from "../common.js";

/** What a registry destination got. */
export interface PushReport {
	pushed: string;
	blobs: Record<"exists" | "mounted" | "uploaded", number>;
	bytesUploaded: number;
}

/** Where the image key was registered (seal --broker). */
export interface RegisteredKey {
	broker: string;
	resource: string;
	kid: string;
}

export interface Published {
	pushed?: PushReport;
	registered?: RegisteredKey;
}

function publishedLines(e: Published): string {
	return (
		pushLine(e.pushed) +
		(e.registered
			? `  image key ${e.registered.kid} registered at ${e.registered.broker} as kbs:///${e.registered.resource}\n`
			: "")
	);
}

function publishedJson(e: Published): Record<string, unknown> {
	return {
		...(e.pushed ? { push: e.pushed } : {}),
		...(e.registered ? { broker: e.registered } : {}),
	};
}

function pushLine(p: PushReport | undefined): string {
	return p
		? `  pushed to ${p.pushed}: ${p.blobs.uploaded} blobs uploaded (${formatBytes(p.bytesUploaded)}), ${p.blobs.exists} already there, ${p.blobs.mounted} mounted\n`
		: "";
}

export function elapsed(started: number): number {
	return (performance.now() - started) / 1000;
}

export function reportDisk(
	r: SealDiskResult,
	srcText: string,
	destText: string,
	tag: string | undefined,
	seconds: number,
	json?: boolean,
	published: Published = {},
): void {
	if (json) {
		printJson({
			ok: true,
			manifest: r.manifest.digest,
			tag: tag ?? "latest",
			...publishedJson(published),
			layerIndexBase: 1,
			layers: r.config.layers.length,
			reusedLayers: r.reusedLayers,
			newLayer: {
				position: r.config.layers.length,
				digest: r.layer.digest,
				storedBytes: r.layer.size,
				storedChunks: r.layer.storedChunks,
				zeroChunks: r.layer.zeroChunks,
			},
			virtualSize: r.virtualSize,
			chunkSize: r.config.chunkSize,
			seconds,
		});
		return;
	}
	const n = r.config.layers.length;
	process.stdout.write(
		`sealed ${srcText} (${formatBytes(r.virtualSize)}) into ${destText} as ${layerLabel({ number: n, of: n })}\n` +
			`  manifest ${r.manifest.digest}\n` +
			`  stored ${formatBytes(r.layer.size)} in ${r.layer.storedChunks} chunks (+${r.layer.zeroChunks} zero chunks), chunk size ${formatBytes(r.config.chunkSize)}, ${seconds.toFixed(2)} s\n` +
			publishedLines(published),
	);
}

/** "layer 2/3" or "layers 1–2/3" for the source layers a sealed layer holds. */
function sourceLabel(sourceLayers: number[], of: number): string {
	const last = sourceLayers[sourceLayers.length - 1] ?? 0;
	return layerLabel({ number: last, of, from: sourceLayers[0] });
}

export function reportImage(
	r: SealImageResult,
	destText: string,
	tag: string | undefined,
	seconds: number,
	json?: boolean,
	published: Published = {},
): void {
	if (json) {
		printJson({
			ok: true,
			manifest: r.manifest.digest,
			tag: tag ?? "latest",
			...publishedJson(published),
			source: r.source,
			layerIndexBase: 1,
			sourceLayers: r.sourceLayerCount,
			reusedLayers: r.reusedLayers,
			reused: r.reused,
			fsType: r.fsType,
			virtualSize: r.config.virtualSize,
			chunkSize: r.config.chunkSize,
			layers: r.layers.map((l) => ({
				position: l.position,
				sourceLayers: l.sourceLayers,
				digest: l.entry.digest,
				sourceBytes: l.sourceBytes,
				storedBytes: l.entry.size,
				built: l.built,
				rebuildReason: l.rebuildReason,
				storedChunks: l.entry.storedChunks,
				zeroChunks: l.entry.zeroChunks,
			})),
			seconds,
		});
		return;
	}
	const of = r.sourceLayerCount;
	const reused = r.reusedLayers ? ` over ${r.reusedLayers} reused` : "";
	process.stdout.write(
		`sealed ${r.source} into ${destText}: ${r.layers.length} new layer(s)${reused}, ${r.fsType} ${formatBytes(r.config.virtualSize)}, ${seconds.toFixed(2)} s\n` +
			`  manifest ${r.manifest.digest}\n` +
			r.reused
				.map(
					(l) =>
						`  ${sourceLabel(l.sourceLayers, of)}: reused from the base image (${l.digest.slice(0, 19)}…)\n`,
				)
				.join("") +
			r.layers
				.map(
					(l) =>
						`  ${sourceLabel(l.sourceLayers, of)}: stored ${formatBytes(l.entry.size)} (${l.entry.storedChunks} chunks) for ${formatBytes(l.sourceBytes)} of source layers, ${l.built === "in-place" ? "file system updated in place" : "file system built whole"}\n`,
				)
				.join("") +
			publishedLines(published),
	);
}
