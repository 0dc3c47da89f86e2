/**
 * Putting an embedded native addon on disk so that it can be loaded: a shared object can only be
 * dlopen()ed from a file. Used by the single-file dadi-guest build only (src/native/addons.ts).
 *
 * The file goes into a private, content-addressed cache: `NAME-VERSION-SHA256.node` in a directory
 * that must be a real directory (not a symbolic link) owned by this user and writable by nobody
 * else — so no other user can plant or swap a library that this process (often root) then runs.
 * A cached copy is used only if it is a regular file owned by this user, not writable by others,
 * whose SHA-256 is the embedded one; anything else is rewritten. New copies are written under a
 * fresh name opened with O_EXCL (never through a planted link) and renamed into place, so
 * concurrent processes and crashes leave either no file or a whole one.
 *
 * Directories are tried in order; one that cannot be used (read-only, not ours, mounted noexec so
 * the load fails) is skipped, and if none works the error names each one and why.
 */
import { createHash, randomBytes } from "node:crypto";
import {
	closeSync,
	lstatSync,
	mkdirSync,
	openSync,
	readFileSync,
	renameSync,
	rmSync,
	writeSync,
} from "node:fs";
import { join } from "node:path";
import { DadiError } from "../errors.js";

/** One binary to put on disk. `bytes()` is called only when a copy has to be written. */
export interface BinaryToExtract {
	readonly name: string;
	readonly version: string;
	readonly sha256: string;
	bytes(): Buffer;
}

export interface CacheDirContext {
	env: NodeJS.ProcessEnv;
	uid: number;
	home: string;
	tmp: string;
}

/**
 * Where extracted binaries go, in order: `$DADI_NATIVE_CACHE` alone when set (the operator's
 * choice), else `$XDG_CACHE_HOME/dadi/native` (default `~/.cache/dadi/native`), then
 * `TMPDIR/dadi-native-UID` (a read-only home, as in many guest images).
 */
export function cacheDirs(c: CacheDirContext): string[] {
	if (c.env.DADI_NATIVE_CACHE) return [c.env.DADI_NATIVE_CACHE];
	const dirs: string[] = [];
	const xdg = c.env.XDG_CACHE_HOME;
	if (xdg?.startsWith("/")) dirs.push(join(xdg, "dadi", "native"));
	else if (c.home) dirs.push(join(c.home, ".cache", "dadi", "native"));
	dirs.push(join(c.tmp, `dadi-native-${c.uid}`));
	return dirs;
}

export function sha256Hex(b: Buffer): string {
	return createHash("sha256").update(b).digest("hex");
}

function octal(mode: number): string {
	return (mode & 0o7777).toString(8).padStart(4, "0");
}

/** Throws unless `dir` exists (created 0700 if not) as a directory of `uid` that only it can write. */
function privateDir(dir: string, uid: number): void {
	mkdirSync(dir, { recursive: true, mode: 0o700 });
	const st = lstatSync(dir);
	if (!st.isDirectory())
		throw new Error("not a directory (a symbolic link is not accepted)");
	if (st.uid !== uid) throw new Error(`owned by uid ${st.uid}, not ${uid}`);
	if ((st.mode & 0o022) !== 0)
		throw new Error(`writable by group or others (mode ${octal(st.mode)})`);
}

/** Whether `path` is a usable cached copy of `bin`. */
function cachedCopyIsGood(
	path: string,
	bin: BinaryToExtract,
	uid: number,
): boolean {
	let st: ReturnType<typeof lstatSync>;
	try {
		st = lstatSync(path);
	} catch {
		return false;
	}
	if (!st.isFile() || st.uid !== uid || (st.mode & 0o022) !== 0) return false;
	return sha256Hex(readFileSync(path)) === bin.sha256;
}

/** Writes (or reuses) the cached copy of `bin` in `dir`; returns its path. */
export function extractInto(
	bin: BinaryToExtract,
	dir: string,
	uid: number,
): string {
	privateDir(dir, uid);
	const path = join(dir, `${bin.name}-${bin.version}-${bin.sha256}.node`);
	if (cachedCopyIsGood(path, bin, uid)) return path;
	const bytes = bin.bytes();
	const tmp = join(
		dir,
		`.${bin.name}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`,
	);
	const fd = openSync(tmp, "wx", 0o500);
	try {
		try {
			writeSync(fd, bytes);
		} finally {
			closeSync(fd);
		}
		renameSync(tmp, path);
	} catch (e) {
		rmSync(tmp, { force: true });
		throw e;
	}
	return path;
}

/**
 * Extracts `bin` into the first directory of `dirs` where that works and `load` accepts the file
 * (`load` dlopen()s it: a noexec mount fails there); returns the path and what `load` returned.
 */
export function extractAndLoad<T>(
	bin: BinaryToExtract,
	dirs: readonly string[],
	uid: number,
	load: (path: string) => T,
): { path: string; loaded: T } {
	const failures: string[] = [];
	for (const dir of dirs) {
		let path: string;
		try {
			path = extractInto(bin, dir, uid);
		} catch (e) {
			if (e instanceof DadiError) throw e;
			failures.push(`${dir}: ${(e as Error).message}`);
			continue;
		}
		try {
			return { path, loaded: load(path) };
		} catch (e) {
			if (e instanceof DadiError) throw e;
			failures.push(`${path}: loading failed: ${(e as Error).message}`);
		}
	}
	throw new DadiError(
		"IO",
		`cannot load the embedded ${bin.name} ${bin.version} native module: ${failures.join("; ")}. Set DADI_NATIVE_CACHE to a directory of your own that is writable and not mounted noexec`,
	);
}
