/**
 * Wrapping a layer key under an image key: AES-256 Key Wrap (RFC 3394, OpenSSL "id-aes256-wrap")
 * with a key-encryption key derived per layer: KEK = HKDF-SHA256(image key, salt = layer id,
 * "dadi/v1/layer-wrap"). Key Wrap is deterministic and authenticated, so sealing stays
 * reproducible, and deriving the KEK from the layer id binds the wrapped key to that layer: a
 * wrapped key copied to another layer's entry does not unwrap.
 */
import { createCipheriv, createDecipheriv } from "node:crypto";
import { authFailed } from "../errors.js";
import { hkdf32, LABELS } from "./kdf.js";

const IV = Buffer.from("A6A6A6A6A6A6A6A6", "hex");
export const WRAPPED_KEY_SIZE = 40;

export function wrapLayerKey(
	imageKey: Buffer,
	layerId: Buffer,
	layerKey: Buffer,
): Buffer {
	const kek = hkdf32(imageKey, layerId, LABELS.layerWrap);
	const c = createCipheriv("id-aes256-wrap", kek, IV);
	return Buffer.concat([c.update(layerKey), c.final()]);
}

export function unwrapLayerKey(
	imageKey: Buffer,
	layerId: Buffer,
	wrapped: Buffer,
): Buffer {
	if (wrapped.length !== WRAPPED_KEY_SIZE) throw authFailed("layer key unwrap");
	const kek = hkdf32(imageKey, layerId, LABELS.layerWrap);
	try {
		const d = createDecipheriv("id-aes256-wrap", kek, IV);
		return Buffer.concat([d.update(wrapped), d.final()]);
	} catch {
		throw authFailed("layer key unwrap");
	}
}
