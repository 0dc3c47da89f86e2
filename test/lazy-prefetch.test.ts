/**
 * Prefetch and the request scheduler (src/lazy/prefetch.ts, limiter.ts, remote-blob.ts): chunks
 * fetched in trace order into the caches, coalesced; speculation never holds the slots reserved
 * for demand; a demand read that joins a stalled speculative fetch is promoted to its own request.
 */
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ImageKey } from "../src/crypto/image-key.js";
import { Limiter } from "../src/lazy/limiter.js";
import {
	openRemoteSealedImage,
	type RemoteOpenOptions,
} from "../src/lazy/open-remote.js";
import {
	fillGaps,
	groupRequests,
	type PrefetchResult,
	prefetchChunks,
	prefetchMetadata,
} from "../src/lazy/prefetch.js";
import { parseReference } from "../src/oci/reference.js";
import { erofsMetadataRanges } from "../src/prefetch/erofs-meta.js";
import { ext4MetadataRanges } from "../src/prefetch/ext4-meta.js";
import { buildFilesystem } from "../src/rootfs/mkfs.js";
import {
	cleanupTempDirs,
	prng,
	sealDiskToRegistry,
	tempDir,
	texty,
} from "./helpers.js";
import {
	type FaultProxy,
	isBlobGet,
	type ProxiedRequest,
	startFaultProxy,
} from "./registry/fault-proxy.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";

const MiB = 1 << 20;
const CHUNK = 64 * 1024;
const STORED = CHUNK + 16;
let reg: RunningRegistry;
let proxy: FaultProxy;
let key: ImageKey;
let disk: Buffer;

/** Held requests stay held: no hedge, no stall failure while the test runs. */
const PATIENT: RemoteOpenOptions = {
	insecure: true,
	timeouts: {
		connectMs: 5000,
		headersMs: 120_000,
		bodyMs: 120_000,
		requestMs: 120_000,
	},
	tuning: { stallMs: 120_000, hedgeMs: 0 },
};

beforeAll(async () => {
	reg = await startRegistry();
	proxy = await startFaultProxy({ host: reg.host });
	({ key, disk } = await sealDiskToRegistry(
		reg.host,
		"prefetch/disk:v1",
		16 * MiB,
		[
			{ at: 0, bytes: prng("p", 9 * MiB) },
			{ at: 10 * MiB, bytes: texty("q", 6 * MiB) },
		],
	));
});

afterAll(async () => {
	await proxy?.close();
	await reg?.stop();
	await cleanupTempDirs();
});

async function open(o: RemoteOpenOptions = PATIENT) {
	const ref = parseReference(`docker://${proxy.host}/prefetch/disk:v1`);
	if (ref.transport !== "docker") throw new Error("ref");
	return openRemoteSealedImage(ref, key, o);
}

/** Bytes a ranged request asks for (0 when it has no Range header). */
function rangeLength(req: ProxiedRequest): number {
	const m = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range ?? ""));
	return m ? Number(m[2]) - Number(m[1]) + 1 : 0;
}

const items = (first: number, n: number) =>
	Array.from({ length: n }, (_, i) => ({ layer: 0, chunk: first + i }));

describe("prefetchChunks", () => {
	it("fetches in coalesced requests into the cache; later reads fetch nothing and count as used", async () => {
		const image = await open();
		try {
			const r = await prefetchChunks(image.disk, items(0, 40), {
				maxRequestBytes: 16 * STORED,
			});
			expect(r).toMatchObject({
				chunks: 40,
				bytes: 40 * STORED,
				requests: 3,
				alreadyHad: 0,
				stoppedBy: "done",
			});
			const before = image.stats.rangeRequests;
			const got = await image.disk.read(3 * CHUNK, 20 * CHUNK);
			expect(got.equals(disk.subarray(3 * CHUNK, 23 * CHUNK))).toBe(true);
			const s = image.stats.toJSON();
			expect(s.rangeRequests).toBe(before);
			expect(s.prefetchChunks).toBe(40);
			expect(s.prefetchRequests).toBe(3);
			expect(s.prefetchBytes).toBe(40 * STORED);
			expect(s.prefetchUsed).toBe(20);
			// again: everything is had already
			const again = await prefetchChunks(image.disk, items(0, 40));
			expect(again).toMatchObject({ chunks: 0, requests: 0, alreadyHad: 40 });
		} finally {
			await image.close();
		}
	});

	it("skips zero chunks, out-of-range items and duplicates; stops at the budget and on abort", async () => {
		const image = await open();
		try {
			const zeroChunk = (9 * MiB) / CHUNK + 2; // between the two regions
			const r = await prefetchChunks(
				image.disk,
				[
					{ layer: 0, chunk: 100 },
					{ layer: 0, chunk: 100 },
					{ layer: 0, chunk: zeroChunk },
					{ layer: 1, chunk: 3 },
					{ layer: 0, chunk: -1 },
					{ layer: 0, chunk: 1e9 },
					{ layer: 0.5, chunk: 3 },
					...items(101, 9),
				],
				{ budgetBytes: 5 * STORED },
			);
			expect(r).toMatchObject({
				chunks: 5,
				bytes: 5 * STORED,
				requests: 1,
				stoppedBy: "budget",
			});
			const ac = new AbortController();
			ac.abort();
			const a = await prefetchChunks(image.disk, items(120, 4), {
				signal: ac.signal,
			});
			expect(a).toMatchObject({ chunks: 0, requests: 0, stoppedBy: "abort" });
		} finally {
			await image.close();
		}
	});

	it("never rejects: a registry that fails ends it with stoppedBy error", async () => {
		const image = await open({
			...PATIENT,
			retry: {
				attempts: 1,
				baseDelayMs: 1,
				maxDelayMs: 1,
				maxRetryAfterMs: 1,
			},
		});
		try {
			proxy.setRule((req) =>
				isBlobGet(true)(req) && rangeLength(req) > STORED
					? { kind: "status", status: 404 }
					: undefined,
			);
			const r = await prefetchChunks(image.disk, items(30, 8));
			expect(r.stoppedBy).toBe("error");
			expect(r.error).toBeTruthy();
			proxy.setRule(undefined);
			// the failed prefetch leaves nothing behind: a read fetches the chunk itself
			const got = await image.disk.read(31 * CHUNK, CHUNK);
			expect(got.equals(disk.subarray(31 * CHUNK, 32 * CHUNK))).toBe(true);
		} finally {
			proxy.setRule(undefined);
			await image.close();
		}
	});
});

describe("the scheduler", () => {
	it("A slow prefetch never delays an on-demand read", async () => {
		const image = await open();
		let release!: () => void;
		const until = new Promise<void>((r) => {
			release = r;
		});
		const held: ProxiedRequest[] = [];
		try {
			// Hold every multi-chunk range request (the prefetch's); single chunks pass.
			proxy.setRule((req) => {
				if (!isBlobGet(true)(req) || rangeLength(req) <= STORED)
					return undefined;
				held.push(req);
				return { kind: "hold", until };
			});
			let settled: PrefetchResult | undefined;
			// 8 groups of 15 chunks, 8 at once: all 8 limiter slots would be taken without the reserve
			const prefetch = prefetchChunks(image.disk, items(0, 120), {
				concurrency: 8,
				maxRequestBytes: 15 * STORED,
			}).then((r) => {
				settled = r;
				return r;
			});
			while (held.length < 6) await new Promise((r) => setTimeout(r, 10));
			// (a) a chunk no prefetch touches
			const a = await image.disk.read(200 * CHUNK, CHUNK);
			expect(a.equals(disk.subarray(200 * CHUNK, 201 * CHUNK))).toBe(true);
			// (b) a chunk inside a stalled prefetch request, and (c) one in a queued prefetch request
			const b = await image.disk.read(5 * CHUNK + 100, 3000);
			expect(b.equals(disk.subarray(5 * CHUNK + 100, 5 * CHUNK + 3100))).toBe(
				true,
			);
			const c = await image.disk.read(110 * CHUNK, CHUNK);
			expect(c.equals(disk.subarray(110 * CHUNK, 111 * CHUNK))).toBe(true);
			// all three answered while the prefetch is still held
			expect(settled).toBeUndefined();
			expect(held.length).toBe(6); // the reserve: speculation took 6 of the 8 slots
			const s = image.stats.toJSON();
			expect(s.demandWaitedForSlot.count).toBe(0);
			expect(s.demandWaitedBehindSpeculative).toBe(0);
			expect(s.demandJoinedSpeculative).toBe(2);
			expect(s.demandPromoted).toBe(2);
			expect(s.prefetchRequests).toBe(0);
			release();
			const r = await prefetch;
			expect(r).toMatchObject({ chunks: 120, requests: 8, stoppedBy: "done" });
			const after = image.stats.toJSON();
			expect(after.prefetchRequests).toBe(8);
			expect(after.prefetchUsed).toBe(2);
			// everything authenticates: read the prefetched stretch back
			const all = await image.disk.read(0, 120 * CHUNK);
			expect(all.equals(disk.subarray(0, 120 * CHUNK))).toBe(true);
		} finally {
			release();
			proxy.setRule(undefined);
			await image.close();
		}
	});
});

describe("prefetchMetadata", () => {
	it("walks an ext4 disk through the lazy reader and prefetches its metadata; the walk again fetches nothing", async () => {
		const dir = await tempDir();
		const staging = join(dir, "rootfs");
		for (let i = 0; i < 30; i++) {
			await mkdir(join(staging, `d${i}/e`), { recursive: true });
			await writeFile(join(staging, `d${i}/e/f`), prng(`f${i}`, 100_000));
		}
		await buildFilesystem({
			fsType: "ext4",
			staging,
			out: join(dir, "fs.img"),
			sizeBytes: 32 * MiB,
			uuid: "01234567-89ab-cdef-0123-456789abcdef",
			timestamp: 1_700_000_000,
		});
		const fs = await readFile(join(dir, "fs.img"));
		const sealed = await sealDiskToRegistry(
			reg.host,
			"prefetch/ext4:v1",
			fs.length,
			[{ at: 0, bytes: fs }],
		);
		const ref = parseReference(`docker://${reg.host}/prefetch/ext4:v1`);
		if (ref.transport !== "docker") throw new Error("ref");
		const image = await openRemoteSealedImage(ref, sealed.key, PATIENT);
		try {
			const r = await prefetchMetadata(image.disk, "ext4");
			expect(r.stoppedBy).toBe("done");
			expect(r.fsType).toBe("ext4");
			expect(r.metadataChunks).toBeGreaterThan(2);
			expect(r.chunks).toBeGreaterThan(0);
			expect(r.requests).toBeLessThan(r.chunks);
			const s = image.stats.toJSON();
			expect(s.prefetchChunks).toBe(r.chunks);
			// the same walk again: all from the caches
			const before = s.rangeRequests;
			await ext4MetadataRanges((o, n) => image.disk.read(o, n), {
				diskSize: image.disk.size,
			});
			expect(image.stats.rangeRequests).toBe(before);
			// a raw disk or another type does nothing
			const raw = await prefetchMetadata(image.disk, "raw");
			expect(raw).toMatchObject({ chunks: 0, requests: 0, stoppedBy: "done" });
			// garbage where a superblock should be: stoppedBy error, no rejection
			const bad = await prefetchMetadata(image.disk, "erofs");
			expect(bad.stoppedBy).toBe("error");
			expect(bad.error).toMatch(/EROFS/);
		} finally {
			await image.close();
		}
	});
});

describe("prefetchMetadata on EROFS", () => {
	it("walks the directory tree through the lazy reader; the walk again fetches nothing", async () => {
		const dir = await tempDir();
		const staging = join(dir, "rootfs");
		for (let i = 0; i < 40; i++) {
			await mkdir(join(staging, `d${i}/e`), { recursive: true });
			await writeFile(join(staging, `d${i}/e/f`), prng(`g${i}`, 50_000));
		}
		await buildFilesystem({
			fsType: "erofs",
			staging,
			out: join(dir, "fs.img"),
			uuid: "01234567-89ab-cdef-0123-456789abcdef",
			timestamp: 1_700_000_000,
		});
		const fs = await readFile(join(dir, "fs.img"));
		const size = Math.ceil(fs.length / CHUNK) * CHUNK;
		const sealed = await sealDiskToRegistry(
			reg.host,
			"prefetch/erofs:v1",
			size,
			[{ at: 0, bytes: fs }],
		);
		const ref = parseReference(`docker://${reg.host}/prefetch/erofs:v1`);
		if (ref.transport !== "docker") throw new Error("ref");
		const image = await openRemoteSealedImage(ref, sealed.key, PATIENT);
		try {
			const r = await prefetchMetadata(image.disk, "erofs");
			expect(r).toMatchObject({ fsType: "erofs", stoppedBy: "done" });
			expect(r.metadataChunks).toBeGreaterThan(0);
			const before = image.stats.rangeRequests;
			const ranges = await erofsMetadataRanges(
				(o, n) => image.disk.read(o, n),
				{ diskSize: image.disk.size },
			);
			// the root's inode and one for each of the 120 paths under it
			const inodes = new Set(
				ranges.filter((x) => x.length === 64).map((x) => x.offset),
			);
			expect(inodes.size).toBe(121);
			expect(image.stats.rangeRequests).toBe(before);
		} finally {
			await image.close();
		}
	});
});

describe("Limiter", () => {
	it("keeps the reserve for demand, and serves demand first", async () => {
		const l = new Limiter(4);
		expect(l.reserved).toBe(2);
		const gates: (() => void)[] = [];
		const gate = () => new Promise<void>((r) => gates.push(r));
		const order: string[] = [];
		const spec = [0, 1, 2].map((i) =>
			l.run(async () => {
				order.push(`s${i}`);
				await gate();
			}, true),
		);
		await new Promise((r) => setImmediate(r));
		expect(order).toEqual(["s0", "s1"]);
		const d = [0, 1, 2].map((i) =>
			l.run(async () => {
				order.push(`d${i}`);
				await gate();
			}),
		);
		await new Promise((r) => setImmediate(r));
		expect(order).toEqual(["s0", "s1", "d0", "d1"]);
		gates.shift()?.(); // s0 ends: the waiting demand goes before the waiting speculation
		await new Promise((r) => setTimeout(r, 5));
		expect(order).toEqual(["s0", "s1", "d0", "d1", "d2"]);
		while (gates.length) {
			gates.shift()?.();
			await new Promise((r) => setTimeout(r, 5));
		}
		await Promise.all([...spec, ...d]);
		expect(order).toEqual(["s0", "s1", "d0", "d1", "d2", "s2"]);
		expect(l.running).toEqual({ all: 0, speculative: 0 });
	});

	it("with one slot, speculation may use it (no reserve is possible)", async () => {
		const l = new Limiter(1);
		expect(l.reserved).toBe(0);
		expect(await l.run(async () => 7, true)).toBe(7);
	});
});

describe("fillGaps", () => {
	it("fills gaps of at most N chunks up to the next named chunk, right after the chunk below", () => {
		const named = new Set([1, 4, 10, 20, 21]);
		expect(fillGaps([10, 1, 4, 20, 21], named, 2)).toEqual([
			10, 1, 2, 3, 4, 20, 21,
		]);
		expect(named.has(2) && named.has(3)).toBe(true);
		expect(fillGaps([5, 9], new Set([5, 9]), 0)).toEqual([5, 9]);
		fc.assert(
			fc.property(
				fc.uniqueArray(fc.nat({ max: 200 }), { maxLength: 50 }),
				fc.nat({ max: 4 }),
				(chunks, gap) => {
					const set = new Set(chunks);
					const out = fillGaps(chunks, set, gap);
					expect(new Set(out).size).toBe(out.length);
					for (const c of chunks) expect(out).toContain(c);
					for (const c of out)
						if (!chunks.includes(c)) {
							// a filled chunk lies in a gap of at most `gap` between two named chunks
							const below = Math.max(...chunks.filter((x) => x < c));
							const above = Math.min(...chunks.filter((x) => x > c));
							expect(above - below - 1).toBeLessThanOrEqual(gap);
						}
				},
			),
		);
	});
});

describe("groupRequests", () => {
	it("puts every chunk in exactly one contiguous group within the bound, in trace order", () => {
		fc.assert(
			fc.property(
				fc.uniqueArray(fc.integer({ min: 0, max: 60 }), { maxLength: 60 }),
				fc.integer({ min: 1, max: 8 }),
				(chunks, per) => {
					const wanted = chunks.map((c) => ({
						layer: c % 2,
						range: { offset: 4096 + c * 100, length: 100 },
					}));
					const groups = groupRequests(wanted, per * 100);
					const seen = groups.flat();
					expect(seen.length).toBe(wanted.length);
					expect(new Set(seen).size).toBe(wanted.length);
					for (const g of groups) {
						expect(g.length).toBeLessThanOrEqual(per);
						for (let i = 1; i < g.length; i++) {
							expect(g[i]?.layer).toBe(g[0]?.layer);
							expect(g[i]?.range.offset).toBe(
								(g[i - 1]?.range.offset ?? 0) + 100,
							);
						}
					}
					// each group holds the earliest (trace order) chunk not in an earlier group
					const firstIndex = groups.map((g) =>
						Math.min(...g.map((w) => wanted.indexOf(w))),
					);
					expect([...firstIndex].sort((x, y) => x - y)).toEqual(firstIndex);
				},
			),
		);
	});
});
