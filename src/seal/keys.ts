/**
 * Where a layer's id and key come from.
 *
 * Normal sealing: a random 16-byte seal id per run, layer id = SHA-256("dadi/v1/layer-id" ||
 * 0x00 || seal id || u32 position), and a random 32-byte layer key.
 *
 * Reproducible sealing (a seal id given by the user): everything that decides the bytes a layer
 * stores is digested into the layer material
 *   M = SHA-256(u32 position || u32 chunk size || codec and library version || 0x00 ||
 *               writer policy identity || 0x00 ||
 *               lower identity (32 bytes, zero without a base) || SHA-256 of the new disk)
 * and then
 *   layer key = HKDF-SHA256(image key, salt = seal id, "dadi/v2/layer-key" || 0x00 || M)
 *   layer id  = HKDF-SHA256(image key, salt = seal id, "dadi/v2/layer-id"  || 0x00 || M)
 * so a reused seal id with any different input gives another key (no (key, nonce) pair ever meets
 * two plaintexts), and the public layer id is keyed: without the image key nobody can confirm a
 * guess of the disk content from it. The lower identity digests the base layers' ids and blob
 * digests, which fix the lower disk and so which chunks the upper layer stores. The writer policy
 * identity (writer-policy.ts) covers the one choice besides the codec that decides a chunk's
 * payload — raw or compressed; format v1 left it out (docs/format.md §5.6).
 */
import { createHash, randomBytes } from "node:crypto";
import { hkdf32, LABELS } from "../crypto/kdf.js";
import { DadiError } from "../errors.js";
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
		.update(LABELS.layerIdHash)
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

/** Identity of the layers below a new layer: their ids and blob digests, in order. */
export function lowerIdentity(
	layers: readonly { layerId: string; digest: string }[],
): Buffer {
	const h = createHash("sha256").update("dadi/v1/lower\0");
	for (const l of layers) h.update(`${l.layerId}:${l.digest}\n`);
	return layers.length === 0 ? Buffer.alloc(32) : h.digest();
}

export interface LayerMaterial {
	position: number;
	chunkSize: number;
	/** codecVersion() of the layer's codec. */
	codec: string;
	/** writerPolicyId() of the policy the layer is written with (writer-policy.ts). */
	policy: string;
	lower: Buffer;
	diskDigest: Buffer;
}

export function layerMaterial(m: LayerMaterial): Buffer {
	const nums = Buffer.alloc(8);
	nums.writeUInt32LE(m.position, 0);
	nums.writeUInt32LE(m.chunkSize, 4);
	return createHash("sha256")
		.update(nums)
		.update(m.codec)
		.update(Buffer.from([0]))
		.update(m.policy)
		.update(Buffer.from([0]))
		.update(m.lower)
		.update(m.diskDigest)
		.digest();
}

export function reproducibleLayer(
	imageKey: Buffer,
	sealId: Buffer,
	material: Buffer,
): { layerId: Buffer; layerKey: Buffer } {
	return {
		layerId: hkdf32(imageKey, sealId, LABELS.layerId, material),
		layerKey: hkdf32(imageKey, sealId, LABELS.layerKey, material),
	};
}
