/**
 * Caches of ciphertext byte ranges for the lazy remote reader. What they hold is ciphertext that
 * is authenticated when it is decrypted (AES-GCM per chunk), so a cache may live on an untrusted
 * disk; it only promises never to return bytes stored under another key or of another length,
 * to stay under a byte bound by evicting the least recently used entries, and never to fail a
 * read because of itself: a cache that cannot keep an entry simply misses.
 *
 * Keys are opaque strings (the reader uses `sha256:<hex>/<offset>+<length>`) of at most
 * MAX_CACHE_KEY characters. This module holds the memory cache and re-exports the disk cache
 * (disk-chunk-cache.ts); both copy what they store and what they return, so callers may reuse or
 * modify their buffers.
 */
import { DadiError } from "../errors.js";
import {
	type ChunkCache,
	checkCacheKey,
	checkMaxBytes,
	LruSizes,
} from "./chunk-cache-base.js";

export { type ChunkCache, MAX_CACHE_KEY } from "./chunk-cache-base.js";
export { CACHE_MARKER, DiskChunkCache } from "./disk-chunk-cache.js";

/** A chunk cache in memory; `bytes` counts payload bytes. */
export class MemoryChunkCache implements ChunkCache {
	readonly #max: number;
	readonly #lru = new LruSizes();
	readonly #data = new Map<string, Buffer>();
	#closed = false;

	constructor(maxBytes: number) {
		this.#max = checkMaxBytes(maxBytes, "memory chunk cache");
	}

	get bytes(): number {
		return this.#lru.total;
	}

	get entries(): number {
		return this.#lru.count;
	}

	async get(key: string): Promise<Buffer | undefined> {
		this.#check(key);
		const b = this.#data.get(key);
		if (b === undefined) return undefined;
		this.#lru.touch(key);
		return Buffer.from(b);
	}

	async put(key: string, bytes: Buffer): Promise<void> {
		this.#check(key);
		this.#drop(key);
		if (bytes.length > this.#max) return;
		this.#data.set(key, Buffer.from(bytes));
		this.#lru.set(key, bytes.length);
		for (const old of this.#lru.evict(this.#max, key)) this.#data.delete(old);
	}

	async delete(key: string): Promise<void> {
		this.#check(key);
		this.#drop(key);
	}

	async close(): Promise<void> {
		this.#closed = true;
		this.#data.clear();
		this.#lru.clear();
	}

	#drop(key: string): void {
		this.#data.delete(key);
		this.#lru.remove(key);
	}

	#check(key: string): void {
		if (this.#closed)
			throw new DadiError("USAGE", "memory chunk cache: used after close()");
		checkCacheKey(key);
	}
}
