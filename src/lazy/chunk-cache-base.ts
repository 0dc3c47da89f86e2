/**
 * What both chunk caches share (chunk-cache.ts, disk-chunk-cache.ts): the interface, key and
 * bound checks, and the least-recently-used size index. Kept apart so that chunk-cache.ts can
 * re-export the disk cache without an import cycle.
 */
import { DadiError } from "../errors.js";

export interface ChunkCache {
	/**
	 * The bytes stored under `key`, or undefined on a miss; marks the entry most recently used.
	 * `length`, when the caller knows it, is the only size accepted: an entry of another size is a
	 * miss and nothing is allocated for it.
	 */
	get(key: string, length?: number): Promise<Buffer | undefined>;
	/**
	 * Stores `bytes` under `key`, replacing what was there, then evicts least recently used
	 * entries until the cache is within its bound. An entry that alone exceeds the bound is not
	 * stored (and any older entry for the key is dropped).
	 */
	put(key: string, bytes: Buffer): Promise<void>;
	delete(key: string): Promise<void>;
	/** Bytes currently held, as counted against the bound. */
	readonly bytes: number;
	readonly entries: number;
	/** Waits for operations under way; the cache cannot be used afterwards. */
	close(): Promise<void>;
}

/** Longest key accepted, in UTF-16 code units. */
export const MAX_CACHE_KEY = 512;

/** Checks a key: a non-empty, well-formed (no lone surrogates) string of at most MAX_CACHE_KEY. */
export function checkCacheKey(key: unknown): string {
	if (
		typeof key !== "string" ||
		key.length === 0 ||
		key.length > MAX_CACHE_KEY ||
		/[\uD800-\uDFFF]/u.test(key)
	)
		throw new DadiError(
			"USAGE",
			`chunk cache key must be a string of 1 to ${MAX_CACHE_KEY} characters without lone surrogates`,
		);
	return key;
}

export function checkMaxBytes(maxBytes: unknown, what: string): number {
	if (
		typeof maxBytes !== "number" ||
		!Number.isSafeInteger(maxBytes) ||
		maxBytes < 0
	)
		throw new DadiError(
			"USAGE",
			`${what}: the size bound must be a non-negative integer number of bytes`,
		);
	return maxBytes;
}

/**
 * Sizes of entries in least-recently-used order (a Map keeps insertion order: the first entry is
 * the oldest), and their total.
 */
export class LruSizes {
	readonly #sizes = new Map<string, number>();
	#total = 0;

	get total(): number {
		return this.#total;
	}

	get count(): number {
		return this.#sizes.size;
	}

	has(name: string): boolean {
		return this.#sizes.has(name);
	}

	/** Adds or replaces an entry as the most recently used. */
	set(name: string, size: number): void {
		this.remove(name);
		this.#sizes.set(name, size);
		this.#total += size;
	}

	/** Marks an entry most recently used; false if absent. */
	touch(name: string): boolean {
		const size = this.#sizes.get(name);
		if (size === undefined) return false;
		this.#sizes.delete(name);
		this.#sizes.set(name, size);
		return true;
	}

	remove(name: string): boolean {
		const size = this.#sizes.get(name);
		if (size === undefined) return false;
		this.#sizes.delete(name);
		this.#total -= size;
		return true;
	}

	/** Removes and returns least recently used entries, sparing `keep`, until the total is <= max. */
	evict(max: number, keep?: string): string[] {
		const out: string[] = [];
		for (const name of this.#sizes.keys()) {
			if (this.#total <= max) break;
			if (name === keep) continue;
			this.remove(name);
			out.push(name);
		}
		return out;
	}

	clear(): void {
		this.#sizes.clear();
		this.#total = 0;
	}
}
