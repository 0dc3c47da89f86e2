/**
 * Where a layer's id and key come from.
 *
 * Normal sealing: a random 16-byte seal id per run and a random 32-byte key per layer.
 * Reproducible sealing (a seal id given by the user): the layer key is derived as
 *   HKDF-SHA256(image key, salt = seal id, "dadi/v1/layer-key" || position || chunk size ||
 *               codec || SHA-256 of the whole new disk)
 * so that any difference in what gets encrypted (disk bytes, chunking, codec) gives a different
 * key, and a reused seal id can never encrypt two different plaintexts under one (key, nonce).
 * The layer id is SHA-256("dadi/v1/layer-id" || seal id || position) in both modes.
 */
import { createHash, randomBytes } from "node:crypto";
import { hkdf32, LABELS } from "../crypto/kdf.js";
import { DadiError } from "../errors.js";
import { COMPRESSION_IDS, type CompressionName } from "../format/constants.js";
import type { RangeSource } from "../storage/source.js";

export function newSealId(): Buffer {
	return randomBytes(16);
}

export function parseSealId(hex: string): Buffer {
	if (!/^[0-9a-f]{32}$/.test(hex))
		throw new DadiError(
			"USAGE",
			`--seal-id must be 32 lowercase hex digits (16 bytes), got "${hex}"`,
		);
	return Buffer.from(hex, "hex");
}

export function layerIdOf(sealId: Buffer, position: number): Buffer {
	const pos = Buffer.alloc(4);
	pos.writeUInt32LE(position);
	return createHash("sha256")
		.update(LABELS.layerId)
		.update(Buffer.from([0]))
		.update(sealId)
		.update(pos)
		.digest();
}

export function randomLayerKey(): Buffer {
	return randomBytes(32);
}

export async function digestSource(
	src: RangeSource,
	onProgress?: (done: number) => void,
): Promise<Buffer> {
	const h = createHash("sha256");
	const step = 8 << 20;
	for (let off = 0; off < src.size; off += step) {
		h.update(await src.read(off, Math.min(step, src.size - off)));
		onProgress?.(Math.min(src.size, off + step));
	}
	return h.digest();
}

export function reproducibleLayerKey(
	imageKey: Buffer,
	sealId: Buffer,
	position: number,
	chunkSize: number,
	compression: CompressionName,
	diskDigest: Buffer,
): Buffer {
	const ctx = Buffer.alloc(12);
	ctx.writeUInt32LE(position, 0);
	ctx.writeUInt32LE(chunkSize, 4);
	ctx.writeUInt32LE(COMPRESSION_IDS[compression], 8);
	return hkdf32(
		imageKey,
		sealId,
		LABELS.layerKey,
		Buffer.concat([ctx, diskDigest]),
	);
}
