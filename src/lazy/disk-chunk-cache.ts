/**
 * A chunk cache in a directory, kept across restarts:
 *
 *     DIR/dadi-chunk-cache-v1        marker: this directory is ours, format version 1
 *     DIR/v1/<2 hex>/<62 hex>        one entry, named by the SHA-256 of its key (chunk-cache-file.ts)
 *     DIR/v1/<2 hex>/<62 hex>.<r>.tmp  an entry being written
 *
 * Entries are written to a temporary name in their directory and renamed into place, without
 * fsync: after a crash an entry may be torn, and then fails validation on read and is removed.
 * `bytes` counts whole file sizes (header, key and payload) against the bound. The index (sizes
 * in least-recently-used order) lives in memory; opening rebuilds it from the files, oldest
 * modification time first, evicts down to the bound and removes leftover temporary files.
 * Recency from reads is kept in memory only.
 *
 * Operations on one entry name are serialized (writes, removals, and the clean-up after a bad
 * read); reads do not wait, since a rename replaces a file atomically and an open file stays
 * readable when unlinked. A cache never fails a read because of itself: I/O errors while
 * writing or reading entries are counted in `writeErrors`/`readErrors` and become misses. One
 * process should use a directory at a time (a second one would keep its own, separate bound).
 */
import { randomBytes } from "node:crypto";
import type { Stats } from "node:fs";
import { constants } from "node:fs";
import {
	access,
	type FileHandle,
	lstat,
	mkdir,
	open,
	readdir,
	readFile,
	rename,
	rm,
	stat,
	unlink,
	writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { DadiError, fromSystemError } from "../errors.js";
import { trackTemp, untrackTemp } from "../temp-files.js";
import {
	type ChunkCache,
	checkCacheKey,
	checkMaxBytes,
	LruSizes,
} from "./chunk-cache-base.js";
import {
	decodeEntry,
	encodeEntry,
	entryName,
	entrySize,
} from "./chunk-cache-file.js";

/** The marker file's name and (trimmed) contents. */
export const CACHE_MARKER = "dadi-chunk-cache-v1";
const MARKER_TEXT = `${CACHE_MARKER}\nciphertext chunks of dadi images; safe to delete\n`;
const ENTRIES = "v1";
const SUBDIR_RE = /^[0-9a-f]{2}$/;
const ENTRY_RE = /^[0-9a-f]{62}$/;
const TEMP_RE = /\.tmp$/;
/** Names a fresh cache directory may already hold (a file system's root). */
const ALLOWED_STRANGERS = new Set(["lost+found"]);

const errno = (e: unknown): string | undefined =>
	(e as NodeJS.ErrnoException)?.code;

export class DiskChunkCache implements ChunkCache {
	readonly #lru = new LruSizes();
	readonly #locks = new Map<string, Promise<void>>();
	readonly #pending = new Set<Promise<unknown>>();
	readonly #subdirs = new Set<string>();
	#writeErrors = 0;
	#readErrors = 0;
	#closed = false;

	private constructor(
		/** The cache directory. */
		readonly dir: string,
		/** The bound on `bytes`. */
		readonly maxBytes: number,
	) {}

	/**
	 * Opens (creating it 0700 if missing) the cache in `dir`. A directory that is neither empty
	 * nor marked as a cache is refused (INPUT_INVALID), so that a mistyped path never has its
	 * files evicted; one that cannot be created or used is an IO error naming it.
	 */
	static async open(dir: string, maxBytes: number): Promise<DiskChunkCache> {
		const max = checkMaxBytes(maxBytes, `chunk cache ${dir}`);
		try {
			await mkdir(dir, { recursive: true, mode: 0o700 });
			if (!(await stat(dir)).isDirectory())
				throw Object.assign(new Error("not a directory"), { code: "ENOTDIR" });
		} catch (e) {
			throw dirError(e, dir);
		}
		await claim(dir);
		const entries = join(dir, ENTRIES);
		try {
			await mkdir(entries, { recursive: true, mode: 0o700 });
			await access(entries, constants.R_OK | constants.W_OK | constants.X_OK);
		} catch (e) {
			throw dirError(e, entries);
		}
		const cache = new DiskChunkCache(dir, max);
		await cache.#scan();
		return cache;
	}

	get bytes(): number {
		return this.#lru.total;
	}

	get entries(): number {
		return this.#lru.count;
	}

	/** Entries that could not be written or removed (e.g. ENOSPC); each was dropped instead. */
	get writeErrors(): number {
		return this.#writeErrors;
	}

	/** Entries that could not be read for a reason other than being missing or invalid. */
	get readErrors(): number {
		return this.#readErrors;
	}

	async get(key: string, length?: number): Promise<Buffer | undefined> {
		this.#check(key);
		return this.#track(this.#get(key, entryName(key), length));
	}

	async put(key: string, bytes: Buffer): Promise<void> {
		this.#check(key);
		const name = entryName(key);
		if (entrySize(key, bytes.length) > this.maxBytes)
			return this.#track(this.#locked(name, () => this.#remove(name)));
		// Encode before the first await: the caller may reuse `bytes` once this returns.
		return this.#track(this.#put(name, encodeEntry(key, bytes)));
	}

	async delete(key: string): Promise<void> {
		this.#check(key);
		const name = entryName(key);
		return this.#track(this.#locked(name, () => this.#remove(name)));
	}

	async close(): Promise<void> {
		this.#closed = true;
		while (this.#pending.size > 0) await Promise.allSettled(this.#pending);
	}

	#path(name: string): string {
		return join(this.dir, ENTRIES, name.slice(0, 2), name.slice(2));
	}

	async #get(
		key: string,
		name: string,
		length: number | undefined,
	): Promise<Buffer | undefined> {
		const path = this.#path(name);
		let fh: FileHandle;
		try {
			fh = await open(
				path,
				constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK,
			);
		} catch (e) {
			const code = errno(e);
			if (code === "ENOENT" || code === "ENOTDIR") {
				if (this.#lru.has(name)) await this.#discard(name, () => false);
			} else if (code === "ELOOP") {
				await this.#discard(name, (st) => st.isSymbolicLink());
			} else this.#readErrors++;
			return undefined;
		}
		let st: Stats;
		let file: Buffer | undefined;
		try {
			st = await fh.stat();
			// A caller that knows the payload's length accepts no other size, whatever size a hostile
			// host made the file (nothing is allocated for it).
			const want = length === undefined ? undefined : entrySize(key, length);
			if (
				st.isFile() &&
				st.size <= this.maxBytes &&
				(want === undefined || st.size === want)
			) {
				const buf = Buffer.allocUnsafe(st.size);
				let off = 0;
				while (off < buf.length) {
					const { bytesRead } = await fh.read(buf, off, buf.length - off, off);
					if (bytesRead === 0) break;
					off += bytesRead;
				}
				if (off === buf.length) file = buf;
			}
		} catch {
			this.#readErrors++;
			return undefined;
		} finally {
			await fh.close().catch(() => {});
		}
		const payload = file && decodeEntry(file, key);
		if (payload === undefined) {
			await this.#discard(
				name,
				(now) => now.dev === st.dev && now.ino === st.ino,
			);
			return undefined;
		}
		// Only recency: sizes in the index come from our own writes and the scan at open.
		this.#lru.touch(name);
		return payload;
	}

	async #put(name: string, file: Buffer): Promise<void> {
		let evictions: Promise<void>[] = [];
		await this.#locked(name, async () => {
			if (!(await this.#write(name, file))) {
				// Do not leave the older entry standing in for the one that failed to be stored.
				await this.#remove(name);
				return;
			}
			this.#lru.set(name, file.length);
			evictions = this.#lru
				.evict(this.maxBytes, name)
				.map((v) => this.#evictFile(v));
		});
		// Awaited outside our own lock: each eviction takes its victim's lock.
		await Promise.all(evictions);
	}

	/** Writes an entry file atomically; false (counted) if that failed. */
	async #write(name: string, file: Buffer): Promise<boolean> {
		const sub = name.slice(0, 2);
		const path = this.#path(name);
		const tmp = `${path}.${randomBytes(6).toString("hex")}.tmp`;
		trackTemp(tmp);
		try {
			if (!this.#subdirs.has(sub)) {
				await mkdir(join(this.dir, ENTRIES, sub), {
					recursive: true,
					mode: 0o700,
				});
				this.#subdirs.add(sub);
			}
			await writeFile(tmp, file, { flag: "wx", mode: 0o600 });
			await rename(tmp, path);
			return true;
		} catch (e) {
			if (errno(e) === "ENOENT") this.#subdirs.delete(sub);
			this.#writeErrors++;
			await rm(tmp, { force: true }).catch(() => {});
			return false;
		} finally {
			untrackTemp(tmp);
		}
	}

	/** Forgets an entry and removes its file (call with the entry's lock held). */
	async #remove(name: string): Promise<void> {
		this.#lru.remove(name);
		await this.#unlink(name);
	}

	/** Removes the file of an entry already taken out of the index, unless a put re-added it. */
	#evictFile(name: string): Promise<void> {
		return this.#locked(name, async () => {
			if (!this.#lru.has(name)) await this.#unlink(name);
		});
	}

	/**
	 * After a bad read: under the entry's lock, removes the file if it is still the one that was
	 * read (`same` on its lstat, or missing) and forgets the entry.
	 */
	#discard(name: string, same: (st: Stats) => boolean): Promise<void> {
		return this.#locked(name, async () => {
			let now: Stats | undefined;
			try {
				now = await lstat(this.#path(name));
			} catch (e) {
				if (errno(e) !== "ENOENT" && errno(e) !== "ENOTDIR") {
					this.#readErrors++;
					return;
				}
			}
			if (now === undefined) this.#lru.remove(name);
			else if (same(now)) await this.#remove(name);
		});
	}

	async #unlink(name: string): Promise<void> {
		try {
			await unlink(this.#path(name));
		} catch (e) {
			if (errno(e) !== "ENOENT" && errno(e) !== "ENOTDIR") this.#writeErrors++;
		}
	}

	/** Runs `fn` after every earlier operation on entry `name` has finished. */
	async #locked<T>(name: string, fn: () => Promise<T>): Promise<T> {
		const prev = this.#locks.get(name);
		let release!: () => void;
		const mine = new Promise<void>((r) => {
			release = r;
		});
		const tail = prev ? prev.then(() => mine) : mine;
		this.#locks.set(name, tail);
		try {
			if (prev) await prev;
			return await fn();
		} finally {
			release();
			if (this.#locks.get(name) === tail) this.#locks.delete(name);
		}
	}

	#track<T>(p: Promise<T>): Promise<T> {
		this.#pending.add(p);
		const done = () => this.#pending.delete(p);
		p.then(done, done);
		return p;
	}

	#check(key: string): void {
		if (this.#closed)
			throw new DadiError(
				"USAGE",
				`chunk cache ${this.dir}: used after close()`,
			);
		checkCacheKey(key);
	}

	/** Rebuilds the index from the files, removes temporary files, evicts down to the bound. */
	async #scan(): Promise<void> {
		const root = join(this.dir, ENTRIES);
		let subs: string[];
		try {
			subs = (await readdir(root, { withFileTypes: true }))
				.filter((d) => d.isDirectory() && SUBDIR_RE.test(d.name))
				.map((d) => d.name);
		} catch (e) {
			throw dirError(e, root);
		}
		const found: { name: string; size: number; mtime: number }[] = [];
		for (const sub of subs) {
			this.#subdirs.add(sub);
			let names: string[];
			try {
				names = await readdir(join(root, sub));
			} catch {
				this.#readErrors++;
				continue;
			}
			await Promise.all(
				names.map(async (n) => {
					const p = join(root, sub, n);
					if (TEMP_RE.test(n)) {
						await rm(p, { force: true }).catch(() => this.#writeErrors++);
						return;
					}
					if (!ENTRY_RE.test(n)) return;
					try {
						const st = await lstat(p);
						if (st.isFile())
							found.push({ name: sub + n, size: st.size, mtime: st.mtimeMs });
						else if (st.isSymbolicLink()) await unlink(p);
					} catch {
						this.#readErrors++;
					}
				}),
			);
		}
		found.sort(
			(a, b) =>
				a.mtime - b.mtime || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
		);
		for (const f of found) this.#lru.set(f.name, f.size);
		await Promise.all(
			this.#lru.evict(this.maxBytes).map((v) => this.#unlink(v)),
		);
	}
}

/** Makes `dir` ours: checks the marker, or writes it into an empty directory. */
async function claim(dir: string): Promise<void> {
	const marker = join(dir, CACHE_MARKER);
	let text: string | undefined;
	try {
		text = await readFile(marker, "utf8");
	} catch (e) {
		if (errno(e) !== "ENOENT") throw dirError(e, marker);
	}
	if (text !== undefined) {
		if (text.split("\n")[0]?.trim() !== CACHE_MARKER)
			throw new DadiError(
				"INPUT_INVALID",
				`${marker}: not a dadi chunk cache marker of this version; remove the directory ${dir} or choose another cache directory`,
			);
		return;
	}
	let names: string[];
	try {
		names = await readdir(dir);
	} catch (e) {
		throw dirError(e, dir);
	}
	const tornMarker = (n: string) =>
		n.startsWith(`${CACHE_MARKER}.`) && TEMP_RE.test(n);
	if (names.some((n) => !ALLOWED_STRANGERS.has(n) && !tornMarker(n)))
		throw new DadiError(
			"INPUT_INVALID",
			`${dir}: not empty and not a dadi chunk cache (no ${CACHE_MARKER} file); choose an empty or new directory for the cache`,
		);
	for (const n of names.filter(tornMarker))
		await rm(join(dir, n), { force: true }).catch(() => {});
	const tmp = `${marker}.${randomBytes(6).toString("hex")}.tmp`;
	try {
		await writeFile(tmp, MARKER_TEXT, { flag: "wx", mode: 0o600 });
		await rename(tmp, marker);
	} catch (e) {
		await rm(tmp, { force: true }).catch(() => {});
		throw dirError(e, dir);
	}
}

function dirError(e: unknown, dir: string): DadiError {
	if (e instanceof DadiError) return e;
	const code = errno(e);
	if (code === "EEXIST" || code === "ENOTDIR")
		return new DadiError(
			"INPUT_INVALID",
			`${dir}: not a directory; the chunk cache needs a directory of its own`,
		);
	return fromSystemError(e, dir, "opening the chunk cache");
}
