/**
 * Turning a staging directory into a file-system image without mounting anything: ext4 with
 * e2fsprogs' `mke2fs -d`, or EROFS with `mkfs.erofs`. Output is reproducible: UUID, hash seed and
 * file-system times are fixed by the caller (derived from the image), and the inode times that
 * mke2fs copies from the staging directory and that cannot be set there (ctime, and atime, which
 * reading the files during the build may touch) are rewritten with debugfs afterwards.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { lstat, readdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { DadiError } from "../errors.js";
import { trackChild } from "../temp-files.js";

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
}

export interface BuildFsResult {
	/** Paths whose ctime/atime could not be fixed (names debugfs cannot quote). */
	unfixedTimes: number;
}

export function run(
	cmd: string,
	args: string[],
	env: NodeJS.ProcessEnv = {},
	input?: string,
): Promise<{ stdout: string; stderr: string }> {
	return new Promise((resolve, reject) => {
		const p = spawn(cmd, args, {
			env: { ...process.env, ...env },
			stdio: [input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
		});
		trackChild(p);
		let stdout = "";
		let stderr = "";
		p.stdout?.on("data", (d) => (stdout += d));
		p.stderr?.on("data", (d) => (stderr += d));
		p.on("error", (e) => {
			const code = (e as NodeJS.ErrnoException).code;
			reject(
				code === "ENOENT"
					? new DadiError(
							"IO",
							`${cmd} not found: install ${cmd.includes("erofs") ? "erofs-utils" : "e2fsprogs"} (Debian: apt-get install ${cmd.includes("erofs") ? "erofs-utils" : "e2fsprogs"})`,
						)
					: new DadiError("IO", `${cmd}: ${(e as Error).message}`),
			);
		});
		p.on("close", (code) => {
			if (code === 0) resolve({ stdout, stderr });
			else
				reject(
					new DadiError(
						"IO",
						`${cmd} failed (exit ${code}): ${stderr.trim().split("\n").slice(-3).join(" / ") || stdout.trim().slice(-300)}`,
					),
				);
		});
		if (input !== undefined && p.stdin) {
			p.stdin.on("error", () => {}); // the tool may exit before reading it all; its exit code tells
			p.stdin.end(input);
		}
	});
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
		await run(
			"mkfs.erofs",
			["--quiet", `-U${o.uuid}`, "--preserve-mtime", o.out, o.staging],
			{ SOURCE_DATE_EPOCH: String(buildTime) },
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
	await run("mke2fs", args, { E2FSPROGS_FAKE_TIME: String(o.timestamp) });
	return fixTimes(o);
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
	const script = `${image}.${randomBytes(4).toString("hex")}.ls`;
	await writeFile(script, `${dirs.map((d) => `ls -p "${d}"`).join("\n")}\n`);
	try {
		const { stdout } = await run("debugfs", ["-f", script, image]);
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
	} finally {
		await rm(script, { force: true });
	}
	return found;
}

async function fixTimes(o: BuildFsOptions): Promise<BuildFsResult> {
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
	const script = `${o.out}.${randomBytes(4).toString("hex")}.debugfs`;
	await writeFile(script, `${lines.join("\n")}\n`);
	try {
		// The fake time keeps debugfs from stamping the superblock with the clock.
		const { stderr } = await run("debugfs", ["-w", "-f", script, o.out], {
			E2FSPROGS_FAKE_TIME: String(o.timestamp),
		});
		const errors = stderr
			.split("\n")
			.filter((l) => l.trim() !== "" && !l.startsWith("debugfs "));
		if (errors.length > 0)
			throw new DadiError(
				"IO",
				`debugfs could not fix inode times: ${errors.slice(0, 3).join(" / ")}`,
			);
	} finally {
		await rm(script, { force: true });
	}
	return { unfixedTimes: unfixed };
}
