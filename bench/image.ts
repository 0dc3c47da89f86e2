/**
 * The benchmark's disk image: an ext4 file system built with mke2fs from a deterministic sample of
 * the files under /usr (real binaries, libraries, text, already-compressed files), plus the free
 * space a real image has. Built once and cached; without mke2fs, a synthetic image of mixed
 * random, text, structured and zero regions stands in (and the report says so).
 */
import { spawnSync } from "node:child_process";
import { createCipheriv } from "node:crypto";
import {
	copyFile,
	mkdir,
	open,
	readdir,
	readFile,
	rename,
	rm,
	stat,
	utimes,
	writeFile,
} from "node:fs/promises";
import { dirname, join, relative } from "node:path";

export interface TestImage {
	path: string;
	size: number;
	kind: "ext4" | "synthetic";
	/** One line saying what the image holds, for the report. */
	description: string;
	/** True when the image came from the cache rather than being built in this run. */
	cached: boolean;
	/** Why the image is synthetic, when it is. */
	note?: string;
}

interface ImageMeta {
	kind: TestImage["kind"];
	size: number;
	description: string;
}

export interface PrepareImageOptions {
	cacheDir: string;
	/** Scratch space for the staging directory. */
	workDir: string;
	size: number;
	forceSynthetic: boolean;
	log: (line: string) => void;
}

/** Directories sampled for file content, walked in sorted order. */
const SOURCE_ROOTS = ["/usr/bin", "/usr/lib", "/usr/share"];
/** Files larger than this are skipped so that a few huge files do not dominate the sample. */
const MAX_SOURCE_FILE = 8 << 20;
/** Share of the image filled with file content; the rest is metadata and free (zero) space. */
const CONTENT_SHARE = 0.8;
/** Fixed identity and time so that rebuilding from the same files gives a similar image. */
const FS_UUID = "6b0d5c1e-3a52-4f0e-9d7c-0da5d1be0001";
const FIXED_TIME = 1_700_000_000; // 2023-11-14, seconds

const BLOCK = 4096;
/** Bytes of consecutive files taken at a time by the sampler. */
const SAMPLE_RUN = 2 << 20;
const roundUp = (n: number): number => Math.ceil(n / BLOCK) * BLOCK;

/** Returns the cached image for `size`, building it first when there is none. */
export async function prepareImage(o: PrepareImageOptions): Promise<TestImage> {
	await mkdir(o.cacheDir, { recursive: true });
	const mke2fs = o.forceSynthetic ? null : findMke2fs();
	if (!o.forceSynthetic && mke2fs === null)
		o.log(
			"mke2fs not found (install e2fsprogs for the ext4 image); falling back to a SYNTHETIC image",
		);
	const kind: TestImage["kind"] = mke2fs === null ? "synthetic" : "ext4";
	const note = o.forceSynthetic
		? "synthetic image requested (--synthetic)"
		: mke2fs === null
			? "mke2fs not found: SYNTHETIC fallback, not a real file system"
			: undefined;
	const image = await loadOrBuild(o, kind, mke2fs);
	return note === undefined ? image : { ...image, note };
}

async function loadOrBuild(
	o: PrepareImageOptions,
	kind: TestImage["kind"],
	mke2fs: string | null,
): Promise<TestImage> {
	const base = join(o.cacheDir, `${kind}-${o.size >> 20}M`);
	const cached = await readCached(base, o.size);
	if (cached !== null) return cached;

	o.log(`building the ${kind} test image (cached in ${o.cacheDir})...`);
	const tmp = `${base}.img.${process.pid}.tmp`;
	let meta: ImageMeta;
	try {
		meta =
			mke2fs === null
				? await buildSynthetic(tmp, o.size)
				: await buildExt4(mke2fs, tmp, o);
		await rename(tmp, `${base}.img`);
	} finally {
		await rm(tmp, { force: true });
	}
	await writeFile(`${base}.json`, `${JSON.stringify(meta, null, "\t")}\n`);
	return { path: `${base}.img`, ...meta, cached: false };
}

async function readCached(
	base: string,
	size: number,
): Promise<TestImage | null> {
	try {
		const meta = JSON.parse(
			await readFile(`${base}.json`, "utf8"),
		) as ImageMeta;
		const st = await stat(`${base}.img`);
		if (st.size !== size || meta.size !== size) return null;
		return { path: `${base}.img`, ...meta, cached: true };
	} catch {
		return null;
	}
}

/** The mke2fs binary, also looked up in sbin directories a non-root PATH may lack. */
function findMke2fs(): string | null {
	for (const cand of ["mke2fs", "/usr/sbin/mke2fs", "/sbin/mke2fs"]) {
		const r = spawnSync(cand, ["-V"], { stdio: "ignore" });
		if (r.error === undefined && r.status === 0) return cand;
	}
	return null;
}

// --- ext4 from /usr --------------------------------------------------------------------------

interface SourceFile {
	path: string;
	size: number;
}

async function buildExt4(
	mke2fs: string,
	out: string,
	o: PrepareImageOptions,
): Promise<ImageMeta> {
	const all: SourceFile[] = [];
	for (const root of SOURCE_ROOTS) await walkSorted(root, all);
	const staging = join(o.workDir, "staging");
	let budget = Math.floor(o.size * CONTENT_SHARE);
	// Directory blocks and ext4 metadata vary with the files found; shrink the sample if needed.
	for (let attempt = 1; ; attempt++) {
		const picked = sampleFiles(all, budget);
		const bytes = await stageFiles(picked, staging);
		o.log(
			`  staged ${picked.length} files, ${(bytes / 2 ** 20).toFixed(1)} MiB, from ${SOURCE_ROOTS.join(" ")}`,
		);
		const r = runMke2fs(mke2fs, staging, out, o.size);
		await rm(staging, { recursive: true, force: true });
		if (r === null) {
			const st = await stat(out);
			if (st.size !== o.size)
				throw new Error(`mke2fs wrote ${st.size} bytes, expected ${o.size}`);
			return {
				kind: "ext4",
				size: o.size,
				description: `ext4 (mke2fs -b 4096), ${picked.length} files / ${(bytes / 2 ** 20).toFixed(1)} MiB sampled from ${SOURCE_ROOTS.join(", ")}, rest free space`,
			};
		}
		await rm(out, { force: true });
		if (!/Could not allocate/.test(r) || attempt === 3)
			throw new Error(`mke2fs failed: ${r}`);
		budget = Math.floor(budget * 0.85);
		o.log("  the files did not fit; retrying with a smaller sample");
	}
}

/** Runs mke2fs with fixed identity and time; returns null on success, else its error output. */
function runMke2fs(
	mke2fs: string,
	staging: string,
	out: string,
	size: number,
): string | null {
	const r = spawnSync(
		mke2fs,
		[
			"-q",
			"-t",
			"ext4",
			"-b",
			String(BLOCK),
			"-U",
			FS_UUID,
			"-E",
			`hash_seed=${FS_UUID},root_owner=0:0`,
			"-d",
			staging,
			out,
			`${size >> 10}k`,
		],
		{
			encoding: "utf8",
			env: {
				...process.env,
				E2FSPROGS_FAKE_TIME: String(FIXED_TIME),
				SOURCE_DATE_EPOCH: String(FIXED_TIME),
			},
		},
	);
	if (r.error !== undefined) return r.error.message;
	return r.status === 0 ? null : `status ${r.status}: ${r.stderr.trim()}`;
}

/** Appends every regular file under `dir` (not following symlinks), in byte-wise sorted order. */
async function walkSorted(dir: string, out: SourceFile[]): Promise<void> {
	let entries: import("node:fs").Dirent[];
	try {
		entries = await readdir(dir, { withFileTypes: true });
	} catch {
		return; // unreadable or missing: skip
	}
	entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
	const sizes = await Promise.all(
		entries.map((e) =>
			e.isFile()
				? stat(join(dir, e.name)).then(
						(s) => s.size,
						() => -1,
					)
				: -1,
		),
	);
	for (const [i, e] of entries.entries()) {
		const path = join(dir, e.name);
		const size = sizes[i] as number;
		if (e.isDirectory()) await walkSorted(path, out);
		else if (size >= 0 && size <= MAX_SOURCE_FILE) out.push({ path, size });
	}
}

/**
 * A systematic sample of the walk in runs: the walk is cut into windows of equal byte length and
 * the files starting in the first SAMPLE_RUN bytes of each window are taken. The runs spread over
 * the whole walk, so the mix of file types follows /usr's, while files stay together with their
 * neighbours as in a real image (and the directory count stays realistic). The sample fits in
 * `budget` bytes, counting whole blocks per file and one block per directory.
 */
function sampleFiles(files: SourceFile[], budget: number): SourceFile[] {
	const total = files.reduce((s, f) => s + roundUp(f.size), 0);
	let window = Math.max(SAMPLE_RUN, (SAMPLE_RUN * total) / budget);
	// Directory blocks are not known in advance: widen the windows until the sample fits.
	for (let i = 0; i < 4; i++) {
		const s = samplePass(files, window, Number.POSITIVE_INFINITY);
		if (s.used <= budget) return s.picked;
		window *= (s.used / budget) * 1.01;
	}
	return samplePass(files, window, budget).picked;
}

function samplePass(
	files: SourceFile[],
	window: number,
	budget: number,
): { picked: SourceFile[]; used: number } {
	const picked: SourceFile[] = [];
	const dirs = new Set<string>();
	let pos = 0;
	let used = 0;
	for (const f of files) {
		const start = pos;
		pos += roundUp(f.size);
		if (start % window >= SAMPLE_RUN) continue;
		const newDirs = ancestors(f.path).filter((d) => !dirs.has(d));
		const cost = roundUp(f.size) + BLOCK * newDirs.length;
		if (used + cost > budget) break;
		for (const d of newDirs) dirs.add(d);
		used += cost;
		picked.push(f);
	}
	return { picked, used };
}

function ancestors(path: string): string[] {
	const out: string[] = [];
	for (let d = dirname(path); d !== "/"; d = dirname(d)) out.push(d);
	return out;
}

/** Copies the files under `staging`, keeping their paths; returns the bytes copied. */
async function stageFiles(
	files: SourceFile[],
	staging: string,
): Promise<number> {
	const dirs = new Set<string>();
	let bytes = 0;
	for (const f of files) {
		const dest = join(staging, relative("/", f.path));
		const parent = dirname(dest);
		if (!dirs.has(parent)) {
			await mkdir(parent, { recursive: true });
			for (let d = parent; d.startsWith(staging); d = dirname(d)) dirs.add(d);
		}
		try {
			await copyFile(f.path, dest);
			await utimes(dest, FIXED_TIME, FIXED_TIME);
			bytes += f.size;
		} catch {
			await rm(dest, { force: true }); // vanished or unreadable: leave it out
		}
	}
	// Deepest first, so that setting a child's time does not disturb its parent's afterwards.
	for (const d of [...dirs].sort().reverse())
		await utimes(d, FIXED_TIME, FIXED_TIME);
	return bytes;
}

// --- synthetic fallback ----------------------------------------------------------------------

const SEGMENT = 1 << 20;
const WORDS =
	"the of and to in is for on that with as by this be are from it at an or was which not can have all image disk layer chunk key sealed file system kernel module library error return value function static const struct include define buffer size offset length data block".split(
		" ",
	);

/** mulberry32: a small seeded PRNG, enough to make the synthetic image deterministic. */
/** A small seeded PRNG (mulberry32): uniform numbers in [0, 1), the same for a seed everywhere. */
export function prng(seed: number): () => number {
	let a = seed >>> 0;
	return () => {
		a = (a + 0x6d2b79f5) >>> 0;
		let t = a;
		t = Math.imul(t ^ (t >>> 15), t | 1);
		t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
		return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
	};
}

/** 1 MiB segments: 25% zero, 20% random (incompressible), 35% English-like text, 20% records. */
async function buildSynthetic(out: string, size: number): Promise<ImageMeta> {
	const rand = prng(0x0dad1);
	const fh = await open(out, "w", 0o644);
	try {
		for (let seg = 0; seg * SEGMENT < size; seg++) {
			const p = rand();
			const len = Math.min(SEGMENT, size - seg * SEGMENT);
			let data: Buffer | null = null;
			if (p < 0.25) data = null;
			else if (p < 0.45) data = randomSegment(seg, len);
			else if (p < 0.8) data = textSegment(rand, len);
			else data = recordSegment(rand, seg, len);
			if (data !== null) await fh.write(data, 0, len, seg * SEGMENT);
		}
		await fh.truncate(size);
	} finally {
		await fh.close();
	}
	return {
		kind: "synthetic",
		size,
		description:
			"SYNTHETIC: 1 MiB regions, 25% zero, 20% random, 35% text, 20% binary records",
	};
}

function randomSegment(seg: number, len: number): Buffer {
	const iv = Buffer.alloc(16);
	iv.writeUInt32BE(seg, 0);
	return createCipheriv("aes-256-ctr", Buffer.alloc(32, 7), iv).update(
		Buffer.alloc(len),
	);
}

function textSegment(rand: () => number, len: number): Buffer {
	const parts: string[] = [];
	let n = 0;
	while (n < len) {
		const w = WORDS[Math.floor(rand() * WORDS.length)] as string;
		const sep = rand() < 0.08 ? ".\n" : " ";
		parts.push(w, sep);
		n += w.length + sep.length;
	}
	return Buffer.from(parts.join(""), "latin1").subarray(0, len);
}

function recordSegment(rand: () => number, seg: number, len: number): Buffer {
	const b = Buffer.alloc(len);
	for (let off = 0; off + 32 <= len; off += 32) {
		b.writeUInt32LE(seg, off);
		b.writeUInt32LE(off, off + 4);
		b.writeUInt32LE(Math.floor(rand() * 1000), off + 8);
		b.writeDoubleLE(rand(), off + 16);
	}
	return b;
}
