/**
 * Turning a staging directory into a file-system image without mounting anything: ext4 with
 * e2fsprogs' `mke2fs -d`, or EROFS with `mkfs.erofs`. Output is reproducible: UUID, hash seed and
 * file-system times are fixed by the caller (derived from the image), and the inode times that
 * mke2fs copies from the staging directory and that cannot be set there (ctime, and atime, which
 * reading the files during the build may touch) are rewritten with debugfs afterwards.
 */
import { lstat, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { DadiError } from "../errors.js";
import type { OnProgress } from "../progress.js";
import { runDebugfs } from "./debugfs.js";
import { run } from "./tool.js";

export type FsKind = "ext4" | "erofs";

export interface BuildFsOptions {
	fsType: FsKind;
	staging: string;
	out: string;
	/** ext4 only: the image size in bytes (a multiple of 4096). */
	sizeBytes?: number;
	/** ext4 only: inodes to provide. */
	inodes?: number;
	/** A UUID (8-4-4-4-12 hex), also used as the ext4 directory hash seed. */
	uuid: string;
	/** Seconds since the epoch for every time the build itself would take from the clock. */
	timestamp: number;
	/**
	 * Progress: "building ext4"/"building erofs" with the bytes of the image written so far (no
	 * total: the tools do not say how much they will write), then "fixing inode times" with the
	 * debugfs commands done.
	 */
	onProgress?: OnProgress;
}

/** How often the image being built is measured. */
const MEASURE_MS = 500;

export interface BuildFsResult {
	/** Paths whose ctime/atime could not be fixed (names debugfs cannot quote). */
	unfixedTimes: number;
}

export async function buildFilesystem(
	o: BuildFsOptions,
): Promise<BuildFsResult> {
	if (
		!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(
			o.uuid,
		)
	)
		throw new DadiError("INTERNAL", "bad file-system UUID");
	await rm(o.out, { force: true });
	if (o.fsType === "erofs") {
		// mkfs.erofs takes its build time from SOURCE_DATE_EPOCH (reproducible output) and clamps
		// file times to it; a build time no earlier than any mtime in the tree keeps them all and is
		// still a function of the tree alone. (-T would force every file to one time.)
		const buildTime = Math.max(o.timestamp, await latestMtime(o.staging));
		await measured(o.out, "building erofs", o.onProgress, () =>
			run(
				"mkfs.erofs",
				["--quiet", `-U${o.uuid}`, "--preserve-mtime", o.out, o.staging],
				{ env: { SOURCE_DATE_EPOCH: String(buildTime) } },
			),
		);
		return { unfixedTimes: 0 };
	}
	const size = o.sizeBytes ?? 0;
	if (size < 1 << 20 || size % 4096 !== 0)
		throw new DadiError(
			"INTERNAL",
			`ext4 size ${size} must be a multiple of 4096 and at least 1 MiB`,
		);
	const args = [
		"-q",
		"-F",
		"-t",
		"ext4",
		"-b",
		"4096",
		"-m",
		"0",
		"-I",
		"256",
		"-O",
		"^has_journal",
		"-U",
		o.uuid,
		"-E",
		`hash_seed=${o.uuid},root_owner=0:0,lazy_itable_init=0`,
		...(o.inodes ? ["-N", String(o.inodes)] : []),
		"-d",
		o.staging,
		o.out,
		`${size / 1024}k`,
	];
	await measured(o.out, "building ext4", o.onProgress, () =>
		run("mke2fs", args, {
			env: { E2FSPROGS_FAKE_TIME: String(o.timestamp) },
		}),
	);
	return fixTimes(o);
}

/**
 * Runs `work` (a tool writing the image `out`) while reporting the bytes the image holds, every
 * MEASURE_MS: the measurable part of a build that prints nothing until it is done.
 */
async function measured<T>(
	out: string,
	phase: string,
	onProgress: OnProgress | undefined,
	work: () => Promise<T>,
): Promise<T> {
	if (!onProgress) return work();
	onProgress({ phase, done: 0, total: 0 });
	let last = 0;
	const measure = async () => {
		try {
			const n = (await stat(out)).blocks * 512;
			if (n !== last) onProgress({ phase, done: n, total: 0 });
			last = n;
		} catch {
			// not created yet
		}
	};
	const timer = setInterval(() => void measure(), MEASURE_MS);
	try {
		return await work();
	} finally {
		clearInterval(timer);
		await measure();
	}
}

async function latestMtime(root: string): Promise<number> {
	let latest = Math.ceil((await lstat(root)).mtimeMs / 1000);
	const walk = async (dir: string): Promise<void> => {
		for (const e of await readdir(dir, { withFileTypes: true })) {
			const p = join(dir, e.name);
			latest = Math.max(latest, Math.ceil((await lstat(p)).mtimeMs / 1000));
			if (e.isDirectory()) await walk(p);
		}
	};
	await walk(root);
	return latest;
}

/** debugfs takes a path in double quotes (backslashes are literal there); a `"` or a line break cannot be quoted. */
export function quotable(p: string): boolean {
	return !/["\n\r]/.test(p);
}

/**
 * Inode numbers of the entries named `names` in directory `parent` of the image, from debugfs's
 * `ls -p` (lines /INO/MODE/UID/GID/NAME/SIZE/).
 */
async function inodesIn(
	image: string,
	parents: Map<string, string[]>,
): Promise<Map<string, number>> {
	const found = new Map<string, number>();
	const dirs = [...parents.keys()];
	if (dirs.length === 0) return found;
	const { stdout } = await runDebugfs(
		image,
		dirs.map((d) => `ls -p "${d}"`),
	);
	let dir: string | undefined;
	for (const line of stdout.split("\n")) {
		const cmd = /^debugfs: ls -p "(.*)"$/.exec(line);
		if (cmd) {
			dir = cmd[1];
			continue;
		}
		const m = /^\/(\d+)\/[0-7]+\/\d+\/\d+\/(.*)\/\d*\/$/.exec(line);
		if (m && dir !== undefined && parents.get(dir)?.includes(m[2] as string))
			found.set(`${dir === "/" ? "" : dir}/${m[2]}`, Number(m[1]));
	}
	return found;
}

async function fixTimes(o: BuildFsOptions): Promise<BuildFsResult> {
	o.onProgress?.({ phase: "fixing inode times", done: 0, total: 0 });
	const lines: string[] = [];
	const at = `@${o.timestamp}`;
	const byParent = new Map<string, string[]>(); // unquotable names, by quotable parent
	const unquotable: string[] = [];
	let unfixed = 0;
	const visit = async (rel: string): Promise<void> => {
		const p = rel === "" ? "/" : rel;
		if (quotable(p))
			lines.push(`sif "${p}" ctime ${at}`, `sif "${p}" atime ${at}`);
		else {
			const cut = p.lastIndexOf("/");
			const parent = cut <= 0 ? "/" : p.slice(0, cut);
			const name = p.slice(cut + 1);
			if (quotable(parent) && !/[\n\r]/.test(name)) {
				byParent.set(parent, [...(byParent.get(parent) ?? []), name]);
				unquotable.push(p);
			} else unfixed++;
		}
		const st = await lstat(join(o.staging, rel));
		if (!st.isDirectory()) return;
		for (const name of (await readdir(join(o.staging, rel))).sort())
			await visit(`${rel}/${name}`);
	};
	await visit("");
	// mke2fs -d gives the root directory its own owner, mode and time: take them from the staging root.
	const root = await lstat(o.staging);
	lines.push(
		`sif "/" mode 0${(root.mode & 0o177777).toString(8)}`,
		`sif "/" uid ${root.uid}`,
		`sif "/" gid ${root.gid}`,
		`sif "/" mtime @${Math.floor(root.mtimeMs / 1000)}`,
		`sif "/lost+found" ctime ${at}`,
		`sif "/lost+found" atime ${at}`,
	);
	const inodes = await inodesIn(o.out, byParent);
	for (const p of unquotable) {
		const ino = inodes.get(p);
		if (ino === undefined) unfixed++;
		else lines.push(`sif <${ino}> ctime ${at}`, `sif <${ino}> atime ${at}`);
	}
	// The fake time keeps debugfs from stamping the superblock with the clock.
	const { errors } = await runDebugfs(o.out, lines, {
		writable: true,
		fakeTime: o.timestamp,
		onProgress:
			o.onProgress &&
			((done, total) =>
				o.onProgress?.({
					phase: "fixing inode times",
					done,
					total,
					unit: "commands",
				})),
	});
	if (errors.length > 0)
		throw new DadiError(
			"IO",
			`debugfs could not fix inode times: ${errors.slice(0, 3).join(" / ")}`,
		);
	return { unfixedTimes: unfixed };
}
