/**
 * rootfs/apply.ts: applying OCI layers to a staging directory (run as root: devices, ownership,
 * trusted.* xattrs). Layers are built directly as TarEntry streams; a property test compares random
 * layer stacks with a pure in-memory model of the image-spec semantics.
 */

import type { Stats } from "node:fs";
import {
	lstat,
	mkdir,
	mkdtemp,
	readdir,
	readFile,
	readlink,
	rm,
	symlink,
	utimes,
	writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeEach, describe, expect, it } from "vitest";
import { type DadiError, isDadiError } from "../src/errors.js";
import { type ApplyStats, applyLayer } from "../src/rootfs/apply.js";
import { lgetxattr, llistxattr, splitDev } from "../src/rootfs/native.js";
import type { TarEntry, TarEntryType } from "../src/rootfs/tar-entry.js";
import { cleanupTempDirs, tempDir } from "./helpers.js";

afterAll(cleanupTempDirs);

const isRoot = process.getuid?.() === 0;
const T0 = 1_600_000_000; // a fixed mtime, seconds

// --- building layers ------------------------------------------------------------------------

interface Spec {
	path: string;
	type?: TarEntryType;
	mode?: number;
	uid?: number;
	gid?: number;
	mtime?: number;
	content?: string | Buffer;
	linkname?: string;
	devmajor?: number;
	devminor?: number;
	xattrs?: Record<string, Buffer>;
	/** Declared size, when it should differ from the content's (a broken reader). */
	size?: number;
}

const file = (
	path: string,
	content: string | Buffer,
	more: Partial<Spec> = {},
): Spec => ({
	path,
	type: "file",
	content,
	...more,
});
const dir = (path: string, more: Partial<Spec> = {}): Spec => ({
	path,
	type: "dir",
	...more,
});
const sym = (
	path: string,
	linkname: string,
	more: Partial<Spec> = {},
): Spec => ({
	path,
	type: "symlink",
	linkname,
	...more,
});
const hard = (path: string, linkname: string): Spec => ({
	path,
	type: "hardlink",
	linkname,
});
/** The whiteout marker for `path` (".wh." + its basename, in its directory). */
const wh = (path: string): Spec => {
	const i = path.lastIndexOf("/");
	return file(
		i < 0 ? `.wh.${path}` : `${path.slice(0, i)}/.wh.${path.slice(i + 1)}`,
		"",
	);
};
/** The opaque marker of directory `d` ("" for the root). */
const opq = (d: string): Spec =>
	file(d === "" ? ".wh..wh..opq" : `${d}/.wh..wh..opq`, "");

/**
 * An in-memory layer as the tar reader would produce it. It also checks the reader's contract:
 * the consumer reads each body (or calls skip) before asking for the next entry.
 */
async function* layer(specs: Spec[]): AsyncGenerator<TarEntry> {
	for (const s of specs) {
		const type = s.type ?? "file";
		const content =
			typeof s.content === "string"
				? Buffer.from(s.content)
				: (s.content ?? Buffer.alloc(0));
		let done = false; // the body read to its end, or skip() called
		const entry: TarEntry = {
			path: s.path,
			type,
			mode: s.mode ?? (type === "dir" ? 0o755 : 0o644),
			uid: s.uid ?? 0,
			gid: s.gid ?? 0,
			mtime: s.mtime ?? T0,
			size: s.size ?? (type === "file" ? content.length : 0),
			linkname: s.linkname ?? "",
			devmajor: s.devmajor ?? 0,
			devminor: s.devminor ?? 0,
			xattrs: s.xattrs ?? {},
			body: (async function* () {
				// in two pieces, to exercise streaming
				const half = content.length >> 1;
				if (half > 0) yield content.subarray(0, half);
				if (content.length > half) yield content.subarray(half);
				done = true;
			})(),
			skip: async () => {
				done = true;
			},
		};
		yield entry;
		if (!done) throw new Error(`the applier did not consume or skip ${s.path}`);
	}
}

async function apply(root: string, specs: Spec[], preserveOwnership?: boolean) {
	return applyLayer(root, layer(specs), { preserveOwnership });
}

async function rejection(p: Promise<unknown>): Promise<DadiError> {
	try {
		await p;
	} catch (e) {
		if (isDadiError(e)) return e;
		throw e;
	}
	throw new Error("expected a DadiError");
}

// --- inspecting the result ------------------------------------------------------------------

async function exists(p: string): Promise<boolean> {
	try {
		await lstat(p);
		return true;
	} catch {
		return false;
	}
}

async function text(p: string): Promise<string> {
	return (await readFile(p)).toString();
}

/** A fresh staging root inside its own parent directory, plus an "outside" sibling directory. */
async function sandbox() {
	const base = await tempDir();
	const parent = join(base, "parent");
	const root = join(parent, "root");
	const outside = join(base, "outside");
	await mkdir(root, { recursive: true });
	await mkdir(outside, { mode: 0o755 });
	await writeFile(join(outside, "keep"), "outside data", { mode: 0o644 });
	const times = new Date((T0 - 1000) * 1000);
	await utimes(join(outside, "keep"), times, times);
	await utimes(outside, times, times);
	const before = await snapshot(outside);
	return { base, parent, root, outside, before };
}

/** What could change about the outside directory and its file. */
async function snapshot(outside: string) {
	const d = await lstat(outside);
	const f = await lstat(join(outside, "keep"));
	const meta = (st: Stats) => [st.mode, st.uid, st.gid, st.nlink, st.mtimeMs];
	return {
		names: await readdir(outside),
		dir: meta(d),
		file: meta(f),
		data: await text(join(outside, "keep")),
		xattrs: [...llistxattr(outside), ...llistxattr(join(outside, "keep"))],
	};
}

/** Nothing outside `root` changed: the parent holds only root, outside is as it was. */
async function assertContained(s: Awaited<ReturnType<typeof sandbox>>) {
	expect(await readdir(s.parent)).toEqual(["root"]);
	expect(await readdir(s.base)).toEqual(["outside", "parent"]);
	expect(await snapshot(s.outside)).toEqual(s.before);
}

// A valid VFS_CAP_REVISION_2 security.capability value: effective, permitted = CAP_NET_RAW.
const CAP_NET_RAW = Buffer.alloc(20);
CAP_NET_RAW.writeUInt32LE(0x02000001, 0);
CAP_NET_RAW.writeUInt32LE(1 << 13, 4);

// --- tests ----------------------------------------------------------------------------------

describe.skipIf(!isRoot)("applyLayer: two layers, every entry type", () => {
	it("files, dirs, symlinks, hard links, devices, FIFOs, owners, modes, times, xattrs", async () => {
		const { root } = await sandbox();
		const lower = await apply(root, [
			dir(".", { mode: 0o755, mtime: T0 - 100 }),
			dir("etc", { mode: 0o755, mtime: T0 - 10 }),
			file("etc/passwd", "root:x:0:0\n", { mode: 0o644 }),
			dir("usr", { mtime: T0 - 20 }),
			dir("usr/bin", { mtime: T0 - 30 }),
			file("usr/bin/true", "#!true\n", { mode: 0o755 }),
			sym("bin", "usr/bin"),
			dir("dev"),
		]);
		expect(lower.byType).toMatchObject({ dir: 5, file: 2, symlink: 1 });

		const seen: string[] = [];
		const upperEntries: Spec[] = [
			// through the usr-merge symlink: lands in usr/bin
			file("bin/sh", "#!/bin/sh\n", {
				mode: 0o4755,
				uid: 1000,
				gid: 1001,
				mtime: T0 + 1,
			}),
			hard("usr/bin/sh2", "bin/sh"),
			file("usr/bin/ping", "ping", {
				mode: 0o755,
				uid: 0,
				gid: 1001,
				xattrs: { "security.capability": CAP_NET_RAW },
			}),
			file("etc/conf", "v=1\n", {
				mode: 0o2640,
				mtime: T0 + 0.5, // PAX fractional time
				xattrs: {
					"user.note": Buffer.from("hello\0bytes"),
					"trusted.t": Buffer.from([1, 2, 3]),
				},
			}),
			dir("tmp", { mode: 0o1777, uid: 0, gid: 0, mtime: T0 + 2 }),
			dir("data", {
				mode: 0o750,
				uid: 1000,
				gid: 1001,
				mtime: T0 + 3,
				xattrs: { "trusted.d": Buffer.from("D") },
			}),
			// children after their directory's entry: its mtime must survive them
			file("data/a", "a"),
			dir("data/sub", { mtime: T0 + 4 }),
			file("data/sub/b", "b"),
			{
				path: "dev/null",
				type: "chardev",
				mode: 0o666,
				devmajor: 1,
				devminor: 3,
			},
			{
				path: "dev/big",
				type: "blockdev",
				mode: 0o660,
				gid: 6,
				devmajor: 259,
				devminor: 300_000,
			},
			{
				path: "run/fifo",
				type: "fifo",
				mode: 0o600,
				uid: 1000,
				gid: 1001,
				mtime: T0 + 5,
			},
			sym("lib", "usr/lib", { uid: 1000, gid: 1001, mtime: T0 + 6 }),
			sym("abs", "/etc/passwd"),
		];
		const stats = await applyLayer(root, layer(upperEntries), {
			onEntry: (p) => seen.push(p),
		});
		expect(seen).toEqual(upperEntries.map((e) => e.path));
		expect(stats).toEqual<ApplyStats>({
			entries: upperEntries.length,
			byType: {
				file: 5,
				hardlink: 1,
				symlink: 2,
				chardev: 1,
				blockdev: 1,
				dir: 3,
				fifo: 1,
			},
			whiteouts: 0,
			opaqueWhiteouts: 0,
			removed: 0,
			implicitDirs: 1, // run/
			skipped: 0,
			xattrsSkipped: 0,
			bytes: 10 + 4 + 4 + 1 + 1,
		});

		// file through the symlink, setuid kept after chown, owner, time
		expect((await lstat(join(root, "bin"))).isSymbolicLink()).toBe(true);
		const sh = await lstat(join(root, "usr/bin/sh"));
		expect(sh.isFile()).toBe(true);
		expect(sh.mode & 0o7777).toBe(0o4755);
		expect([sh.uid, sh.gid]).toEqual([1000, 1001]);
		expect(sh.mtimeMs).toBe((T0 + 1) * 1000);
		expect(await text(join(root, "usr/bin/sh"))).toBe("#!/bin/sh\n");
		// hard link: same inode
		const sh2 = await lstat(join(root, "usr/bin/sh2"));
		expect(sh2.ino).toBe(sh.ino);
		expect(sh2.nlink).toBe(2);
		// capability survives the chown that came before it
		expect(
			lgetxattr(join(root, "usr/bin/ping"), "security.capability"),
		).toEqual(CAP_NET_RAW);
		expect((await lstat(join(root, "usr/bin/ping"))).gid).toBe(1001);
		// setgid file, xattrs, fractional mtime
		const conf = await lstat(join(root, "etc/conf"));
		expect(conf.mode & 0o7777).toBe(0o2640);
		expect(conf.mtimeMs).toBe((T0 + 0.5) * 1000);
		expect(conf.atimeMs).toBe((T0 + 0.5) * 1000);
		expect(lgetxattr(join(root, "etc/conf"), "user.note")).toEqual(
			Buffer.from("hello\0bytes"),
		);
		expect(lgetxattr(join(root, "etc/conf"), "trusted.t")).toEqual(
			Buffer.from([1, 2, 3]),
		);
		expect(llistxattr(join(root, "etc/conf")).sort()).toEqual([
			"trusted.t",
			"user.note",
		]);
		// sticky dir
		const tmp = await lstat(join(root, "tmp"));
		expect(tmp.isDirectory()).toBe(true);
		expect(tmp.mode & 0o7777).toBe(0o1777);
		expect(tmp.mtimeMs).toBe((T0 + 2) * 1000);
		// directory times are set after their children were made
		const data = await lstat(join(root, "data"));
		expect(data.mode & 0o7777).toBe(0o750);
		expect([data.uid, data.gid]).toEqual([1000, 1001]);
		expect(data.mtimeMs).toBe((T0 + 3) * 1000);
		expect((await lstat(join(root, "data/sub"))).mtimeMs).toBe((T0 + 4) * 1000);
		expect(lgetxattr(join(root, "data"), "trusted.d")).toEqual(
			Buffer.from("D"),
		);
		// lower directories this layer wrote into keep their times
		expect((await lstat(join(root, "usr/bin"))).mtimeMs).toBe((T0 - 30) * 1000);
		expect((await lstat(join(root, "etc"))).mtimeMs).toBe((T0 - 10) * 1000);
		expect((await lstat(root)).mtimeMs).toBe((T0 - 100) * 1000);
		// devices and FIFO
		const nul = await lstat(join(root, "dev/null"));
		expect(nul.isCharacterDevice()).toBe(true);
		expect(splitDev(nul.rdev)).toEqual({ major: 1, minor: 3 });
		expect(nul.mode & 0o7777).toBe(0o666);
		const big = await lstat(join(root, "dev/big"));
		expect(big.isBlockDevice()).toBe(true);
		expect(splitDev(big.rdev)).toEqual({ major: 259, minor: 300_000 });
		expect(big.gid).toBe(6);
		const fifo = await lstat(join(root, "run/fifo"));
		expect(fifo.isFIFO()).toBe(true);
		expect(fifo.mode & 0o7777).toBe(0o600);
		expect([fifo.uid, fifo.gid]).toEqual([1000, 1001]);
		expect(fifo.mtimeMs).toBe((T0 + 5) * 1000);
		// the implicit parent: 0755, root-owned
		const run = await lstat(join(root, "run"));
		expect(run.mode & 0o7777).toBe(0o755);
		expect([run.uid, run.gid]).toEqual([0, 0]);
		// symlinks: verbatim targets (dangling is fine), lchown'd, lutimes'd
		expect(await readlink(join(root, "lib"))).toBe("usr/lib");
		const lib = await lstat(join(root, "lib"));
		expect([lib.uid, lib.gid]).toEqual([1000, 1001]);
		expect(lib.mtimeMs).toBe((T0 + 6) * 1000);
		expect(await readlink(join(root, "abs"))).toBe("/etc/passwd");
		// the lower layer is intact
		expect(await text(join(root, "etc/passwd"))).toBe("root:x:0:0\n");
		expect(await text(join(root, "usr/bin/true"))).toBe("#!true\n");
	});

	it("a hard link to a file of a lower layer, and to a symlink", async () => {
		const { root } = await sandbox();
		await apply(root, [file("a", "A"), sym("s", "a")]);
		await apply(root, [dir("d"), hard("d/a", "a"), hard("d/s", "s")]);
		expect((await lstat(join(root, "d/a"))).ino).toBe(
			(await lstat(join(root, "a"))).ino,
		);
		const s = await lstat(join(root, "d/s"));
		expect(s.isSymbolicLink()).toBe(true);
		expect(s.ino).toBe((await lstat(join(root, "s"))).ino);
	});

	it("without preserveOwnership everything belongs to the caller", async () => {
		const { root } = await sandbox();
		await apply(
			root,
			[file("f", "x", { uid: 1000, gid: 1001, mode: 0o640 })],
			false,
		);
		const st = await lstat(join(root, "f"));
		expect([st.uid, st.gid]).toEqual([process.getuid?.(), process.getgid?.()]);
		expect(st.mode & 0o7777).toBe(0o640);
	});

	it("a directory over a directory keeps its contents and takes the new attributes", async () => {
		const { root } = await sandbox();
		await apply(root, [dir("d", { mode: 0o755 }), file("d/old", "old")]);
		await apply(root, [
			dir("d", { mode: 0o700, uid: 1000, gid: 1001, mtime: T0 + 9 }),
		]);
		const d = await lstat(join(root, "d"));
		expect(d.mode & 0o7777).toBe(0o700);
		expect([d.uid, d.gid]).toEqual([1000, 1001]);
		expect(d.mtimeMs).toBe((T0 + 9) * 1000);
		expect(await text(join(root, "d/old"))).toBe("old");
	});

	it("an entry for the root directory sets the root's attributes", async () => {
		const { root } = await sandbox();
		await apply(root, [
			dir(".", { mode: 0o700, uid: 1000, gid: 1001, mtime: T0 + 7 }),
			file("f", ""),
		]);
		const st = await lstat(root);
		expect(st.mode & 0o7777).toBe(0o700);
		expect([st.uid, st.gid]).toEqual([1000, 1001]);
		expect(st.mtimeMs).toBe((T0 + 7) * 1000);
	});
});

describe.skipIf(!isRoot)("applyLayer: whiteouts", () => {
	let root: string;
	beforeEach(async () => {
		({ root } = await sandbox());
		await apply(root, [
			file("f", "f"),
			dir("d"),
			dir("d/e"),
			file("d/e/g", "g"),
			sym("d/link", "/f"),
			file("keep", "keep"),
			dir("usr"),
			dir("usr/bin"),
			file("usr/bin/x", "x"),
			sym("bin", "usr/bin"),
		]);
	});

	it("removes a file, a directory tree, nothing for an absent path; markers never appear", async () => {
		const stats = await apply(root, [
			wh("f"),
			wh("d"),
			wh("absent"),
			wh("nodir/absent"),
			wh("keep/under-a-file"),
		]);
		expect(await exists(join(root, "f"))).toBe(false);
		expect(await exists(join(root, "d"))).toBe(false);
		expect((await readdir(root)).sort()).toEqual(["bin", "keep", "usr"]);
		expect(stats.whiteouts).toBe(5);
		expect(stats.removed).toBe(2);
		expect(stats.byType.file).toBe(0);
	});

	it("follows a symlinked parent inside the root", async () => {
		await apply(root, [wh("bin/x")]);
		expect(await exists(join(root, "usr/bin/x"))).toBe(false);
		expect((await lstat(join(root, "bin"))).isSymbolicLink()).toBe(true);
	});

	it("removes a symlink, not its target", async () => {
		await apply(root, [wh("bin")]);
		expect(await exists(join(root, "bin"))).toBe(false);
		expect(await text(join(root, "usr/bin/x"))).toBe("x");
	});

	it("leaves what the same layer created, before or after the marker", async () => {
		await apply(root, [
			file("new", "1"),
			wh("new"),
			wh("later"),
			file("later", "2"),
		]);
		expect(await text(join(root, "new"))).toBe("1");
		expect(await text(join(root, "later"))).toBe("2");
	});

	it("a whiteout of a lower directory this layer wrote into removes only the lower part", async () => {
		await apply(root, [file("d/mine", "m"), wh("d")]);
		expect(await readdir(join(root, "d"))).toEqual(["mine"]);
	});

	it("opaque: removes lower children, keeps this layer's (before and after the marker)", async () => {
		const stats = await apply(root, [
			dir("d", { mode: 0o750 }),
			file("d/before", "b"),
			dir("d/e"), // a lower directory re-declared by this layer: kept, lower content removed
			opq("d"),
			file("d/after", "a"),
		]);
		expect((await readdir(join(root, "d"))).sort()).toEqual([
			"after",
			"before",
			"e",
		]);
		expect(await readdir(join(root, "d/e"))).toEqual([]);
		expect((await lstat(join(root, "d"))).mode & 0o7777).toBe(0o750);
		expect(stats.opaqueWhiteouts).toBe(1);
	});

	it("opaque in the spec's order-independence example", async () => {
		const { root: r } = await sandbox();
		await apply(r, [
			dir("a"),
			dir("a/b"),
			dir("a/b/c"),
			file("a/b/c/bar", "bar"),
			file("a/other", "o"),
		]);
		await apply(r, [
			dir("a"),
			dir("a/b"),
			dir("a/b/c"),
			file("a/b/c/foo", "foo"),
			opq("a"),
		]);
		expect(await readdir(join(r, "a"))).toEqual(["b"]);
		expect(await readdir(join(r, "a/b/c"))).toEqual(["foo"]);
	});

	it("opaque root and an opaque marker in a missing directory", async () => {
		await apply(root, [file("mine", "m"), opq(""), opq("nowhere")]);
		expect(await readdir(root)).toEqual(["mine"]);
	});

	it("rejects markers that name the directory itself or its parent, and .wh. directories", async () => {
		for (const bad of [".wh.", "d/.wh..", "d/.wh..."]) {
			const e = await rejection(apply(root, [file(bad, "")]));
			expect(e.code).toBe("INPUT_INVALID");
		}
		const e = await rejection(apply(root, [file("d/.wh.x/y", "")]));
		expect(e.code).toBe("INPUT_INVALID");
		expect(await exists(join(root, "d/e/g"))).toBe(true);
	});

	it("skips AUFS metadata", async () => {
		const stats = await apply(root, [
			dir(".wh..wh.plnk"),
			file(".wh..wh.plnk/123.45", "x"),
			file("d/.wh..wh.aufs", ""),
		]);
		expect(stats.skipped).toBe(3);
		expect(await exists(join(root, ".wh..wh.plnk"))).toBe(false);
		expect(await exists(join(root, "d/e/g"))).toBe(true);
	});
});

describe.skipIf(!isRoot)("applyLayer: replacing what is there", () => {
	it("file → directory, directory → file", async () => {
		const { root } = await sandbox();
		await apply(root, [
			file("x", "file"),
			dir("y"),
			file("y/child", "c"),
			dir("y/sub"),
		]);
		await apply(root, [
			dir("x", { mode: 0o711 }),
			file("x/in", "in"),
			file("y", "now a file"),
		]);
		expect((await lstat(join(root, "x"))).mode & 0o7777).toBe(0o711);
		expect(await text(join(root, "x/in"))).toBe("in");
		expect((await lstat(join(root, "y"))).isFile()).toBe(true);
		expect(await text(join(root, "y"))).toBe("now a file");
	});

	it("file → symlink, symlink → file (the old target is untouched)", async () => {
		const { root } = await sandbox();
		await apply(root, [
			file("f", "f"),
			file("target", "target data", { mode: 0o600 }),
			sym("s", "target"),
		]);
		await apply(root, [
			sym("f", "target"),
			file("s", "new", { mode: 0o755, uid: 1000 }),
		]);
		expect(await readlink(join(root, "f"))).toBe("target");
		const s = await lstat(join(root, "s"));
		expect(s.isFile()).toBe(true);
		expect(await text(join(root, "s"))).toBe("new");
		const t = await lstat(join(root, "target"));
		expect(await text(join(root, "target"))).toBe("target data");
		expect([t.mode & 0o7777, t.uid]).toEqual([0o600, 0]);
	});

	it("symlink → directory, directory → symlink, device → file", async () => {
		const { root } = await sandbox();
		await apply(root, [
			dir("real"),
			file("real/x", "x"),
			sym("s", "real"),
			dir("d"),
			{ path: "n", type: "fifo" },
		]);
		await apply(root, [
			dir("s", { mode: 0o700 }),
			sym("d", "real"),
			file("n", "plain"),
		]);
		expect((await lstat(join(root, "s"))).isDirectory()).toBe(true);
		expect(await readdir(join(root, "s"))).toEqual([]);
		expect((await lstat(join(root, "real"))).mode & 0o7777).toBe(0o755);
		expect(await readlink(join(root, "d"))).toBe("real");
		expect(await text(join(root, "n"))).toBe("plain");
	});

	it("a hard link over a file, and a link to itself", async () => {
		const { root } = await sandbox();
		await apply(root, [file("a", "A"), file("b", "B")]);
		await apply(root, [hard("b", "a"), hard("a", "a")]);
		expect(await text(join(root, "b"))).toBe("A");
		expect((await lstat(join(root, "b"))).ino).toBe(
			(await lstat(join(root, "a"))).ino,
		);
	});
});

describe.skipIf(!isRoot)("applyLayer: nothing escapes the root", () => {
	it("an absolute symlink is re-rooted", async () => {
		const s = await sandbox();
		await apply(s.root, [sym("evil", "/etc"), sym("out", s.outside)]);
		await apply(s.root, [
			file("evil/passwd", "mine"),
			file("out/keep", "overwritten?"),
			file("out/new", "new"),
		]);
		expect(await text(join(s.root, "etc/passwd"))).toBe("mine");
		expect(await text(join(s.root, s.outside, "keep"))).toBe("overwritten?");
		expect(await text(join(s.root, s.outside, "new"))).toBe("new");
		await assertContained(s);
		expect((await readFile("/etc/passwd")).toString()).not.toBe("mine");
	});

	it("'..' cannot climb above the root", async () => {
		const s = await sandbox();
		await apply(s.root, [
			dir("a"),
			sym("a/up", "../../.."),
			sym("rel", "../outside"),
		]);
		await apply(s.root, [
			file("a/up/x", "x"),
			file("rel/keep", "k"),
			dir("a/up/sub"),
		]);
		expect(await text(join(s.root, "x"))).toBe("x");
		expect(await text(join(s.root, "outside/keep"))).toBe("k");
		expect((await lstat(join(s.root, "sub"))).isDirectory()).toBe(true);
		await assertContained(s);
	});

	it("a chain of symlinks", async () => {
		const s = await sandbox();
		await apply(s.root, [
			sym("a", "b"),
			sym("b", "c/d"),
			dir("c"),
			sym("c/d", "../../..//..", {}),
			sym("e", `${s.outside}/../outside`),
		]);
		await apply(s.root, [
			file("a/one", "1"),
			file("e/keep", "2"),
			sym("e/link", "/"),
		]);
		expect(await text(join(s.root, "one"))).toBe("1");
		expect(await text(join(s.root, s.outside, "keep"))).toBe("2");
		await assertContained(s);
	});

	it("symlink loops are INPUT_INVALID", async () => {
		const s = await sandbox();
		await apply(s.root, [
			sym("l1", "l2"),
			sym("l2", "l1"),
			sym("self", "./self"),
			sym("deep", "deep/x"),
		]);
		for (const p of ["l1/x", "self/x", "deep/y"]) {
			const e = await rejection(apply(s.root, [file(p, "x")]));
			expect(e.code).toBe("INPUT_INVALID");
			expect(e.message).toContain(p);
		}
		const e = await rejection(apply(s.root, [wh("l1/x")]));
		expect(e.code).toBe("INPUT_INVALID");
		await assertContained(s);
	});

	it("whiteouts, opaque markers and hard links through escaping symlinks stay inside", async () => {
		const s = await sandbox();
		await apply(s.root, [
			sym("out", s.outside),
			sym("rel", "../../outside"),
			file("f", "f"),
		]);
		await apply(s.root, [
			wh("out/keep"),
			wh("rel/keep"),
			opq("out"),
			opq("rel"),
		]);
		await assertContained(s);
		for (const target of [
			"out/keep",
			"rel/keep",
			`${s.outside}/keep`,
			"../outside/keep",
		]) {
			const e = await rejection(apply(s.root, [hard("h", target)]));
			expect(e.code).toBe("INPUT_INVALID");
		}
		// a hard link to the escaping symlink itself is just another symlink
		await apply(s.root, [hard("h", "out")]);
		expect(await readlink(join(s.root, "h"))).toBe(s.outside);
		await assertContained(s);
	});

	it("entries over symlinks to the outside replace the symlink", async () => {
		const s = await sandbox();
		await apply(s.root, [
			sym("f", join(s.outside, "keep")),
			sym("d", s.outside),
			sym("n", join(s.outside, "keep")),
			sym("h", join(s.outside, "keep")),
		]);
		await apply(s.root, [
			file("f", "mine", { mode: 0o4777, uid: 1000 }),
			dir("d", {
				mode: 0o700,
				uid: 1000,
				xattrs: { "user.x": Buffer.from("1") },
			}),
			{ path: "n", type: "fifo", mode: 0o777 },
			file("target", "t"),
			hard("h", "target"),
		]);
		expect(await text(join(s.root, "f"))).toBe("mine");
		expect((await lstat(join(s.root, "d"))).isDirectory()).toBe(true);
		expect((await lstat(join(s.root, "n"))).isFIFO()).toBe(true);
		expect((await lstat(join(s.root, "h"))).isFile()).toBe(true);
		expect(lgetxattr(s.outside, "user.x")).toBeUndefined();
		await assertContained(s);
	});

	it("a root given through a symlink is resolved once", async () => {
		const s = await sandbox();
		const base = await tempDir();
		const alias = join(base, "alias");
		await apply(s.root, []);
		await symlink(s.root, alias);
		await apply(alias, [file("x", "x")]);
		expect(await text(join(s.root, "x"))).toBe("x");
		expect((await lstat(alias)).isSymbolicLink()).toBe(true);
	});
});

describe.skipIf(!isRoot)("applyLayer: errors", () => {
	it("hard link to a missing target or a directory", async () => {
		const { root } = await sandbox();
		await apply(root, [dir("d"), file("f", "")]);
		for (const target of ["missing", "d/missing", "f/x", "d", "."]) {
			const e = await rejection(apply(root, [hard("h", target)]));
			expect(e.code).toBe("INPUT_INVALID");
			expect(e.message).toContain('layer entry "h"');
		}
		expect(await exists(join(root, "h"))).toBe(false);
	});

	it("replacing the root, malformed paths, a file as a parent", async () => {
		const { root } = await sandbox();
		await apply(root, [file("f", "f")]);
		for (const spec of [
			file(".", "x"),
			sym(".", "/"),
			file("/abs", "x"),
			file("../x", "x"),
			file("a/./b", "x"),
			file("a//b", "x"),
			file("", "x"),
			file("f/x", "x"),
			sym("s", ""),
		]) {
			const e = await rejection(apply(root, [spec]));
			expect(e.code).toBe("INPUT_INVALID");
		}
		expect(await readdir(root)).toEqual(["f"]);
	});

	it("a body shorter or longer than declared leaves no file behind", async () => {
		const { root } = await sandbox();
		for (const size of [3, 100]) {
			const e = await rejection(
				apply(root, [file("short", "0123456789", { size })]),
			);
			expect(e.code).toBe("INPUT_INVALID");
			expect(await exists(join(root, "short"))).toBe(false);
		}
	});

	it("an OS failure is IO and names the path", async () => {
		const { root } = await sandbox();
		const e = await rejection(
			apply(root, [
				file("f", "x", {
					xattrs: { "security.capability": Buffer.from("junk") },
				}),
			]),
		);
		expect(e.code).toBe("IO");
		expect(e.message).toContain('layer entry "f"');
		expect(e.message).toContain("security.capability");
	});

	it("a missing root", async () => {
		const base = await tempDir();
		const e = await rejection(apply(join(base, "nope"), []));
		expect(e.code).toBe("INPUT_NOT_FOUND");
	});
});

// --- the property: random layer stacks against an in-memory model ---------------------------

type MNode =
	| { t: "dir"; mode: number; kids: Map<string, MNode> }
	| { t: "file"; mode: number; data: string }
	| { t: "link"; target: string };
type MDir = Extract<MNode, { t: "dir" }>;

type Op =
	| { k: "file"; path: string; data: string; mode: number }
	| { k: "dir"; path: string; mode: number }
	| { k: "symlink"; path: string; target: string }
	| { k: "hardlink"; path: string; target: string }
	| { k: "wh"; path: string }
	| { k: "opq"; dir: string };

class ModelInvalid extends Error {}

/** The image-spec semantics over an in-memory tree: the oracle for the property test. */
class Model {
	readonly root: MDir = { t: "dir", mode: 0, kids: new Map() };

	private at(rel: string[]): MNode | undefined {
		let n: MNode = this.root;
		for (const c of rel) {
			if (n.t !== "dir") return undefined;
			const next: MNode | undefined = n.kids.get(c);
			if (!next) return undefined;
			n = next;
		}
		return n;
	}

	private dirAt(rel: string[]): MDir {
		const n = this.at(rel);
		if (n?.t !== "dir") throw new Error("model bug: not a directory");
		return n;
	}

	/** Resolves a directory inside the root, following symlinks within it (securejoin). */
	private resolve(comps: string[], create: boolean): string[] | "none" {
		const todo = [...comps].reverse();
		const cur: string[] = [];
		let links = 0;
		while (todo.length > 0) {
			const c = todo.pop() as string;
			if (c === "" || c === ".") continue;
			if (c === "..") {
				cur.pop();
				continue;
			}
			const n = this.at([...cur, c]);
			if (!n) {
				if (!create) return "none";
				this.dirAt(cur).kids.set(c, { t: "dir", mode: 0o755, kids: new Map() });
				cur.push(c);
			} else if (n.t === "link") {
				if (++links > 40) throw new ModelInvalid("loop");
				if (n.target.startsWith("/")) cur.length = 0;
				todo.push(...n.target.split("/").reverse());
			} else if (n.t === "dir") cur.push(c);
			else if (create) throw new ModelInvalid("parent is a file");
			else return "none";
		}
		return cur;
	}

	applyLayer(ops: Op[]): void {
		const upper = new Set<string>();
		const removeLower = (rel: string[], keepSelf: boolean) => {
			const n = this.at(rel);
			if (!n) return;
			if (!keepSelf && !upper.has(rel.join("/"))) {
				this.dirAt(rel.slice(0, -1)).kids.delete(rel.at(-1) as string);
				return;
			}
			if (n.t === "dir")
				for (const k of [...n.kids.keys()]) removeLower([...rel, k], false);
		};
		for (const op of ops) {
			if (op.k === "wh" || op.k === "opq") {
				const comps =
					op.k === "wh"
						? op.path.split("/")
						: op.dir === ""
							? []
							: op.dir.split("/");
				const parent = this.resolve(
					op.k === "wh" ? comps.slice(0, -1) : comps,
					false,
				);
				if (parent === "none") continue;
				if (op.k === "wh")
					removeLower([...parent, comps.at(-1) as string], false);
				else removeLower(parent, true);
				continue;
			}
			const comps = op.path.split("/");
			const name = comps.at(-1) as string;
			const parent = this.resolve(comps.slice(0, -1), true);
			if (parent === "none") throw new Error("model bug");
			const rel = [...parent, name];
			const pdir = this.dirAt(parent);
			const existing = pdir.kids.get(name);
			if (op.k === "dir") {
				if (existing?.t === "dir") existing.mode = op.mode;
				else pdir.kids.set(name, { t: "dir", mode: op.mode, kids: new Map() });
			} else if (op.k === "file")
				pdir.kids.set(name, { t: "file", mode: op.mode, data: op.data });
			else if (op.k === "symlink")
				pdir.kids.set(name, { t: "link", target: op.target });
			else {
				const tcomps = op.target.split("/");
				const tparent = this.resolve(tcomps.slice(0, -1), false);
				if (tparent === "none") throw new ModelInvalid("link target missing");
				const trel = [...tparent, tcomps.at(-1) as string];
				const target = this.at(trel);
				if (!target) throw new ModelInvalid("link target missing");
				if (target.t === "dir")
					throw new ModelInvalid("link target is a directory");
				const same = trel.join("/") === rel.join("/");
				if (!same && trel.join("/").startsWith(`${rel.join("/")}/`))
					throw new ModelInvalid("link replaces its target's dir");
				if (!same) pdir.kids.set(name, { ...target });
			}
			for (let i = rel.length; i > 0; i--) upper.add(rel.slice(0, i).join("/"));
		}
	}
}

function toSpec(op: Op): Spec {
	switch (op.k) {
		case "file":
			return file(op.path, op.data, { mode: op.mode });
		case "dir":
			return dir(op.path, { mode: op.mode });
		case "symlink":
			return sym(op.path, op.target);
		case "hardlink":
			return hard(op.path, op.target);
		case "wh":
			return wh(op.path);
		case "opq":
			return opq(op.dir);
	}
}

type Plain =
	| { dir: number; kids: Record<string, Plain> }
	| { file: number; data: string }
	| { link: string };

function plainModel(n: MNode): Plain {
	if (n.t === "file") return { file: n.mode, data: n.data };
	if (n.t === "link") return { link: n.target };
	const kids: Record<string, Plain> = {};
	for (const k of [...n.kids.keys()].sort())
		kids[k] = plainModel(n.kids.get(k) as MNode);
	return { dir: n.mode, kids };
}

async function plainDisk(p: string): Promise<Plain> {
	const st = await lstat(p);
	if (st.isSymbolicLink()) return { link: await readlink(p) };
	if (st.isFile()) return { file: st.mode & 0o7777, data: await text(p) };
	if (!st.isDirectory()) throw new Error(`unexpected file type at ${p}`);
	const kids: Record<string, Plain> = {};
	for (const k of (await readdir(p)).sort())
		kids[k] = await plainDisk(join(p, k));
	return { dir: st.mode & 0o7777, kids };
}

describe.skipIf(!isRoot)("applyLayer: property", () => {
	const names = ["a", "b", "c"];
	const paths = [
		...names,
		...names.flatMap((x) => names.map((y) => `${x}/${y}`)),
	];
	const pathArb = fc.constantFrom(...paths);
	const opArb: fc.Arbitrary<Op> = fc.oneof(
		{
			weight: 4,
			arbitrary: fc.record({
				k: fc.constant("file" as const),
				path: pathArb,
				data: fc.constantFrom("", "x", "yy"),
				mode: fc.constantFrom(0o644, 0o755, 0o4755),
			}),
		},
		{
			weight: 4,
			arbitrary: fc.record({
				k: fc.constant("dir" as const),
				path: pathArb,
				mode: fc.constantFrom(0o755, 0o700, 0o1777),
			}),
		},
		{
			weight: 3,
			arbitrary: fc.record({
				k: fc.constant("symlink" as const),
				path: pathArb,
				target: fc.constantFrom(
					"a",
					"b",
					"a/b",
					"../a",
					"/c",
					"..",
					".",
					"c/a",
					"/",
					"../../..",
					"/a/../b",
					"zz",
				),
			}),
		},
		{
			weight: 1,
			arbitrary: fc.record({
				k: fc.constant("hardlink" as const),
				path: pathArb,
				target: pathArb,
			}),
		},
		{
			weight: 3,
			arbitrary: fc.record({ k: fc.constant("wh" as const), path: pathArb }),
		},
		{
			weight: 1,
			arbitrary: fc.record({
				k: fc.constant("opq" as const),
				dir: fc.constantFrom("", ...names),
			}),
		},
	);
	const stackArb = fc.array(fc.array(opArb, { maxLength: 8 }), {
		minLength: 1,
		maxLength: 4,
	});

	it("random layer stacks match the in-memory model", async () => {
		const base = await tempDir();
		await fc.assert(
			fc.asyncProperty(stackArb, async (stack) => {
				const root = await mkdtemp(join(base, "r-"));
				try {
					const model = new Model();
					model.root.mode = (await lstat(root)).mode & 0o7777;
					for (const ops of stack) {
						let invalid = false;
						try {
							model.applyLayer(ops);
						} catch (e) {
							if (!(e instanceof ModelInvalid)) throw e;
							invalid = true;
						}
						if (invalid) {
							const e = await rejection(apply(root, ops.map(toSpec)));
							expect(e.code).toBe("INPUT_INVALID");
							return; // the staging dir is discarded after a failed layer
						}
						await apply(root, ops.map(toSpec));
						expect(await plainDisk(root)).toEqual(plainModel(model.root));
					}
				} finally {
					await rm(root, { recursive: true, force: true });
				}
			}),
			{ numRuns: 200 },
		);
		expect(await readdir(base)).toEqual([]);
	}, 120_000);
});
