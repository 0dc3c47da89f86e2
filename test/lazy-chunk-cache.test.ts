import {
	mkdir,
	readdir,
	readFile,
	rename,
	rm,
	stat,
	symlink,
	truncate,
	utimes,
	writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import {
	CACHE_MARKER,
	type ChunkCache,
	DiskChunkCache,
	MAX_CACHE_KEY,
	MemoryChunkCache,
} from "../src/lazy/chunk-cache.js";
import {
	decodeEntry,
	ENTRY_HEADER,
	encodeEntry,
	entryName,
	entrySize,
} from "../src/lazy/chunk-cache-file.js";
import {
	cleanupTempDirs,
	listFiles,
	prng,
	rejection,
	tempDir,
} from "./helpers.js";

afterAll(cleanupTempDirs);

const key = (i: number, off = 0, len = 16) =>
	`sha256:${prng(`k${i}`, 32).toString("hex")}/${off}+${len}`;

const entryPath = (dir: string, k: string) => {
	const n = entryName(k);
	return join(dir, "v1", n.slice(0, 2), n.slice(2));
};

/** Entry files on disk and their total size. */
async function onDisk(dir: string): Promise<{ files: number; bytes: number }> {
	let files = 0;
	let bytes = 0;
	for (const f of await listFiles(join(dir, "v1"))) {
		files++;
		bytes += (await stat(join(dir, "v1", f))).size;
	}
	return { files, bytes };
}

describe("entry files", () => {
	it("encode and decode, and refuse another key or any damage", () => {
		const k = key(1);
		const payload = prng("p", 100);
		const file = encodeEntry(k, payload);
		expect(file.length).toBe(entrySize(k, 100));
		expect(decodeEntry(file, k)).toEqual(payload);
		expect(decodeEntry(file, key(2))).toBeUndefined();
		for (let i = 0; i < file.length; i++) {
			const bad = Buffer.from(file);
			bad[i] = (bad[i] as number) ^ 1;
			expect(decodeEntry(bad, k), `byte ${i}`).toBeUndefined();
		}
		for (let n = 0; n < file.length; n++)
			expect(decodeEntry(file.subarray(0, n), k)).toBeUndefined();
		expect(
			decodeEntry(Buffer.concat([file, Buffer.alloc(1)]), k),
		).toBeUndefined();
		expect(decodeEntry(encodeEntry(k, Buffer.alloc(0)), k)).toEqual(
			Buffer.alloc(0),
		);
	});

	it("never accepts random bytes (property)", () => {
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 300 }), (a) => {
				expect(decodeEntry(Buffer.from(a), "k")).toBeUndefined();
			}),
		);
	});
});

describe("MemoryChunkCache", () => {
	it("round-trips, copying in and out", async () => {
		const c = new MemoryChunkCache(1000);
		const b = Buffer.from("hello");
		await c.put("k", b);
		b[0] = 0;
		const got = await c.get("k");
		expect(got?.toString()).toBe("hello");
		got?.fill(0);
		expect((await c.get("k"))?.toString()).toBe("hello");
		expect(await c.get("other")).toBeUndefined();
		expect([c.bytes, c.entries]).toEqual([5, 1]);
		await c.delete("k");
		expect(await c.get("k")).toBeUndefined();
		expect([c.bytes, c.entries]).toEqual([0, 0]);
	});

	it("evicts the least recently used entries to stay in its bound", async () => {
		const c = new MemoryChunkCache(30);
		for (const k of ["a", "b", "c"]) await c.put(k, Buffer.alloc(10));
		await c.get("a");
		await c.put("d", Buffer.alloc(10));
		expect(await c.get("b")).toBeUndefined();
		expect(await c.get("a")).toBeDefined();
		await c.put("e", Buffer.alloc(20));
		expect(await c.get("c")).toBeUndefined();
		expect(await c.get("d")).toBeUndefined();
		expect([c.bytes, c.entries]).toEqual([30, 2]);
		// too large alone: not stored, and the older entry under that key is gone
		await c.put("a", Buffer.alloc(31));
		expect(await c.get("a")).toBeUndefined();
		expect([c.bytes, c.entries]).toEqual([20, 1]);
	});

	it("checks its arguments", async () => {
		expect(() => new MemoryChunkCache(-1)).toThrow(DadiError);
		expect(() => new MemoryChunkCache(1.5)).toThrow(DadiError);
		const c = new MemoryChunkCache(10);
		for (const k of ["", "x".repeat(MAX_CACHE_KEY + 1), "a\uD800b"])
			expect((await rejection(c.get(k))).code).toBe("USAGE");
		await c.put("x".repeat(MAX_CACHE_KEY), Buffer.alloc(1));
		await c.put("\u{1F600}", Buffer.alloc(1));
		expect(c.entries).toBe(2);
		await c.close();
		expect((await rejection(c.get("x"))).code).toBe("USAGE");
	});
});

describe("DiskChunkCache", () => {
	it("round-trips and lays out its directory", async () => {
		const dir = join(await tempDir(), "cache");
		const c = await DiskChunkCache.open(dir, 1 << 20);
		expect((await stat(dir)).mode & 0o777).toBe(0o700);
		expect(
			(await readFile(join(dir, CACHE_MARKER), "utf8")).startsWith(
				CACHE_MARKER,
			),
		).toBe(true);
		const k = key(1);
		const payload = prng("x", 5000);
		await c.put(k, payload);
		payload.fill(0);
		const got = await c.get(k);
		expect(got).toEqual(prng("x", 5000));
		expect(await c.get(key(2))).toBeUndefined();
		expect(c.bytes).toBe(entrySize(k, 5000));
		expect(c.entries).toBe(1);
		const path = entryPath(dir, k);
		expect((await stat(path)).size).toBe(c.bytes);
		expect((await stat(path)).mode & 0o777).toBe(0o600);
		await c.delete(k);
		expect(await c.get(k)).toBeUndefined();
		expect([c.bytes, c.entries]).toEqual([0, 0]);
		expect(await onDisk(dir)).toEqual({ files: 0, bytes: 0 });
		await c.close();
		expect((await rejection(c.get(k))).code).toBe("USAGE");
	});

	it("evicts least recently used entries to stay in its bound", async () => {
		const dir = await tempDir();
		const size = entrySize(key(0), 100);
		const c = await DiskChunkCache.open(dir, 3 * size);
		for (const i of [0, 1, 2]) await c.put(key(i), prng(`v${i}`, 100));
		await c.get(key(0));
		await c.put(key(3), prng("v3", 100));
		expect(await c.get(key(1))).toBeUndefined();
		for (const i of [0, 2, 3])
			expect(await c.get(key(i))).toEqual(prng(`v${i}`, 100));
		expect([c.bytes, c.entries]).toEqual([3 * size, 3]);
		expect(await onDisk(dir)).toEqual({ files: 3, bytes: 3 * size });
		// larger than the whole bound: skipped, and the older entry for the key dropped
		await c.put(key(0), prng("big", 3 * size));
		expect(await c.get(key(0))).toBeUndefined();
		expect(await onDisk(dir)).toEqual({ files: 2, bytes: 2 * size });
		await c.close();
	});

	it("keeps entries and the bound across restarts, oldest first by mtime", async () => {
		const dir = await tempDir();
		const size = entrySize(key(0), 50);
		let c = await DiskChunkCache.open(dir, 10 * size);
		for (const i of [0, 1, 2, 3]) await c.put(key(i), prng(`v${i}`, 50));
		await c.close();
		// recency on disk is the modification time: make 2 the oldest, then 0, 3, 1
		const times = [2000, 4000, 1000, 3000];
		for (const i of [0, 1, 2, 3])
			await utimes(
				entryPath(dir, key(i)),
				times[i] as number,
				times[i] as number,
			);
		c = await DiskChunkCache.open(dir, 3 * size);
		expect([c.bytes, c.entries]).toEqual([3 * size, 3]);
		expect(await onDisk(dir)).toEqual({ files: 3, bytes: 3 * size });
		expect(await c.get(key(2))).toBeUndefined();
		await c.put(key(4), prng("v4", 50));
		expect(await c.get(key(0))).toBeUndefined();
		for (const i of [1, 3, 4])
			expect(await c.get(key(i))).toEqual(prng(`v${i}`, 50));
		await c.close();
		c = await DiskChunkCache.open(dir, 10 * size);
		expect(c.entries).toBe(3);
		await c.close();
	});

	it("turns damaged or misplaced entry files into misses and removes them", async () => {
		const dir = await tempDir();
		const c = await DiskChunkCache.open(dir, 1 << 20);
		const damage: [string, (path: string) => Promise<void>][] = [
			[
				"flipped header byte",
				async (p) => {
					const b = await readFile(p);
					b[9] = (b[9] as number) ^ 0x40;
					await writeFile(p, b);
				},
			],
			[
				"flipped payload byte",
				async (p) => {
					const b = await readFile(p);
					b[b.length - 1] = (b[b.length - 1] as number) ^ 1;
					await writeFile(p, b);
				},
			],
			["truncated payload", (p) => truncate(p, ENTRY_HEADER + 100)],
			["empty file", (p) => truncate(p, 0)],
			[
				"another key's file",
				async (p) => {
					await c.put(key(99), prng("other", 300));
					await rename(entryPath(dir, key(99)), p);
				},
			],
		];
		for (const [what, hurt] of damage) {
			const k = key(7);
			await c.put(k, prng("seven", 300));
			const before = c.bytes;
			expect(before).toBeGreaterThan(0);
			await hurt(entryPath(dir, k));
			expect(await c.get(k), what).toBeUndefined();
			await expect(stat(entryPath(dir, k)), what).rejects.toThrow();
			expect(await c.get(key(99)), what).toBeUndefined();
			expect([c.bytes, c.entries], what).toEqual([0, 0]);
			await c.put(k, prng("seven", 300));
			expect(await c.get(k), what).toEqual(prng("seven", 300));
			await c.delete(k);
		}
		expect(c.readErrors).toBe(0);
		await c.close();
	});

	it("does not follow a symbolic link planted as an entry", async () => {
		const dir = await tempDir();
		const c = await DiskChunkCache.open(dir, 1 << 20);
		const k = key(3);
		await c.put(k, prng("s", 10));
		const target = join(dir, "..", `target-${entryName(k).slice(0, 8)}`);
		await writeFile(target, encodeEntry(k, prng("s", 10)));
		await rm(entryPath(dir, k));
		await symlink(target, entryPath(dir, k));
		expect(await c.get(k)).toBeUndefined();
		await expect(stat(entryPath(dir, k))).rejects.toThrow();
		expect((await stat(target)).size).toBeGreaterThan(0);
		await c.close();
	});

	it("removes leftover temporary files when it opens", async () => {
		const dir = await tempDir();
		let c = await DiskChunkCache.open(dir, 1 << 20);
		await c.put(key(1), prng("a", 10));
		await c.close();
		const sub = join(dir, "v1", entryName(key(1)).slice(0, 2));
		const stray = join(sub, `${entryName(key(1)).slice(2)}.0123456789ab.tmp`);
		await writeFile(stray, "partial");
		await mkdir(join(dir, "v1", "ff"), { recursive: true });
		await writeFile(join(dir, "v1", "ff", "x.tmp"), "x");
		c = await DiskChunkCache.open(dir, 1 << 20);
		expect(await listFiles(join(dir, "v1"))).toEqual([
			join(entryName(key(1)).slice(0, 2), entryName(key(1)).slice(2)),
		]);
		expect(c.entries).toBe(1);
		expect(await c.get(key(1))).toEqual(prng("a", 10));
		await c.close();
	});

	it("refuses directories that are not its own", async () => {
		const parent = await tempDir();
		await writeFile(join(parent, "precious.txt"), "do not evict me");
		let e = await rejection(DiskChunkCache.open(parent, 100));
		expect(e.code).toBe("INPUT_INVALID");
		expect(e.message).toContain(parent);
		expect(e.message).toMatch(/empty or new directory/);
		expect(await readdir(parent)).toEqual(["precious.txt"]);

		const file = join(parent, "precious.txt");
		e = await rejection(DiskChunkCache.open(file, 100));
		expect(e.code).toBe("INPUT_INVALID");
		expect(e.message).toContain(file);
		e = await rejection(DiskChunkCache.open(join(file, "sub"), 100));
		expect(e.code).toBe("INPUT_INVALID");

		// a marker torn by a crash while claiming an empty directory is no obstacle
		const torn = join(parent, "torn");
		await mkdir(torn);
		await writeFile(join(torn, `${CACHE_MARKER}.0123456789ab.tmp`), "dad");
		await (await DiskChunkCache.open(torn, 100)).close();
		expect((await readdir(torn)).sort()).toEqual([CACHE_MARKER, "v1"]);

		const other = join(parent, "other");
		await mkdir(other);
		await writeFile(join(other, CACHE_MARKER), "dadi-chunk-cache-v9\n");
		e = await rejection(DiskChunkCache.open(other, 100));
		expect(e.code).toBe("INPUT_INVALID");
		expect(e.message).toContain(CACHE_MARKER);

		e = await rejection(DiskChunkCache.open(join(parent, "new"), -5));
		expect(e.code).toBe("USAGE");
	});

	it("swallows and counts write errors instead of failing", async () => {
		const dir = await tempDir();
		const c = await DiskChunkCache.open(dir, 1 << 20);
		await c.put(key(1), prng("a", 10));
		// make every write fail (even for root): the entries directory becomes a file
		await rm(join(dir, "v1"), { recursive: true });
		await writeFile(join(dir, "v1"), "");
		await c.put(key(2), prng("b", 10));
		await c.put(key(1), prng("a", 10));
		expect(c.writeErrors).toBeGreaterThanOrEqual(2);
		expect(await c.get(key(1))).toBeUndefined();
		expect(await c.get(key(2))).toBeUndefined();
		expect([c.bytes, c.entries]).toEqual([0, 0]);
		await c.close();
	});

	// root may write anywhere
	it("refuses a directory it cannot use with an error naming it", async () => {
		// Runs as root too: a path under a regular file cannot become a directory.
		const parent = await tempDir();
		const file = join(parent, "file");
		await writeFile(file, "x");
		const e = await rejection(DiskChunkCache.open(join(file, "c"), 100));
		expect(["IO", "INPUT_INVALID"]).toContain(e.code);
		expect(e.message).toContain(join(file, "c"));
	});

	it("keeps concurrent gets, puts and deletes of the same keys consistent", async () => {
		const dir = await tempDir();
		const size = entrySize(key(0), 64);
		const c = await DiskChunkCache.open(dir, 4 * size);
		// two values per key, of different lengths, so a stale size would show
		const values = (i: number) => [prng(`a${i}`, 64), prng(`b${i}`, 40)];
		const seen: [number, Buffer | undefined][] = [];
		// eight workers, each awaiting its own operations, all on the same six keys
		const worker = async (w: number) => {
			const r = prng(`worker${w}`, 200);
			for (let n = 0; n < 200; n++) {
				const x = r[n] as number;
				const i = x % 6;
				if (x % 10 < 4) await c.put(key(i), values(i)[x & 1] as Buffer);
				else if (x % 10 < 9) seen.push([i, await c.get(key(i))]);
				else await c.delete(key(i));
			}
		};
		await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map(worker));
		for (const [i, b] of seen)
			if (b !== undefined)
				expect(values(i).some((v) => v.equals(b))).toBe(true);
		expect(seen.some(([, b]) => b !== undefined)).toBe(true);
		expect(c.bytes).toBeLessThanOrEqual(4 * size);
		expect(await onDisk(dir)).toEqual({ files: c.entries, bytes: c.bytes });
		await c.close();
	});
});

/** The reference: a map in least-recently-used order under a bound. */
class Model {
	readonly map = new Map<string, Buffer>();
	constructor(
		readonly max: number,
		readonly sizeOf: (k: string, n: number) => number,
	) {}
	get bytes() {
		let t = 0;
		for (const [k, v] of this.map) t += this.sizeOf(k, v.length);
		return t;
	}
	get(k: string) {
		const v = this.map.get(k);
		if (v) {
			this.map.delete(k);
			this.map.set(k, v);
		}
		return v;
	}
	put(k: string, v: Buffer) {
		this.map.delete(k);
		if (this.sizeOf(k, v.length) > this.max) return;
		this.map.set(k, v);
		for (const old of this.map.keys()) {
			if (this.bytes <= this.max) break;
			if (old !== k) this.map.delete(old);
		}
	}
	delete(k: string) {
		this.map.delete(k);
	}
}

type Op =
	| { op: "get"; k: string }
	| { op: "put"; k: string; v: Uint8Array }
	| { op: "delete"; k: string };

const modelKeys = ["a", key(1), key(2), "\u00e9t\u00e9/0+1", "z".repeat(40)];
const opArb: fc.Arbitrary<Op> = fc.oneof(
	fc.record({
		op: fc.constant("get" as const),
		k: fc.constantFrom(...modelKeys),
	}),
	fc.record({
		op: fc.constant("put" as const),
		k: fc.constantFrom(...modelKeys),
		v: fc.uint8Array({ maxLength: 60 }),
	}),
	fc.record({
		op: fc.constant("delete" as const),
		k: fc.constantFrom(...modelKeys),
	}),
);

async function runModel(cache: ChunkCache, model: Model, ops: Op[]) {
	for (const o of ops) {
		if (o.op === "get") expect(await cache.get(o.k)).toEqual(model.get(o.k));
		else if (o.op === "put") {
			await cache.put(o.k, Buffer.from(o.v));
			model.put(o.k, Buffer.from(o.v));
		} else {
			await cache.delete(o.k);
			model.delete(o.k);
		}
		expect(cache.entries).toBe(model.map.size);
		expect(cache.bytes).toBe(model.bytes);
		expect(cache.bytes).toBeLessThanOrEqual(model.max);
	}
}

describe("chunk caches against a model (property)", () => {
	it("MemoryChunkCache", async () => {
		await fc.assert(
			fc.asyncProperty(
				fc.integer({ min: 0, max: 150 }),
				fc.array(opArb, { maxLength: 40 }),
				async (max, ops) => {
					await runModel(
						new MemoryChunkCache(max),
						new Model(max, (_k, n) => n),
						ops,
					);
				},
			),
			{ numRuns: 500 },
		);
	});

	it("DiskChunkCache", async () => {
		const root = await tempDir();
		let run = 0;
		await fc.assert(
			fc.asyncProperty(
				fc.integer({ min: 0, max: 400 }),
				fc.array(opArb, { maxLength: 30 }),
				async (max, ops) => {
					const dir = join(root, String(run++));
					const cache = await DiskChunkCache.open(dir, max);
					const model = new Model(max, entrySize);
					try {
						await runModel(cache, model, ops);
						expect(await onDisk(dir)).toEqual({
							files: model.map.size,
							bytes: model.bytes,
						});
					} finally {
						await cache.close();
					}
					// and what survives a restart is exactly what the model holds
					const again = await DiskChunkCache.open(dir, max);
					expect([again.entries, again.bytes]).toEqual([
						model.map.size,
						model.bytes,
					]);
					for (const [k, v] of model.map) expect(await again.get(k)).toEqual(v);
					await again.close();
					await rm(dir, { recursive: true, force: true });
				},
			),
			{ numRuns: 150 },
		);
	});
});
