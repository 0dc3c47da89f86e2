/**
 * Per-chunk and index AEAD for one layer: AES-256-GCM via node:crypto (OpenSSL, AES-NI).
 *
 * Keys. The 256-bit layer key never encrypts anything itself. HKDF-SHA256 (salt = layer id)
 * derives a chunk key, an index key and an index SIV key with distinct labels.
 *
 * Why no (key, nonce) pair ever encrypts two different plaintexts:
 * - Chunk nonce = u64 chunk index || u32 zero. The chunk key belongs to one layer key. A layer
 *   key is fresh randomness, or, in reproducible mode, derived from the image key, the seal id and
 *   a digest of everything that decides what the layer stores: the whole new disk, the chunk
 *   size, the codec and its version, the writer policy that chooses raw or compressed payloads, and
 *   the exact layers below (seal/keys.ts). Within a layer the writer stores each chunk index at
 *   most once (it walks the disk once, in order; readers reject overlapping extents), and chunk i's
 *   payload is a function of the new disk's chunk i, the chunk size, the codec and the writer
 *   policy alone. So one (chunk key, nonce) pair only ever meets one payload; in
 *   reproducible mode a repeat seal repeats the ciphertext too, revealing only that the inputs were
 *   identical, which is what reproducible output means.
 * - The index is sealed with a synthetic nonce (crypto/siv.ts): nonce = HMAC-SHA256(index SIV
 *   key, AAD || index)[0..12], stored in front of the ciphertext and re-checked on open. A nonce
 *   repeats only if the header, trailer and index all repeat, and then so does the ciphertext, so
 *   even a misused layer key cannot expose or forge an index.
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
import { sivOpen, sivSeal } from "./siv.js";

const CHUNK_AAD_MAGIC = Buffer.from("DADICHK1", "latin1");
export const CHUNK_AAD_SIZE = 60;

export class LayerCipher {
	readonly #chunkKey: Buffer;
	readonly #indexKey: Buffer;
	readonly #indexSivKey: Buffer;
	readonly #aad: Buffer;
	readonly #nonce = Buffer.alloc(12);

	constructor(layerKey: Buffer, layerId: Buffer, chunkSize: number) {
		if (layerKey.length !== 32)
			throw new TypeError("layer key must be 32 bytes");
		if (layerId.length !== LAYER_ID_SIZE)
			throw new TypeError("layer id must be 32 bytes");
		this.#chunkKey = hkdf32(layerKey, layerId, LABELS.chunkKey);
		this.#indexKey = hkdf32(layerKey, layerId, LABELS.indexKey);
		this.#indexSivKey = hkdf32(layerKey, layerId, LABELS.indexSiv);
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

	/** Seals the index: synthetic nonce || ciphertext || tag. */
	sealIndex(plain: Buffer, aad: Buffer): Buffer {
		return sivSeal(this.#indexKey, this.#indexSivKey, aad, plain);
	}

	openIndex(stored: Buffer, aad: Buffer): Buffer {
		return sivOpen(
			this.#indexKey,
			this.#indexSivKey,
			aad,
			stored,
			"layer index",
		);
	}
}
