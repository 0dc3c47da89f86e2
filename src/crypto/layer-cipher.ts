/**
 * Per-chunk and index AEAD for one layer: AES-256-GCM via node:crypto (OpenSSL, AES-NI).
 *
 * Keys. The random 256-bit layer key never encrypts anything itself. HKDF-SHA256 (salt = layer id)
 * derives a chunk key and an index key with distinct labels.
 *
 * Why every (key, nonce) pair is used once:
 * - Chunk nonce = u64 chunk index || u32 zero. A layer's chunk key belongs to that layer alone
 *   (its layer key is fresh randomness, or in reproducible mode is derived from the image key,
 *   the seal id and the digest of the exact plaintext being sealed, see seal/keys.ts), and the
 *   writer stores each chunk index at most once: it walks the disk once in order and the reader
 *   rejects any index whose extents overlap. So no chunk nonce repeats under one chunk key.
 * - Index nonce = 12 zero bytes under the separate index key: each layer key seals exactly one
 *   index.
 * In reproducible mode the same layer key may seal the same disk twice; then every (nonce,
 * plaintext) pair repeats too and so does the ciphertext, which reveals only that the inputs were
 * identical, which is what reproducible output means.
 *
 * AAD binds each chunk to its layer, its position, the chunk size, its stored length and its
 * flags, so a chunk cannot be moved to another index, another layer, or reinterpreted
 * (compressed vs raw). The index AAD is the header and trailer bytes, which authenticates them.
 */
import { createCipheriv, createDecipheriv } from "node:crypto";
import { authFailed } from "../errors.js";
import { writeU64 } from "../format/bytes.js";
import { LAYER_ID_SIZE, TAG_SIZE } from "../format/constants.js";
import { hkdf32, LABELS } from "./kdf.js";

const CHUNK_AAD_MAGIC = Buffer.from("DADICHK1", "latin1");
export const CHUNK_AAD_SIZE = 60;

export class LayerCipher {
	readonly #chunkKey: Buffer;
	readonly #indexKey: Buffer;
	readonly #aad: Buffer;
	readonly #nonce = Buffer.alloc(12);

	constructor(layerKey: Buffer, layerId: Buffer, chunkSize: number) {
		if (layerKey.length !== 32)
			throw new TypeError("layer key must be 32 bytes");
		if (layerId.length !== LAYER_ID_SIZE)
			throw new TypeError("layer id must be 32 bytes");
		this.#chunkKey = hkdf32(layerKey, layerId, LABELS.chunkKey);
		this.#indexKey = hkdf32(layerKey, layerId, LABELS.indexKey);
		this.#aad = Buffer.alloc(CHUNK_AAD_SIZE);
		CHUNK_AAD_MAGIC.copy(this.#aad, 0);
		layerId.copy(this.#aad, 8);
		this.#aad.writeUInt32LE(chunkSize, 48);
	}

	/** The AAD for one chunk (exported for the format vectors and docs). */
	chunkAad(chunk: number, storedLength: number, flags: number): Buffer {
		writeU64(this.#aad, 40, chunk);
		this.#aad.writeUInt32LE(storedLength, 52);
		this.#aad.writeUInt16LE(flags, 56);
		return this.#aad;
	}

	#chunkNonce(chunk: number): Buffer {
		writeU64(this.#nonce, 0, chunk);
		return this.#nonce;
	}

	/** Encrypts one chunk's payload; returns ciphertext || tag. */
	sealChunk(chunk: number, payload: Buffer, flags: number): Buffer {
		const c = createCipheriv(
			"aes-256-gcm",
			this.#chunkKey,
			this.#chunkNonce(chunk),
		);
		c.setAAD(this.chunkAad(chunk, payload.length + TAG_SIZE, flags));
		const out = Buffer.allocUnsafe(payload.length + TAG_SIZE);
		const n = c.update(payload).copy(out, 0);
		c.final();
		c.getAuthTag().copy(out, n);
		return out;
	}

	/** Authenticates and decrypts ciphertext || tag; throws AUTH_FAILED on any mismatch. */
	openChunk(chunk: number, stored: Buffer, flags: number): Buffer {
		if (stored.length < TAG_SIZE) throw authFailed(`chunk ${chunk}`);
		const ctLen = stored.length - TAG_SIZE;
		const d = createDecipheriv(
			"aes-256-gcm",
			this.#chunkKey,
			this.#chunkNonce(chunk),
		);
		d.setAAD(this.chunkAad(chunk, stored.length, flags));
		d.setAuthTag(stored.subarray(ctLen));
		const plain = d.update(stored.subarray(0, ctLen));
		try {
			d.final();
		} catch {
			plain.fill(0);
			throw authFailed(`chunk ${chunk}`);
		}
		return plain;
	}

	sealIndex(plain: Buffer, aad: Buffer): Buffer {
		const c = createCipheriv("aes-256-gcm", this.#indexKey, Buffer.alloc(12));
		c.setAAD(aad);
		return Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
	}

	openIndex(stored: Buffer, aad: Buffer): Buffer {
		if (stored.length < TAG_SIZE) throw authFailed("layer index");
		const d = createDecipheriv("aes-256-gcm", this.#indexKey, Buffer.alloc(12));
		d.setAAD(aad);
		d.setAuthTag(stored.subarray(stored.length - TAG_SIZE));
		const plain = d.update(stored.subarray(0, stored.length - TAG_SIZE));
		try {
			d.final();
		} catch {
			throw authFailed("layer index");
		}
		return plain;
	}
}
