/**
 * The file-system metadata walkers behind prefetch at open (src/prefetch/): on real ext4 and EROFS
 * images made by mke2fs and mkfs.erofs they name the superblock, the descriptors, the inode tables
 * in use and every directory's blocks (ext4: checked against debugfs), or every entry's inode
 * (EROFS); on random or garbled bytes they never crash or hang, stay inside the disk and their
 * bounds, and fail only with a DadiError.
 */
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import {
	erofsMetadataRanges,
	parseErofsDirBlock,
	parseErofsInode,
	parseErofsSuper,
} from "../src/prefetch/erofs-meta.js";
import {
	ext4DirectoryBlocks,
	ext4MetadataRanges,
	parseExt4Super,
} from "../src/prefetch/ext4-meta.js";
import {
	chunksOf,
	type DiskRange,
	type ReadDisk,
} from "../src/prefetch/ranges.js";
import { buildFilesystem } from "../src/rootfs/mkfs.js";
import { cleanupTempDirs, tempDir } from "./helpers.js";
import { run } from "./image-fixtures.js";

const MiB = 1 << 20;
let ext4: Buffer;
let erofs: Buffer;
let ext4Path: string;
/** Directories in the tree (root excluded) and all paths under the root. */
const DIRS: string[] = [];
let paths = 0;

beforeAll(async () => {
	const dir = await tempDir();
	const staging = join(dir, "rootfs");
	for (let i = 0; i < 12; i++)
		for (let j = 0; j < 4; j++) {
			const d = `d${i}/sub${j}`;
			await mkdir(join(staging, d), { recursive: true });
			for (let k = 0; k < 5; k++)
				await writeFile(join(staging, d, `f${k}`), `${d}/${k}\n`);
		}
	// a directory needing several blocks
	await mkdir(join(staging, "big"));
	for (let k = 0; k < 400; k++)
		await writeFile(join(staging, "big", `a-rather-long-file-name-${k}`), "x");
	for (let i = 0; i < 12; i++) {
		DIRS.push(`d${i}`);
		for (let j = 0; j < 4; j++) DIRS.push(`d${i}/sub${j}`);
	}
	DIRS.push("big");
	paths = 12 + 12 * 4 + 12 * 4 * 5 + 1 + 400;
	const common = {
		staging,
		uuid: "01234567-89ab-cdef-0123-456789abcdef",
		timestamp: 1_700_000_000,
	};
	ext4Path = join(dir, "fs.ext4");
	await buildFilesystem({
		...common,
		fsType: "ext4",
		out: ext4Path,
		sizeBytes: 64 * MiB,
	});
	await buildFilesystem({
		...common,
		fsType: "erofs",
		out: join(dir, "fs.erofs"),
	});
	ext4 = await readFile(ext4Path);
	erofs = await readFile(join(dir, "fs.erofs"));
}, 120_000);

afterAll(cleanupTempDirs);

function reader(disk: Buffer, log?: DiskRange[]): ReadDisk {
	return async (offset, length) => {
		if (offset < 0 || length < 0 || offset + length > disk.length)
			throw new DadiError("OUT_OF_RANGE", "read past the disk");
		log?.push({ offset, length });
		return Buffer.from(disk.subarray(offset, offset + length));
	};
}

const covers = (ranges: readonly DiskRange[], at: number, n: number) =>
	ranges.some((r) => r.offset <= at && at + n <= r.offset + r.length);

describe("ext4", () => {
	it("names superblock, descriptors, inode tables and every directory's blocks, in that order", async () => {
		const announced: DiskRange[] = [];
		const reads: DiskRange[] = [];
		const ranges = await ext4MetadataRanges(reader(ext4, reads), {
			diskSize: ext4.length,
			beforeRead: async (r) => {
				announced.push(...r);
			},
		});
		const s = parseExt4Super(ext4.subarray(1024, 2048), ext4.length);
		expect(s.blockSize).toBe(4096);
		expect(ranges[0]).toEqual({ offset: 0, length: 4096 });
		expect(ranges[1]?.offset).toBe(4096); // the descriptors follow the superblock block
		// every directory's blocks, as debugfs lists them
		for (const d of ["/", ...DIRS.map((x) => `/${x}`)]) {
			const out = await run("debugfs", ["-R", `blocks ${d}`, ext4Path]);
			const blocks = out.trim().split(/\s+/).filter(Boolean).map(Number);
			expect(blocks.length).toBeGreaterThan(0);
			for (const b of blocks) expect(covers(ranges, b * 4096, 4096)).toBe(true);
		}
		// the big directory has several blocks
		const big = await run("debugfs", ["-R", "blocks /big", ext4Path]);
		expect(big.trim().split(/\s+/).length).toBeGreaterThan(2);
		// inode tables were announced before they were read; every read is inside the disk
		for (const r of reads.slice(2))
			expect(covers(announced, r.offset, r.length)).toBe(true);
		const total = ranges.reduce((n, r) => n + r.length, 0);
		expect(total).toBeLessThan(8 * MiB); // not the whole 64 MiB disk
		// chunk numbers: superblock chunk first, no duplicates
		const chunks = chunksOf(ranges, 64 * 1024, ext4.length / (64 * 1024));
		expect(chunks[0]).toBe(0);
		expect(new Set(chunks).size).toBe(chunks.length);
	});

	it("respects its bounds", async () => {
		const ranges = await ext4MetadataRanges(reader(ext4), {
			diskSize: ext4.length,
			maxBytes: 20_000,
			maxReadBytes: 8192,
		});
		expect(ranges.reduce((n, r) => n + r.length, 0)).toBeLessThanOrEqual(
			20_000,
		);
	});

	it("refuses a disk without an ext4 superblock with FORMAT_INVALID", async () => {
		const e = await ext4MetadataRanges(reader(erofs), {
			diskSize: erofs.length,
		}).catch((x: unknown) => x);
		expect(e).toBeInstanceOf(DadiError);
		expect((e as DadiError).code).toBe("FORMAT_INVALID");
	});
});

describe("EROFS", () => {
	it("walks the tree from the root: the superblock first, every entry's inode, every directory's data", async () => {
		const ranges = await erofsMetadataRanges(reader(erofs), {
			diskSize: erofs.length,
		});
		const s = parseErofsSuper(erofs.subarray(1024, 1152), erofs.length);
		expect(ranges[0]?.offset).toBe(0);
		expect(covers(ranges, 1024, 128)).toBe(true);
		expect(covers(ranges, s.metaBase + s.rootNid * 32, 32)).toBe(true);
		// an inode range for the root and every path under it (directories' own inode ranges,
		// with their inline tails, start at the same offsets)
		const inodes = new Set(
			ranges.filter((r) => r.offset >= s.metaBase).map((r) => r.offset),
		);
		const entryInodes = ranges.filter((r) => r.length === 64);
		expect(new Set(entryInodes.map((r) => r.offset)).size).toBe(paths + 1);
		expect(inodes.size).toBeGreaterThanOrEqual(paths + 1);
		// the big directory's entries were all found, so its blocks were read
		const root = parseErofsInode(
			s,
			s.metaBase + s.rootNid * 32,
			erofs.subarray(s.metaBase + s.rootNid * 32),
		);
		expect(root?.isDir).toBe(true);
	});

	it("refuses a disk without an EROFS superblock with FORMAT_INVALID", async () => {
		const e = await erofsMetadataRanges(reader(ext4), {
			diskSize: ext4.length,
		}).catch((x: unknown) => x);
		expect((e as DadiError).code).toBe("FORMAT_INVALID");
	});
});

/** Runs a walker; it must end with ranges inside the disk and bounds, or a DadiError. */
async function sane(
	walk: typeof ext4MetadataRanges,
	disk: Buffer,
	maxBytes: number,
): Promise<void> {
	let read = 0;
	const base = reader(disk);
	try {
		const ranges = await walk(
			async (o, n) => {
				read += n;
				return base(o, n);
			},
			{ diskSize: disk.length, maxBytes, maxReadBytes: 4 * MiB },
		);
		let total = 0;
		for (const r of ranges) {
			expect(r.offset).toBeGreaterThanOrEqual(0);
			expect(r.length).toBeGreaterThan(0);
			expect(r.offset + r.length).toBeLessThanOrEqual(disk.length);
			total += r.length;
		}
		expect(total).toBeLessThanOrEqual(maxBytes);
	} catch (e) {
		if (!(e instanceof DadiError)) throw e;
	}
	// reads beyond the superblocks and descriptors stay within the read bound
	expect(read).toBeLessThanOrEqual(4 * MiB + 64 * 1024);
}

/** A copy of `image`'s first `n` bytes with some bytes changed. */
const garbled = (image: () => Buffer, n: number) =>
	fc
		.array(fc.tuple(fc.nat({ max: n - 1 }), fc.integer({ min: 0, max: 255 })), {
			minLength: 1,
			maxLength: 64,
		})
		.map((edits) => {
			const b = Buffer.from(image().subarray(0, n));
			for (const [at, v] of edits) b[at] = v;
			return b;
		});

describe("on random and garbled bytes", () => {
	it("ext4: never crashes or hangs, stays in bounds", async () => {
		await fc.assert(
			fc.asyncProperty(
				garbled(() => ext4, 4 * MiB),
				(disk) => sane(ext4MetadataRanges, disk, 1 * MiB),
			),
			{ numRuns: 60 },
		);
	});

	it("ext4: superblock fields set at random", async () => {
		await fc.assert(
			fc.asyncProperty(
				fc.uint8Array({ minLength: 1024, maxLength: 1024 }),
				async (sb) => {
					const disk = Buffer.from(ext4.subarray(0, 2 * MiB));
					Buffer.from(sb).copy(disk, 1024);
					disk.writeUInt16LE(0xef53, 1024 + 0x38);
					await sane(ext4MetadataRanges, disk, 1 * MiB);
				},
			),
			{ numRuns: 100 },
		);
	});

	it("EROFS: never crashes or hangs, stays in bounds", async () => {
		await fc.assert(
			fc.asyncProperty(
				garbled(() => erofs, Math.min(erofs.length, 256 * 1024)),
				(disk) => sane(erofsMetadataRanges, disk, 1 * MiB),
			),
			{ numRuns: 100 },
		);
	});

	it("random bytes with a magic never crash either walker", async () => {
		await fc.assert(
			fc.asyncProperty(
				fc.uint8Array({ minLength: 2048, maxLength: 64 * 1024 }),
				async (bytes) => {
					const a = Buffer.from(bytes);
					a.writeUInt16LE(0xef53, 1024 + 0x38);
					await sane(ext4MetadataRanges, a, 1 * MiB);
					const b = Buffer.from(bytes);
					b.writeUInt32LE(0xe0f5e1e2, 1024);
					await sane(erofsMetadataRanges, b, 1 * MiB);
				},
			),
			{ numRuns: 200 },
		);
	});

	it("the block parsers take any bytes", () => {
		const s = parseExt4Super(ext4.subarray(1024, 2048), ext4.length);
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 4096 }), (bytes) => {
				const b = Buffer.from(bytes);
				for (const r of ext4DirectoryBlocks(s, b)) {
					expect(r.offset).toBeGreaterThan(0);
					expect(r.offset + r.length).toBeLessThanOrEqual(
						s.blocksCount * s.blockSize,
					);
				}
				for (const e of parseErofsDirBlock(b))
					expect(e.nid).toBeLessThanOrEqual(2 ** 40);
				parseErofsInode({ blockSize: 4096, rootNid: 0, metaBase: 0 }, 0, b);
			}),
		);
	});
});

describe("chunksOf", () => {
	it("names each touched chunk once, in first-touch order, within bounds", () => {
		fc.assert(
			fc.property(
				fc.array(
					fc.record({
						offset: fc.nat({ max: 1 << 20 }),
						length: fc.nat({ max: 1 << 18 }),
					}),
				),
				fc.integer({ min: 1, max: 64 }),
				(ranges, max) => {
					const c = chunksOf(ranges, 4096, 200, max);
					expect(new Set(c).size).toBe(c.length);
					expect(c.length).toBeLessThanOrEqual(max);
					for (const x of c) expect(x).toBeLessThan(200);
				},
			),
		);
	});
});
