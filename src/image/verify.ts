/**
 * Full verification of a sealed image in a layout: every blob against its digest, the config's
 * MAC, and every stored chunk of every layer (shadowed or not) authenticated.
 */
import { isZeroExtent } from "../format/extents.js";
import type { SealedLayer } from "../storage/sealed-layer.js";
import type { OpenedImage } from "./open-image.js";

export interface VerifyResult {
	layers: number;
	chunks: number;
	bytes: number;
}

export async function verifyImage(
	image: OpenedImage,
	onProgress?: (done: number, total: number) => void,
): Promise<VerifyResult> {
	const total = image.manifest.layers.reduce((n, l) => n + l.size, 0);
	let hashed = 0;
	for (const [i, d] of image.manifest.layers.entries()) {
		await image.layout.checkBlobDigest(d, `layer ${i}`, (n) => {
			hashed += n;
			onProgress?.(hashed / 2, total);
		});
	}
	let chunks = 0;
	let done = 0;
	for (const layer of image.disk.layers) {
		chunks += await authenticateLayer(layer, (bytes) => {
			done += bytes;
			onProgress?.(total / 2 + done / 2, total);
		});
	}
	onProgress?.(total, total);
	return { layers: image.disk.layers.length, chunks, bytes: total };
}

/** Authenticates every stored chunk of one layer; returns how many. */
export async function authenticateLayer(
	layer: SealedLayer,
	onBytes?: (n: number) => void,
): Promise<number> {
	let n = 0;
	const batch = Math.max(1, (4 << 20) / layer.chunkSize);
	for (const e of layer.extents) {
		if (isZeroExtent(e)) continue;
		for (let c = e.first; c < e.first + e.count; c += batch) {
			const k = Math.min(batch, e.first + e.count - c);
			await layer.readRun(e, c, k);
			n += k;
			onBytes?.(k * e.storedLength);
		}
	}
	return n;
}
