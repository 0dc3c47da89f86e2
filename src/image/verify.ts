/**
 * Full verification of a sealed image in a layout: every blob against its digest, the config's
 * MAC, and every stored chunk of every layer (shadowed or not) authenticated.
 */
import { isZeroExtent } from "../format/extents.js";
import { layerAt } from "../layer-label.js";
import type { Piece, SealedLayer } from "../storage/sealed-layer.js";
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
		await image.checkBlobDigest(
			d,
			layerAt(i, image.manifest.layers.length),
			(n) => {
				hashed += n;
				onProgress?.(hashed / 2, total);
			},
		);
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

/**
 * Authenticates every stored chunk of one layer; returns how many. The layer's data extents tile its
 * data area in order, so consecutive extents are read together, up to 4 MiB at a time.
 */
export async function authenticateLayer(
	layer: SealedLayer,
	onBytes?: (n: number) => void,
): Promise<number> {
	let n = 0;
	let batch: Piece[] = [];
	let bytes = 0;
	const flush = async () => {
		if (batch.length === 0) return;
		n += (await layer.readPieces(batch)).length;
		onBytes?.(bytes);
		batch = [];
		bytes = 0;
	};
	for (const e of layer.extents) {
		if (isZeroExtent(e)) continue;
		let c = e.first;
		while (c < e.first + e.count) {
			const room = Math.max(
				1,
				Math.floor((MAX_BATCH - bytes) / e.storedLength),
			);
			const k = Math.min(room, e.first + e.count - c);
			batch.push({ extent: e, first: c, count: k });
			bytes += k * e.storedLength;
			c += k;
			if (bytes + e.storedLength > MAX_BATCH) await flush();
		}
	}
	await flush();
	return n;
}

const MAX_BATCH = 4 << 20;
