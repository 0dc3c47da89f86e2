/**
 * The image benchmark's container image: a two-layer OCI image (gzip layers) built with umoci and
 * cached. Layer 1 is a root file system of real files sampled from the host's /usr (like the disk
 * bench's image) plus a few /etc files; layer 2 is an update computed by `umoci repack` from the
 * same bundle after adding files, rewriting some and deleting others (so it carries whiteouts).
 */
import { spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import {
	chmod,
	copyFile,
	lutimes,
	mkdir,
	readdir,
	readFile,
	rename,
	rm,
	stat,
	symlink,
	utimes,
	writeFile,
} from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { gunzipSync } from "node:zlib";

/** Bump when the recipe changes: a cached image of another version is rebuilt. */
const RECIPE = 4;
const SOURCE_ROOTS = ["/usr/bin", "/usr/lib", "/usr/share"];
const MAX_SOURCE_FILE = 8 << 20;
const BLOCK = 4096;
/** Bytes of neighbouring files taken at a time by the sampler. */
const SAMPLE_RUN = 2 << 20;
const MiB = 1 << 20;
/** Target sizes of the two layers' contents. */
const BASE_BYTES = 180_000_000;
const NEW_BYTES = 12 * MiB;
const NEW_RUNS = 4;
const MODIFIED_BYTES = 5 * MiB;
const DELETED_FILE_BYTES = 2 * MiB;
/** Times of layer 1 and of the update (umoci writes file mtimes into the tar headers). */
const TIME_1 = 1_700_000_000; // 2023-11-14
const TIME_2 = TIME_1 + 30 * 86_400;
const CREATED = new Date(TIME_1 * 1000).toISOString();
/** Small, non-secret configuration files copied from the host's /etc when present. */
const ETC_FILES = [
	"adduser.conf",
	"bash.bashrc",
	"debian_version",
	"deluser.conf",
	"environment",
	"gai.conf",
	"host.conf",
	"inputrc",
	"issue",
	"issue.net",
	"ld.so.conf",
	"ld.so.cache",
	"locale.alias",
	"login.defs",
	"magic",
	"magic.mime",
	"mime.types",
	"mke2fs.conf",
	"networks",
	"nsswitch.conf",
	"profile",
	"protocols",
	"services",
	"shells",
];

export interface OciTestImage {
	/** The OCI image layout directory (in the cache). */
	dir: string;
	/** Tag of the two-layer image. */
	tag: string;
	cached: boolean;
	description: string;
	/** Per layer: the gzip blob digest and size, and its uncompressed tar size. */
	layers: { digest: string; gzipBytes: number; tarBytes: number }[];
	base: { files: number; bytes: number; etcFiles: number };
	update: {
		newFiles: number;
		newBytes: number;
		modifiedFiles: number;
		/** Bytes of the rewritten files after the change. */
		modifiedBytes: number;
		deletedFiles: number;
		deletedBytes: number;
		/** Whiteout entries in layer 2 (counted from its tar). */
		whiteouts: number;
	};
	umoci: string;
}

interface Meta extends Omit<OciTestImage, "dir" | "cached"> {
	recipe: number;
}

interface SourceFile {
	path: string;
	size: number;
}

export interface PrepareOciOptions {
	cacheDir: string;
	/** Scratch space for the umoci bundle. */
	workDir: string;
	log: (line: string) => void;
}

/** Checks that umoci is there; returns why not, or null. */
export function umociMissing(): string | null {
	const r = spawnSync("umoci", ["--version"], { encoding: "utf8" });
	return r.error === undefined && r.status === 0
		? null
		: "umoci not found (Debian: apt-get install umoci)";
}

export async function prepareOciImage(
	o: PrepareOciOptions,
): Promise<OciTestImage> {
	const dir = join(o.cacheDir, `oci-2layer-r${RECIPE}`);
	const metaPath = `${dir}.json`;
	const cached = await readMeta(metaPath, dir);
	if (cached !== null) return { ...cached, dir, cached: true };

	o.log(
		`building the two-layer OCI test image with umoci (cached in ${o.cacheDir})...`,
	);
	await mkdir(o.cacheDir, { recursive: true });
	// Images of earlier recipes are not used any more.
	for (const name of await readdir(o.cacheDir))
		if (/^oci-2layer-r\d+(\.json|\.\d+\.tmp)?$/.test(name))
			await rm(join(o.cacheDir, name), { recursive: true, force: true });
	const tmp = `${dir}.${process.pid}.tmp`;
	await rm(tmp, { recursive: true, force: true });
	await rm(dir, { recursive: true, force: true });
	const bundle = join(o.workDir, "umoci-bundle");
	const dropTmp = (): void => rmSync(tmp, { recursive: true, force: true });
	process.on("exit", dropTmp); // Ctrl-C while building: run.ts exits, the half-built image goes
	try {
		const meta = await build(tmp, bundle, o.log);
		await rename(tmp, dir);
		await writeFile(metaPath, `${JSON.stringify(meta, null, "\t")}\n`);
		return { ...meta, dir, cached: false };
	} finally {
		process.off("exit", dropTmp);
		await rm(tmp, { recursive: true, force: true });
		await rm(bundle, { recursive: true, force: true });
	}
}

async function readMeta(path: string, dir: string): Promise<Meta | null> {
	try {
		const meta = JSON.parse(await readFile(path, "utf8")) as Meta;
		if (meta.recipe !== RECIPE) return null;
		for (const l of meta.layers)
			await stat(join(dir, "blobs", "sha256", l.digest.slice(7)));
		return meta;
	} catch {
		return null;
	}
}

function umoci(args: string[]): string {
	const r = spawnSync("umoci", args, {
		encoding: "utf8",
		maxBuffer: 64 << 20,
	});
	if (r.error !== undefined) throw r.error;
	if (r.status !== 0)
		throw new Error(`umoci ${args.join(" ")}: ${r.stderr.trim()}`);
	return r.stdout;
}

async function build(
	layout: string,
	bundle: string,
	log: (line: string) => void,
): Promise<Meta> {
	const all: SourceFile[] = [];
	for (const root of SOURCE_ROOTS) await walkSorted(root, all);
	const picked = sampleRuns(all, BASE_BYTES);
	const pickedSet = new Set(picked.map((f) => f.path));
	const pool = all.filter((f) => !pickedSet.has(f.path));

	umoci(["init", "--layout", layout]);
	umoci(["new", "--image", `${layout}:empty`]);
	umoci([
		"config",
		"--image",
		`${layout}:empty`,
		"--tag",
		"empty",
		"--no-history",
		"--created",
		CREATED,
		"--config.cmd",
		"/bin/sh",
		"--config.env",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	]);
	umoci(["unpack", "--image", `${layout}:empty`, bundle]);
	const rootfs = join(bundle, "rootfs");

	// Layer 1: the root file system.
	const base = await stageBase(rootfs, picked);
	log(
		`  layer 1: ${base.files} files, ${(base.bytes / MiB).toFixed(1)} MiB from ${SOURCE_ROOTS.join(" ")}, ${base.etcFiles} files in /etc`,
	);
	umoci([
		"repack",
		"--no-history",
		"--refresh-bundle",
		"--image",
		`${layout}:v1`,
		bundle,
	]);

	// Layer 2: the update, computed by umoci from the same bundle.
	const update = await stageUpdate(rootfs, picked, pool);
	log(
		`  layer 2: +${update.newFiles} files (${(update.newBytes / MiB).toFixed(1)} MiB), ${update.modifiedFiles} rewritten (${(update.modifiedBytes / MiB).toFixed(1)} MiB), ${update.deletedFiles} deleted (${(update.deletedBytes / MiB).toFixed(1)} MiB)`,
	);
	umoci(["repack", "--no-history", "--image", `${layout}:v2`, bundle]);
	umoci(["rm", "--image", `${layout}:empty`]);
	umoci(["gc", "--layout", layout]);

	const layers: Meta["layers"] = [];
	let whiteouts = 0;
	for (const digest of await layerDigests(layout, "v2")) {
		const blob = join(layout, "blobs", "sha256", digest.slice(7));
		const st = await stat(blob);
		const t = await tarStats(blob);
		layers.push({ digest, gzipBytes: st.size, tarBytes: t.bytes });
		if (layers.length === 2) whiteouts = t.whiteouts;
	}
	if (layers.length !== 2)
		throw new Error(`umoci made ${layers.length} layers, expected 2`);
	const version = /version\s+(\S+)/.exec(umoci(["--version"]))?.[1] ?? "?";
	return {
		recipe: RECIPE,
		tag: "v2",
		description: `2 gzip layers by umoci ${version} repack: a root file system of ${base.files} files / ${(base.bytes / MiB).toFixed(1)} MiB sampled from ${SOURCE_ROOTS.join(", ")} plus ${base.etcFiles} /etc files; an update adding ${update.newFiles} files (${(update.newBytes / MiB).toFixed(1)} MiB), rewriting ${update.modifiedFiles} (${(update.modifiedBytes / MiB).toFixed(1)} MiB) and deleting ${update.deletedFiles} (${(update.deletedBytes / MiB).toFixed(1)} MiB, ${whiteouts} whiteouts)`,
		layers,
		base,
		update: { ...update, whiteouts },
		umoci: version,
	};
}

/** Layer digests of `tag` in an OCI layout (one manifest, no index of indexes). */
export async function layerDigests(
	layout: string,
	tag: string,
): Promise<string[]> {
	const index = JSON.parse(
		await readFile(join(layout, "index.json"), "utf8"),
	) as {
		manifests: {
			digest: string;
			annotations?: Record<string, string>;
		}[];
	};
	const m = index.manifests.find(
		(d) => d.annotations?.["org.opencontainers.image.ref.name"] === tag,
	);
	if (m === undefined) throw new Error(`${layout}: no tag ${tag}`);
	const manifest = JSON.parse(
		await readFile(join(layout, "blobs", "sha256", m.digest.slice(7)), "utf8"),
	) as { layers: { digest: string; size: number }[] };
	return manifest.layers.map((l) => l.digest);
}

/** Copies the sampled files and /etc into the rootfs, with the usual top-level layout. */
async function stageBase(
	rootfs: string,
	files: SourceFile[],
): Promise<Meta["base"]> {
	const touched = new Set<string>();
	let bytes = 0;
	let count = 0;
	for (const f of files) {
		const n = await copyInto(rootfs, f.path, f.path, TIME_1, touched);
		if (n >= 0) {
			bytes += n;
			count++;
		}
	}
	let etcFiles = 0;
	for (const name of ETC_FILES) {
		if (
			(await copyInto(
				rootfs,
				join("/etc", name),
				join("/etc", name),
				TIME_1,
				touched,
			)) >= 0
		)
			etcFiles++;
	}
	const etc = join(rootfs, "etc");
	await writeFile(
		join(etc, "passwd"),
		"root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
	);
	await writeFile(
		join(etc, "group"),
		"root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n",
	);
	await writeFile(join(etc, "hosts"), "127.0.0.1\tlocalhost\n::1\tlocalhost\n");
	await writeFile(join(etc, "hostname"), "bench\n");
	for (const n of ["passwd", "group", "hosts", "hostname"])
		await utimes(join(etc, n), TIME_1, TIME_1);
	etcFiles += 4;
	for (const d of [
		"dev",
		"proc",
		"sys",
		"run",
		"home",
		"root",
		"tmp",
		"var/tmp",
		"var/log",
		"usr/local/bin",
		"usr/sbin",
	]) {
		await mkdir(join(rootfs, d), { recursive: true });
		touched.add(join(rootfs, d));
		touched.add(dirname(join(rootfs, d)));
	}
	await chmod(join(rootfs, "tmp"), 0o1777);
	await chmod(join(rootfs, "var/tmp"), 0o1777);
	await chmod(join(rootfs, "root"), 0o700);
	for (const [name, target] of [
		["bin", "usr/bin"],
		["sbin", "usr/sbin"],
		["lib", "usr/lib"],
	] as const) {
		await symlink(target, join(rootfs, name));
		await lutimes(join(rootfs, name), TIME_1, TIME_1);
	}
	touched.add(rootfs);
	await fixDirTimes(rootfs, touched, TIME_1);
	return { files: count, bytes, etcFiles };
}

/**
 * The update: NEW_RUNS runs of consecutive files not in layer 1 (a package installed), files of
 * layer 1 rewritten (a package upgraded: a slice of bytes inserted in the middle, so the size and
 * every later offset change as after a rebuild), and files deleted (one directory and scattered
 * files).
 */
async function stageUpdate(
	rootfs: string,
	base: SourceFile[],
	pool: SourceFile[],
): Promise<Omit<Meta["update"], "whiteouts">> {
	const touched = new Set<string>();
	// New files: runs of neighbouring files, starting at points spread evenly over the pool's bytes.
	let newBytes = 0;
	let newFiles = 0;
	const perRun = NEW_BYTES / NEW_RUNS;
	const poolBytes = pool.reduce((s, f) => s + f.size, 0);
	let i = 0;
	let seen = 0;
	for (let r = 0; r < NEW_RUNS; r++) {
		const startAt = ((r + 0.5) * poolBytes) / NEW_RUNS;
		for (; i < pool.length && seen < startAt; i++)
			seen += (pool[i] as SourceFile).size;
		let got = 0;
		for (; i < pool.length && got < perRun * 0.98; i++) {
			const f = pool[i] as SourceFile;
			seen += f.size;
			if (got + f.size > perRun) continue; // too large for what is left of this run
			const n = await copyInto(rootfs, f.path, f.path, TIME_2, touched);
			if (n >= 0) {
				got += n;
				newFiles++;
			}
		}
		newBytes += got;
	}
	// Deleted: the files of one directory near the middle of layer 1, then scattered files.
	const deleted = new Set<string>();
	let deletedBytes = 0;
	const mid = base[Math.floor(base.length * 0.4)] as SourceFile;
	const victimDir = dirname(mid.path);
	for (const f of base)
		if (dirname(f.path) === victimDir && deletedBytes < DELETED_FILE_BYTES) {
			deleted.add(f.path);
			deletedBytes += f.size;
		}
	const candidates = base.filter(
		(f) => f.size >= BLOCK && f.size <= MiB && !deleted.has(f.path),
	);
	for (let k = 1; deletedBytes < 2 * DELETED_FILE_BYTES; k++) {
		const f = candidates[
			Math.floor((k * candidates.length) / 97) % candidates.length
		] as SourceFile;
		if (deleted.has(f.path)) break;
		deleted.add(f.path);
		deletedBytes += f.size;
	}
	for (const p of deleted) {
		await rm(join(rootfs, relative("/", p)), { force: true });
		touched.add(dirname(join(rootfs, relative("/", p))));
	}
	// The emptied directory goes too (one whiteout for it), when all its files went.
	const victim = join(rootfs, relative("/", victimDir));
	if ((await readdir(victim)).length === 0) {
		await rm(victim, { recursive: true });
		touched.delete(victim);
		touched.add(dirname(victim));
	}
	// Rewritten: files of 16 KiB to 2 MiB spread over layer 1.
	const rewritable = base.filter(
		(f) => f.size >= 16 * 1024 && f.size <= 2 * MiB && !deleted.has(f.path),
	);
	let modifiedBytes = 0;
	let modifiedFiles = 0;
	for (
		let k = 0;
		modifiedBytes < MODIFIED_BYTES && k < rewritable.length;
		k++
	) {
		const f = rewritable[(k * 7919) % rewritable.length] as SourceFile;
		const dest = join(rootfs, relative("/", f.path));
		let data: Buffer;
		try {
			data = await readFile(dest);
		} catch {
			continue; // already rewritten or missing
		}
		if (data.length < 16 * 1024 || (await stat(dest)).mtimeMs === TIME_2 * 1000)
			continue;
		// Insert 1/64 of the file, taken from its own end, at the middle: sizes and offsets move.
		const cut = Math.floor(data.length / 2);
		const patch = data.subarray(data.length - Math.ceil(data.length / 64));
		const out = Buffer.concat([
			data.subarray(0, cut),
			patch,
			data.subarray(cut),
		]);
		await writeFile(dest, out);
		await utimes(dest, TIME_2, TIME_2);
		modifiedBytes += out.length;
		modifiedFiles++;
	}
	await fixDirTimes(rootfs, touched, TIME_2);
	return {
		newFiles,
		newBytes,
		modifiedFiles,
		modifiedBytes,
		deletedFiles: deleted.size,
		deletedBytes,
	};
}

/** Copies host file `src` to `rootfs/dest`; returns its size, or -1 when it could not be read. */
async function copyInto(
	rootfs: string,
	src: string,
	dest: string,
	time: number,
	touched: Set<string>,
): Promise<number> {
	const to = join(rootfs, relative("/", dest));
	const parent = dirname(to);
	await mkdir(parent, { recursive: true });
	for (let d = parent; d.startsWith(rootfs); d = dirname(d)) touched.add(d);
	try {
		await copyFile(src, to);
		await utimes(to, time, time);
		return (await stat(to)).size;
	} catch {
		await rm(to, { force: true });
		return -1;
	}
}

/** Sets the times of the touched directories, deepest first. */
async function fixDirTimes(
	rootfs: string,
	dirs: Set<string>,
	time: number,
): Promise<void> {
	for (const d of [...dirs].sort().reverse())
		if (d.startsWith(rootfs)) await utimes(d, time, time);
}

/** Every regular file under `dir` (symlinks not followed), in byte-wise sorted order. */
async function walkSorted(dir: string, out: SourceFile[]): Promise<void> {
	let entries: import("node:fs").Dirent[];
	try {
		entries = await readdir(dir, { withFileTypes: true });
	} catch {
		return;
	}
	entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
	for (const e of entries) {
		const path = join(dir, e.name);
		if (e.isDirectory()) await walkSorted(path, out);
		else if (e.isFile()) {
			const size = await stat(path).then(
				(s) => s.size,
				() => -1,
			);
			if (size >= 0 && size <= MAX_SOURCE_FILE) out.push({ path, size });
		}
	}
}

/**
 * Runs of SAMPLE_RUN bytes of neighbouring files (positions in whole blocks), spread evenly over
 * the walk, `budget` bytes of file data in all: the mix follows /usr, files stay grouped by
 * directory.
 */
function sampleRuns(files: SourceFile[], budget: number): SourceFile[] {
	const round = (n: number): number => Math.ceil(n / BLOCK) * BLOCK;
	const total = files.reduce((s, f) => s + f.size, 0);
	let window = Math.max(SAMPLE_RUN, (SAMPLE_RUN * total) / budget);
	let best: SourceFile[] = [];
	// Files straddling window edges are left out, so the first pass falls short: narrow the windows.
	for (let pass = 0; pass < 6; pass++) {
		const picked: SourceFile[] = [];
		let pos = 0;
		let used = 0;
		for (const f of files) {
			const start = pos;
			pos += round(f.size);
			if (start % window >= SAMPLE_RUN) continue;
			if (used + f.size > budget) break;
			used += f.size;
			picked.push(f);
		}
		best = picked;
		if (used >= budget * 0.97 || window <= SAMPLE_RUN) break;
		window = Math.max(SAMPLE_RUN, window * (used / budget));
	}
	return best;
}

/** Uncompressed size and whiteout count of a gzip tar layer (PAX paths honoured). */
async function tarStats(
	blob: string,
): Promise<{ bytes: number; whiteouts: number }> {
	const tar = gunzipSync(await readFile(blob));
	let whiteouts = 0;
	let paxPath: string | undefined;
	for (let off = 0; off + 512 <= tar.length; ) {
		const h = tar.subarray(off, off + 512);
		off += 512;
		if (h.every((b) => b === 0)) continue;
		const field = (a: number, b: number): string =>
			h.subarray(a, b).toString("utf8").replace(/\0.*$/s, "");
		const size = Number.parseInt(field(124, 136).trim() || "0", 8);
		const type = String.fromCharCode(h[156] ?? 0);
		const body = tar.subarray(off, off + size);
		off += Math.ceil(size / 512) * 512;
		if (type === "x") {
			paxPath = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(body.toString("utf8"))?.[1];
			continue;
		}
		if (type === "g" || type === "L" || type === "K") continue;
		const prefix = field(345, 500);
		const name =
			paxPath ?? (prefix ? `${prefix}/${field(0, 100)}` : field(0, 100));
		paxPath = undefined;
		if (name.replace(/\/$/, "").split("/").pop()?.startsWith(".wh."))
			whiteouts++;
	}
	return { bytes: tar.length, whiteouts };
}
