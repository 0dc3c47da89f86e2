/**
 * The tar reader against archives written by GNU tar (ustar, gnu and pax formats) from a real
 * directory tree, against hand-crafted malicious archives, and under fuzzing. Needs GNU tar,
 * mkfifo and mknod (root), and setfattr (Debian package `attr`).
 */
import { execFile } from "node:child_process";
import { createCipheriv, createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import {
	chmod,
	link,
	lstat,
	mkdir,
	mkdtemp,
	readdir,
	readFile,
	readlink,
	rm,
	symlink,
	writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import { indexTar, readTar, type TarStreamOptions } from "../src/rootfs/tar.js";
import type { TarEntry, TarEntryType } from "../src/rootfs/tar-entry.js";
import { BufferSource } from "../src/storage/source.js";

const run = promisify(execFile);

/** Deterministic pseudo-random bytes (AES-CTR keystream of a seed). */
function prng(seed: string, n: number): Buffer {
	const key = createHash("sha256").update(seed).digest();
	return createCipheriv("aes-256-ctr", key, Buffer.alloc(16)).update(
		Buffer.alloc(n),
	);
}

type Read = Omit<TarEntry, "body" | "skip"> & { content: Buffer };

/** Every entry with its content, read to the end. */
async function collect(
	chunks: AsyncIterable<Buffer>,
	opts?: TarStreamOptions,
): Promise<Read[]> {
	const out: Read[] = [];
	for await (const e of readTar(chunks, opts)) {
		const parts: Buffer[] = [];
		for await (const b of e.body) parts.push(b);
		const { body: _b, skip: _s, ...info } = e;
		out.push({ ...info, content: Buffer.concat(parts) });
	}
	return out;
}

/** Content replaced by its digest: vitest compares big Buffers byte by byte, slowly. */
function summary(
	entries: Read[],
): Array<Omit<Read, "content"> & { content: string }> {
	return entries.map((e) => ({ ...e, content: digest(e.content) }));
}

function digest(b: Buffer | undefined): string {
	return b === undefined
		? "none"
		: `${b.length}:${createHash("sha256").update(b).digest("hex")}`;
}

/** The bytes in one chunk, or in chunks of the given sizes (cycled). */
async function* chunked(
	buf: Buffer,
	sizes: number[] = [],
): AsyncGenerator<Buffer> {
	if (sizes.length === 0) {
		yield buf;
		return;
	}
	let i = 0;
	for (let at = 0; at < buf.length; i++) {
		const n = sizes[i % sizes.length] as number;
		yield buf.subarray(at, at + n);
		at += n;
	}
}

/** The error a promise rejects with; fails the test if it is not a DadiError. */
async function failure(p: Promise<unknown>): Promise<DadiError> {
	try {
		await p;
	} catch (e) {
		if (e instanceof DadiError) return e;
		throw e;
	}
	throw new Error("expected a DadiError, but it succeeded");
}

async function refusal(tar: Buffer): Promise<DadiError> {
	const e = await failure(collect(chunked(tar)));
	expect(e.code).toBe("INPUT_INVALID");
	// indexTar validates the same way (its message may differ for truncation).
	const f = await failure(indexTar(new BufferSource("t.tar", tar)));
	expect(f.code).toBe("INPUT_INVALID");
	return e;
}

// ---------------------------------------------------------------------------------------------
// Hand-made archives

interface Hdr {
	name: string | Buffer;
	type?: string;
	size?: number;
	/** Raw bytes for the size field (12 bytes), overriding `size`. */
	sizeField?: Buffer;
	mode?: number;
	uid?: number;
	uidField?: Buffer;
	gid?: number;
	mtime?: number;
	linkname?: string | Buffer;
	prefix?: string;
	magic?: "ustar" | "gnu" | "v7";
	devmajor?: number;
	devminor?: number;
	/** Compute the checksum over signed bytes (historic writers). */
	signedChecksum?: boolean;
}

function octal(n: number, width: number): string {
	return `${n.toString(8).padStart(width - 1, "0")}\0`;
}

function header(h: Hdr): Buffer {
	const b = Buffer.alloc(512);
	const name = typeof h.name === "string" ? Buffer.from(h.name) : h.name;
	name.copy(b, 0, 0, 100);
	b.write(octal(h.mode ?? 0o644, 8), 100, "latin1");
	if (h.uidField) h.uidField.copy(b, 108);
	else b.write(octal(h.uid ?? 0, 8), 108, "latin1");
	b.write(octal(h.gid ?? 0, 8), 116, "latin1");
	if (h.sizeField) h.sizeField.copy(b, 124);
	else b.write(octal(h.size ?? 0, 12), 124, "latin1");
	b.write(octal(h.mtime ?? 1_600_000_000, 12), 136, "latin1");
	b.write(h.type ?? "0", 156, "latin1");
	const ln =
		typeof h.linkname === "string" ? Buffer.from(h.linkname) : h.linkname;
	ln?.copy(b, 157, 0, 100);
	const magic = h.magic ?? "ustar";
	if (magic === "ustar") b.write("ustar\u000000", 257, "latin1");
	if (magic === "gnu") b.write("ustar  \0", 257, "latin1");
	if (magic !== "v7") {
		b.write(octal(h.devmajor ?? 0, 8), 329, "latin1");
		b.write(octal(h.devminor ?? 0, 8), 337, "latin1");
	}
	if (h.prefix) b.write(h.prefix, 345, "utf8");
	fixChecksum(b, h.signedChecksum);
	return b;
}

function fixChecksum(b: Buffer, signed = false, at = 0): void {
	b.fill(0x20, at + 148, at + 156);
	let sum = 0;
	for (let i = at; i < at + 512; i++) {
		const c = b[i] as number;
		sum += signed && c >= 0x80 ? c - 0x100 : c;
	}
	b.write(
		`${(sum & 0o777777).toString(8).padStart(6, "0")}\0 `,
		at + 148,
		"latin1",
	);
}

function pad(b: Buffer): Buffer {
	const r = b.length % 512;
	return r === 0 ? b : Buffer.concat([b, Buffer.alloc(512 - r)]);
}

/** A header with its content (padded). */
function member(h: Hdr, content: Buffer = Buffer.alloc(0)): Buffer {
	return Buffer.concat([header({ size: content.length, ...h }), pad(content)]);
}

function paxBody(records: Array<[string, string | Buffer]>): Buffer {
	const parts = records.map(([k, v]) => {
		const body = Buffer.concat([
			Buffer.from(` ${k}=`),
			typeof v === "string" ? Buffer.from(v) : v,
			Buffer.from("\n"),
		]);
		let n = body.length + 1;
		while (String(n).length + body.length !== n) n++;
		return Buffer.concat([Buffer.from(String(n)), body]);
	});
	return Buffer.concat(parts);
}

function pax(
	records: Array<[string, string | Buffer]>,
	type: "x" | "g" = "x",
): Buffer {
	return member({ name: "./PaxHeaders/x", type }, paxBody(records));
}

function gnuLong(type: "L" | "K", name: Buffer | string): Buffer {
	const b = typeof name === "string" ? Buffer.from(`${name}\0`) : name;
	return member({ name: "././@LongLink", type, magic: "gnu" }, b);
}

const END = Buffer.alloc(1024);

function tarOf(...parts: Buffer[]): Buffer {
	return Buffer.concat([...parts, END]);
}

// ---------------------------------------------------------------------------------------------
// A real tree archived by GNU tar

let work = "";
let root = "";
let shortRoot = "";

const LONG_DIR = `${"d".repeat(60)}/${"e".repeat(60)}`; // a path of 212 bytes with the file
const LONG_FILE = `${LONG_DIR}/${"f".repeat(90)}`;
const VERY_LONG = `${"g".repeat(100)}/${"h".repeat(100)}/${"i".repeat(100)}`;
const LONG_TARGET = `${"t".repeat(150)}/target`;

/** Files made in both trees: name → content length. */
const SIZES: Record<string, number> = {
	empty: 0,
	one: 1,
	b511: 511,
	b512: 512,
	b513: 513,
	b1024: 1024,
	b4097: 4097,
	big: 150_001,
	"héllo wörld ✓.txt": 77,
};

async function makeTree(dir: string, full: boolean): Promise<void> {
	await mkdir(dir, { recursive: true });
	for (const [name, n] of Object.entries(SIZES))
		await writeFile(join(dir, name), prng(name, n));
	await writeFile(join(dir, "setuid"), prng("setuid", 7));
	await chmod(join(dir, "setuid"), 0o4755);
	await writeFile(join(dir, "secret"), prng("secret", 9));
	await chmod(join(dir, "secret"), 0o600);
	await mkdir(join(dir, "sticky"));
	await chmod(join(dir, "sticky"), 0o1777);
	await mkdir(join(dir, "sub/inner"), { recursive: true });
	await writeFile(join(dir, "sub/inner/file"), prng("inner", 1000));
	await mkdir(join(dir, LONG_DIR), { recursive: true });
	await writeFile(join(dir, LONG_FILE), prng("long", 600));
	await writeFile(join(dir, "hl-a"), prng("hl", 700));
	await link(join(dir, "hl-a"), join(dir, "hl-b"));
	await symlink("one", join(dir, "sym"));
	await symlink("/etc/passwd", join(dir, "sym-abs"));
	await symlink("../../outside", join(dir, "sym-up"));
	await run("mkfifo", [join(dir, "fifo")]);
	await run("mknod", [join(dir, "cdev"), "c", "1", "3"]);
	await run("mknod", [join(dir, "bdev"), "b", "7", "0"]);
	if (!full) return;
	await mkdir(join(dir, VERY_LONG), { recursive: true });
	await writeFile(join(dir, VERY_LONG, "x"), prng("very", 513));
	await symlink(LONG_TARGET, join(dir, "sym-long"));
	// A hard link whose target is longer than the 100-byte linkname field.
	await link(join(dir, LONG_FILE), join(dir, "zz-link-to-long"));
	await writeFile(join(dir, "attrs"), prng("attrs", 33));
	await run("setfattr", ["-n", "user.foo", "-v", "bar", join(dir, "attrs")]);
	await run("setfattr", [
		"-n",
		"user.bin",
		"-v",
		"0x0a3d00ff",
		join(dir, "attrs"),
	]);
	await run("setfattr", ["-n", "user.empty", join(dir, "attrs")]);
	await run("setfattr", ["-n", "user.a=b%c", "-v", "v", join(dir, "sticky")]);
}

/** What the entries of `dir` archived as `tar --sort=name -C dir .` must be. */
async function expected(
	dir: string,
	meta: { uid: number; gid: number; mtime: number },
	xattrs: Record<string, Record<string, Buffer>> = {},
): Promise<Read[]> {
	const out: Read[] = [];
	const firstOf = new Map<string, string>();
	const visit = async (rel: string): Promise<void> => {
		const abs = rel === "." ? dir : join(dir, rel);
		const st = await lstat(abs);
		let type: TarEntryType;
		let content = Buffer.alloc(0);
		let linkname = "";
		if (st.isDirectory()) type = "dir";
		else if (st.isSymbolicLink()) {
			type = "symlink";
			linkname = await readlink(abs);
		} else if (st.isFIFO()) type = "fifo";
		else if (st.isCharacterDevice()) type = "chardev";
		else if (st.isBlockDevice()) type = "blockdev";
		else {
			const key = `${st.dev}:${st.ino}`;
			const first = firstOf.get(key);
			if (st.nlink > 1 && first !== undefined) {
				type = "hardlink";
				linkname = first;
			} else {
				type = "file";
				content = await readFile(abs);
				firstOf.set(key, rel);
			}
		}
		const isDev = type === "chardev" || type === "blockdev";
		out.push({
			path: rel,
			type,
			mode: st.mode & 0o7777,
			uid: meta.uid,
			gid: meta.gid,
			mtime: meta.mtime,
			size: content.length,
			linkname,
			devmajor: isDev ? (st.rdev >> 8) & 0xfff : 0,
			devminor: isDev ? (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00) : 0,
			xattrs: xattrs[rel] ?? {},
			content,
		});
		if (type === "dir") {
			const names = (await readdir(abs)).sort((a, b) =>
				Buffer.compare(Buffer.from(a), Buffer.from(b)),
			);
			for (const n of names) await visit(rel === "." ? n : `${rel}/${n}`);
		}
	};
	await visit(".");
	return out;
}

interface Made {
	tar: Buffer;
	meta: { uid: number; gid: number; mtime: number };
	dir: string;
	xattrs?: Record<string, Record<string, Buffer>>;
}
const made: Record<"ustar" | "gnu" | "pax", Made> = {} as Record<
	"ustar" | "gnu" | "pax",
	Made
>;

async function gnuTar(
	dir: string,
	format: string,
	meta: { uid: number; gid: number; mtime: string },
	extra: string[] = [],
): Promise<Buffer> {
	const out = join(work, `${format}.tar`);
	await run("tar", [
		`--format=${format}`,
		"--sort=name",
		"--numeric-owner",
		`--owner=${meta.uid}`,
		`--group=${meta.gid}`,
		`--mtime=@${meta.mtime}`,
		...extra,
		"-cf",
		out,
		"-C",
		dir,
		".",
	]);
	return readFile(out);
}

beforeAll(async () => {
	work = await mkdtemp(join(tmpdir(), "dadi-tar-test-"));
	root = join(work, "full");
	shortRoot = join(work, "short");
	await makeTree(root, true);
	await makeTree(shortRoot, false);
	// ustar: octal fields only, names of at most 255 bytes split into prefix and name.
	made.ustar = {
		dir: shortRoot,
		meta: { uid: 1234, gid: 5678, mtime: 1_700_000_000 },
		tar: await gnuTar(shortRoot, "ustar", {
			uid: 1234,
			gid: 5678,
			mtime: "1700000000",
		}),
	};
	// gnu: 'L'/'K' long names, base-256 uid and mtime.
	made.gnu = {
		dir: root,
		meta: { uid: 3_000_000, gid: 5, mtime: 99_999_999_999 },
		tar: await gnuTar(root, "gnu", {
			uid: 3_000_000,
			gid: 5,
			mtime: "99999999999",
		}),
	};
	// pax: path, linkpath, uid, fractional mtime and SCHILY.xattr records.
	made.pax = {
		dir: root,
		meta: { uid: 3_000_000, gid: 6, mtime: 1_700_000_000.5 },
		tar: await gnuTar(
			root,
			"pax",
			{ uid: 3_000_000, gid: 6, mtime: "1700000000.5" },
			["--xattrs"],
		),
		xattrs: {
			attrs: {
				"user.bin": Buffer.from([0x0a, 0x3d, 0x00, 0xff]),
				"user.empty": Buffer.alloc(0),
				"user.foo": Buffer.from("bar"),
			},
			sticky: { "user.a=b%c": Buffer.from("v") },
		},
	};
}, 60_000);

afterAll(async () => {
	if (work) await rm(work, { recursive: true, force: true });
});

describe("archives written by GNU tar", { timeout: 60_000 }, () => {
	for (const format of ["ustar", "gnu", "pax"] as const) {
		it(`reads every field and byte of a --format=${format} archive`, async () => {
			const m = made[format];
			const want = await expected(m.dir, m.meta, m.xattrs);
			const got = await collect(chunked(m.tar));
			expect(got.map((e) => e.path)).toEqual(want.map((e) => e.path));
			const sw = summary(want);
			for (const [i, e] of summary(got).entries()) expect(e).toEqual(sw[i]);
			// The fixture covers what it claims to.
			const types = new Set(got.map((e) => e.type));
			expect([...types].sort()).toEqual(
				[
					"blockdev",
					"chardev",
					"dir",
					"fifo",
					"file",
					"hardlink",
					"symlink",
				].sort(),
			);
			expect(got.some((e) => e.path === LONG_FILE)).toBe(true);
			if (format !== "ustar") {
				expect(got.some((e) => e.path === `${VERY_LONG}/x`)).toBe(true);
				expect(got.find((e) => e.path === "sym-long")?.linkname).toBe(
					LONG_TARGET,
				);
				expect(got.find((e) => e.path === "zz-link-to-long")).toMatchObject({
					type: "hardlink",
					linkname: LONG_FILE,
				});
			}
		});
	}

	it("gives the same result for any chunking of the input (property)", async () => {
		const tar = made.pax.tar;
		const want = summary(await collect(chunked(tar)));
		await fc.assert(
			fc.asyncProperty(
				fc.array(fc.integer({ min: 1, max: 3000 }), {
					minLength: 1,
					maxLength: 20,
				}),
				async (sizes) => {
					expect(summary(await collect(chunked(tar, sizes)))).toEqual(want);
				},
			),
			{ numRuns: 40 },
		);
		// And byte by byte through the gnu archive's headers.
		const gnu = made.gnu.tar;
		expect(summary(await collect(chunked(gnu, [1])))).toEqual(
			summary(await collect(chunked(gnu))),
		);
	});

	it("skips what the consumer does not read, in whole or in part, or skip()s", async () => {
		const tar = made.gnu.tar;
		const want = await collect(chunked(tar));
		const strip = (r: Read[]) => r.map(({ content: _c, ...rest }) => rest);
		let i = 0;
		for await (const e of readTar(chunked(tar, [700, 1, 4096]))) {
			const mode = i++ % 3;
			if (mode === 1) {
				for await (const _ of e.body) break; // one chunk, then move on
			} else if (mode === 2) {
				await e.skip();
				await e.skip();
				const after: Buffer[] = [];
				for await (const b of e.body) after.push(b);
				expect(after).toEqual([]);
			}
			const { body: _b, skip: _s, ...info } = e;
			expect(info).toEqual(strip(want)[i - 1]);
		}
		expect(i).toBe(want.length);
	});

	it("refuses to read a body after moving on to the next entry", async () => {
		const tar = tarOf(
			member({ name: "a" }, Buffer.from("hello")),
			member({ name: "b" }, Buffer.from("world")),
		);
		const it = readTar(chunked(tar));
		const a = (await it.next()).value as TarEntry;
		const b = (await it.next()).value as TarEntry;
		const e = await failure(
			(async () => {
				for await (const _ of a.body);
			})(),
		);
		expect(e.code).toBe("USAGE");
		const parts: Buffer[] = [];
		for await (const x of b.body) parts.push(x);
		expect(Buffer.concat(parts).toString()).toBe("world");
		expect((await it.next()).done).toBe(true);
	});

	it("streams from a file stream, and closes it when the consumer stops early", async () => {
		const path = join(work, "gnu.tar");
		const want = await collect(chunked(made.gnu.tar));
		expect(
			summary(await collect(createReadStream(path, { highWaterMark: 999 }))),
		).toEqual(summary(want));
		const stream = createReadStream(path, { highWaterMark: 1024 });
		for await (const e of readTar(stream)) if (e.path === "b512") break;
		expect(stream.destroyed).toBe(true);
	});

	it("indexTar finds the content of every regular file, hard link and symlink to a file", async () => {
		for (const format of ["ustar", "gnu", "pax"] as const) {
			const m = made[format];
			const index = await indexTar(new BufferSource(`${format}.tar`, m.tar));
			const want = await expected(m.dir, m.meta);
			const files = new Map(
				want.filter((e) => e.type === "file").map((e) => [e.path, e.content]),
			);
			const bytes = (p: string) => {
				const at = index.get(p);
				if (!at) return undefined;
				return m.tar.subarray(at.offset, at.offset + at.size);
			};
			for (const [p, content] of files)
				expect(digest(bytes(p))).toEqual(digest(content));
			expect(digest(bytes("hl-b"))).toEqual(digest(files.get("hl-a")));
			expect(digest(bytes("sym"))).toEqual(digest(files.get("one")));
			// Not regular files, or leading out of the archive.
			for (const p of [".", "sub", "fifo", "cdev", "sym-abs", "sym-up"])
				expect(index.has(p)).toBe(false);
			const links = want.filter((e) => e.type === "hardlink").length;
			expect(index.size).toBe(files.size + links + 1);
		}
	});

	it("indexTar follows the symlinks of a docker-archive layout", async () => {
		const dir = join(work, "archive");
		await mkdir(join(dir, "blobs/sha256"), { recursive: true });
		await mkdir(join(dir, "abc123"));
		await writeFile(
			join(dir, "manifest.json"),
			'[{"Layers":["abc123/layer.tar"]}]',
		);
		await writeFile(join(dir, "blobs/sha256/ff00"), prng("layer", 10_000));
		await symlink("../blobs/sha256/ff00", join(dir, "abc123/layer.tar"));
		await symlink("/blobs/sha256/ff00", join(dir, "abs-link"));
		await symlink("loop-b", join(dir, "loop-a"));
		await symlink("loop-a", join(dir, "loop-b"));
		const out = join(work, "archive.tar");
		await run("tar", [
			"-cf",
			out,
			"-C",
			dir,
			"manifest.json",
			"blobs",
			"abc123",
			"abs-link",
			"loop-a",
			"loop-b",
		]);
		const tar = await readFile(out);
		const index = await indexTar(new BufferSource("archive.tar", tar));
		const at = index.get("abc123/layer.tar");
		expect(at).toEqual(index.get("blobs/sha256/ff00"));
		expect(at && tar.subarray(at.offset, at.offset + at.size)).toEqual(
			prng("layer", 10_000),
		);
		expect(index.get("abs-link")).toEqual(at);
		expect(index.has("loop-a")).toBe(false);
		const m = index.get("manifest.json");
		expect(
			m && JSON.parse(tar.toString("utf8", m.offset, m.offset + m.size)),
		).toEqual([{ Layers: ["abc123/layer.tar"] }]);
	});
});

// ---------------------------------------------------------------------------------------------

describe("hand-made archives that are valid", () => {
	it("normalises paths: ./ prefixes, //, /./, trailing slashes; ./ is the root", async () => {
		const got = await collect(
			chunked(
				tarOf(
					member({ name: "./", type: "5", mode: 0o755 }),
					member({ name: ".", type: "5" }),
					member({ name: "./a//b/./c/", type: "5" }),
					member({ name: "././x", type: "0" }, Buffer.from("x")),
					member({ name: "l", type: "1", linkname: "./a//x" }),
					member({ name: "s", type: "2", linkname: "../../../etc/shadow" }),
				),
			),
		);
		expect(got.map((e) => [e.path, e.type, e.linkname])).toEqual([
			[".", "dir", ""],
			[".", "dir", ""],
			["a/b/c", "dir", ""],
			["x", "file", ""],
			["l", "hardlink", "a/x"],
			["s", "symlink", "../../../etc/shadow"],
		]);
	});

	it("reads ustar prefixes, v7 headers, old-style directories, contiguous files and both checksum variants", async () => {
		const ok = await collect(
			chunked(
				tarOf(
					member({ name: "name", prefix: "pre/fix" }, Buffer.from("p")),
					member(
						{ name: "v7file", magic: "v7", type: "\0" },
						Buffer.from("v7"),
					),
					member({ name: "v7dir/", magic: "v7", type: "\0" }),
					member({ name: "contiguous", type: "7" }, Buffer.from("c")),
					member({
						name: "é-signed",
						signedChecksum: true,
						type: "2",
						linkname: "ü",
					}),
				),
			),
		);
		expect(ok.map((e) => [e.path, e.type, e.content.toString()])).toEqual([
			["pre/fix/name", "file", "p"],
			["v7file", "file", "v7"],
			["v7dir", "dir", ""],
			["contiguous", "file", "c"],
			["é-signed", "symlink", ""],
		]);
		expect(ok[4]?.linkname).toBe("ü");
	});

	it("reads base-256 and space-terminated numbers, and devices", async () => {
		const size = Buffer.alloc(12);
		size[0] = 0x80;
		size.writeUInt32BE(5, 8);
		const uid = Buffer.alloc(8);
		uid[0] = 0x80;
		uid.writeUInt32BE(0xfffffffe, 4);
		const spaced = header({ name: "spaced", uid: 7 });
		spaced.write("   644 \0", 100, "latin1"); // leading and trailing spaces
		spaced.write("0000017 ", 116, "latin1"); // gid 15, space-terminated
		fixChecksum(spaced);
		const got = await collect(
			chunked(
				tarOf(
					member(
						{ name: "b256", sizeField: size, uidField: uid },
						Buffer.from("12345"),
					),
					spaced,
					member({ name: "null", type: "3", devmajor: 1, devminor: 3 }),
					member({ name: "loop", type: "4", devmajor: 0o7777777, devminor: 9 }),
					member({ name: "dir", type: "5", size: 999 }), // a directory's size field is ignored
				),
			),
		);
		expect(
			got.map(
				({ path, size, uid, gid, mode, devmajor, devminor, content }) => ({
					path,
					size,
					uid,
					gid,
					mode,
					devmajor,
					devminor,
					content: content.toString(),
				}),
			),
		).toEqual([
			{
				path: "b256",
				size: 5,
				uid: 0xfffffffe,
				gid: 0,
				mode: 0o644,
				devmajor: 0,
				devminor: 0,
				content: "12345",
			},
			{
				path: "spaced",
				size: 0,
				uid: 7,
				gid: 15,
				mode: 0o644,
				devmajor: 0,
				devminor: 0,
				content: "",
			},
			{
				path: "null",
				size: 0,
				uid: 0,
				gid: 0,
				mode: 0o644,
				devmajor: 1,
				devminor: 3,
				content: "",
			},
			{
				path: "loop",
				size: 0,
				uid: 0,
				gid: 0,
				mode: 0o644,
				devmajor: 0o7777777,
				devminor: 9,
				content: "",
			},
			{
				path: "dir",
				size: 0,
				uid: 0,
				gid: 0,
				mode: 0o644,
				devmajor: 0,
				devminor: 0,
				content: "",
			},
		]);
	});

	it("applies PAX records: local over global, empty values, xattrs of both kinds", async () => {
		const got = await collect(
			chunked(
				tarOf(
					pax(
						[
							["uid", "4242"],
							["mtime", "-1.25"],
							["comment", "ignored"],
						],
						"g",
					),
					member({ name: "a", uid: 1 }),
					pax([
						["path", "from/pax"],
						["uid", "7"],
						["size", "3"],
						["mtime", "1700000000.123456789"],
						["uname", "root"],
						["atime", "1"],
						["SCHILY.xattr.user.x", Buffer.from([0, 10, 61])],
						["LIBARCHIVE.xattr.user.%3Dodd%20name", Buffer.from("aGk=")],
						["LIBARCHIVE.xattr.user.unpadded", Buffer.from("aGk")],
					]),
					member({ name: "header-name", size: 99 }, Buffer.from("abc")),
					pax([["uid", ""]]), // empty: back to the header's value
					member({ name: "b", uid: 3 }),
					pax([["mtime", ""]], "g"), // removes the global mtime
					member({ name: "c", mtime: 5 }),
				),
			),
		);
		expect(
			got.map(({ path, uid, mtime, size, xattrs, content }) => ({
				path,
				uid,
				mtime,
				size,
				xattrs,
				content: content.toString(),
			})),
		).toEqual([
			{ path: "a", uid: 4242, mtime: -1.25, size: 0, xattrs: {}, content: "" },
			{
				path: "from/pax",
				uid: 7,
				mtime: Number("1700000000.123456789"),
				size: 3,
				xattrs: {
					"user.x": Buffer.from([0, 10, 61]),
					"user.=odd name": Buffer.from("hi"),
					"user.unpadded": Buffer.from("hi"),
				},
				content: "abc",
			},
			{ path: "b", uid: 3, mtime: -1.25, size: 0, xattrs: {}, content: "" },
			{ path: "c", uid: 4242, mtime: 5, size: 0, xattrs: {}, content: "" },
		]);
		// An attribute named like a prototype key is just a key.
		const [p] = await collect(
			chunked(
				tarOf(pax([["SCHILY.xattr.__proto__", "x"]]), member({ name: "p" })),
			),
		);
		expect(Object.keys(p?.xattrs ?? {})).toEqual(["__proto__"]);
		expect(Object.getPrototypeOf(p?.xattrs)).toBe(Object.prototype);
	});

	it("GNU long names and link targets win; their trailing NULs are dropped", async () => {
		const long = `${"n".repeat(300)}/file`;
		const got = await collect(
			chunked(
				tarOf(
					gnuLong("L", Buffer.concat([Buffer.from(long), Buffer.alloc(20)])),
					gnuLong("K", "k".repeat(200)),
					member({ name: "trunc", type: "2", linkname: "short", magic: "gnu" }),
				),
			),
		);
		expect(got.map((e) => [e.path, e.linkname])).toEqual([
			[long, "k".repeat(200)],
		]);
	});

	it("ends at one zero block, at a block boundary without any, and ignores what follows the end", async () => {
		const a = member({ name: "a" }, Buffer.from("x"));
		for (const tar of [
			a,
			Buffer.concat([a, Buffer.alloc(512)]),
			Buffer.concat([a, END, Buffer.from("garbage that is not a tar header")]),
			Buffer.concat([a, END, header({ name: "/etc/evil" })]),
		])
			expect((await collect(chunked(tar))).map((e) => e.path)).toEqual(["a"]);
		expect(await collect(chunked(Buffer.alloc(0)))).toEqual([]);
		expect(await collect(chunked(END))).toEqual([]);
	});

	it("reads the input to its end after the end marker, unless told not to", async () => {
		const tar = Buffer.concat([
			tarOf(member({ name: "a" })),
			Buffer.alloc(50_000, 1),
		]);
		let pulled = 0;
		const counting = async function* () {
			for await (const b of chunked(tar, [1000])) {
				pulled += b.length;
				yield b;
			}
		};
		await collect(counting());
		expect(pulled).toBe(tar.length);
		pulled = 0;
		await collect(counting(), { drain: false });
		expect(pulled).toBe(2000);
	});
});

// ---------------------------------------------------------------------------------------------

describe("malicious and broken archives", () => {
	it("refuses absolute paths and '..' anywhere", async () => {
		for (const name of ["/etc/passwd", "//x", "/"])
			expect((await refusal(tarOf(member({ name })))).message).toMatch(
				new RegExp(`tar entry "${name}": absolute path`),
			);
		for (const name of ["../x", "a/../../x", "a/../b", "..", "./..", "a/.."])
			expect((await refusal(tarOf(member({ name })))).message).toContain(
				`tar entry "${name}": ".." escapes the root`,
			);
		// Through a PAX path, a GNU long name and a ustar prefix too.
		expect(
			(
				await refusal(
					tarOf(pax([["path", "x/../../etc"]]), member({ name: "ok" })),
				)
			).message,
		).toContain('"x/../../etc": ".." escapes the root');
		expect(
			(
				await refusal(
					tarOf(
						gnuLong("L", "/abs/long"),
						member({ name: "ok", magic: "gnu" }),
					),
				)
			).message,
		).toContain('"/abs/long": absolute path');
		expect(
			(await refusal(tarOf(member({ name: "x", prefix: ".." })))).message,
		).toContain('"../x": ".." escapes the root');
	});

	it("refuses hard links that leave the root", async () => {
		const msg = async (linkname: string) =>
			(await refusal(tarOf(member({ name: "x", type: "1", linkname }))))
				.message;
		expect(await msg("../etc/passwd")).toContain(
			'tar entry "x": hard link target "../etc/passwd": ".." escapes the root',
		);
		expect(await msg("/etc/passwd")).toContain(
			'hard link target "/etc/passwd": absolute path',
		);
		expect(await msg("./")).toMatch(/is the root directory/);
		expect(await msg("")).toMatch(/empty name/);
		expect(
			(
				await refusal(
					tarOf(
						pax([["linkpath", "a/../../b"]]),
						member({ name: "x", type: "1" }),
					),
				)
			).message,
		).toContain('".." escapes the root');
	});

	it("refuses a huge declared size from the header alone, without reading on", async () => {
		const size = Buffer.alloc(12);
		size[0] = 0x80;
		size.writeUIntBE(2 ** 40, 6, 6);
		const h = header({ name: "huge", sizeField: size });
		let pulled = 0;
		const endless = async function* () {
			yield h;
			for (;;) {
				pulled++;
				yield Buffer.alloc(1 << 16);
			}
		};
		const e = await failure(collect(endless()));
		expect(e.code).toBe("INPUT_INVALID");
		expect(e.message).toBe(
			`tar entry "huge" declares ${2 ** 40} bytes, more than the limit of ${64 * 2 ** 30}`,
		);
		expect(pulled).toBeLessThanOrEqual(1);
		// The same through PAX, and against a smaller limit.
		expect(
			(
				await refusal(
					tarOf(pax([["size", String(2 ** 40)]]), member({ name: "p" })),
				)
			).message,
		).toMatch(/"p" declares 1099511627776 bytes, more than the limit/);
		const small = tarOf(member({ name: "f" }, Buffer.alloc(100)));
		expect(
			(await failure(collect(chunked(small), { maxEntrySize: 99 }))).message,
		).toMatch(/declares 100 bytes, more than the limit of 99/);
		expect(await collect(chunked(small), { maxEntrySize: 100 })).toHaveLength(
			1,
		);
		// Base-256 numbers beyond 2^53 and negative sizes.
		size.fill(0xff);
		expect(
			(await refusal(tarOf(header({ name: "neg", sizeField: size })))).message,
		).toMatch(/size -1 is out of range/);
		size.fill(0x7f, 1);
		size[0] = 0x80;
		expect(
			(await refusal(tarOf(header({ name: "inf", sizeField: size })))).message,
		).toMatch(/size beyond 2\^53 is out of range/);
	});

	it("refuses a PAX or GNU long-name header over its limit before reading it", async () => {
		const size = Buffer.alloc(12);
		size[0] = 0x80;
		size.writeUIntBE(2 ** 40, 6, 6);
		const e = await refusal(
			tarOf(header({ name: "./PaxHeaders/big", type: "x", sizeField: size })),
		);
		expect(e.message).toMatch(
			/PAX extended header "\.\/PaxHeaders\/big" at byte 0 declares 1099511627776 bytes, more than the limit of 1048576/,
		);
		const long = gnuLong("L", "a".repeat(5000));
		expect(
			(
				await failure(
					collect(chunked(tarOf(long, member({ name: "x" }))), {
						maxPaxSize: 4096,
					}),
				)
			).message,
		).toMatch(
			/GNU long name header .* declares 5001 bytes, more than the limit of 4096/,
		);
		// Many small extended headers for one entry add up.
		const many = Array.from({ length: 5 }, () =>
			pax([["comment", "c".repeat(300)]]),
		);
		expect(
			(
				await failure(
					collect(chunked(tarOf(...many, member({ name: "x" }))), {
						maxPaxSize: 1000,
					}),
				)
			).message,
		).toMatch(/add up to more than the limit of 1000 bytes/);
	});

	it("refuses names over the path length limit", async () => {
		const e = await refusal(
			tarOf(pax([["path", "p/".repeat(3000)]]), member({ name: "x" })),
		);
		expect(e.message).toMatch(
			/name is 6000 bytes, more than the limit of 4096/,
		);
		const s = await refusal(
			tarOf(
				pax([["linkpath", "l".repeat(5000)]]),
				member({ name: "s", type: "2" }),
			),
		);
		expect(s.message).toMatch(
			/link target is 5000 bytes, more than the limit of 4096/,
		);
	});

	it("refuses truncation anywhere: header, content, padding, extended header", async () => {
		const full = tarOf(
			member({ name: "first" }, Buffer.from("1")),
			member({ name: "body" }, prng("b", 1000)),
		);
		const cut = (n: number) => full.subarray(0, n);
		expect((await refusal(cut(1024 + 200))).message).toMatch(
			/tar archive truncated: it ends at byte 1224, inside a header/,
		);
		expect((await refusal(cut(1024 + 512 + 300))).message).toMatch(
			/tar entry "body": truncated: the archive ends after 300 of its 1000 bytes/,
		);
		expect((await refusal(cut(1024 + 512 + 1010))).message).toMatch(
			/tar entry "body": truncated: the archive ends inside the padding/,
		);
		// Also when the consumer does not read the content, and when it skip()s.
		let e = await failure(
			(async () => {
				for await (const _ of readTar(chunked(cut(1024 + 512 + 300))));
			})(),
		);
		expect(e.message).toMatch(/truncated/);
		e = await failure(
			(async () => {
				for await (const x of readTar(chunked(cut(1024 + 512 + 300))))
					await x.skip();
			})(),
		);
		expect(e.message).toMatch(/truncated/);
		const ext = tarOf(pax([["path", "p".repeat(600)]]), member({ name: "x" }));
		expect((await refusal(ext.subarray(0, 700))).message).toMatch(
			/truncated: it ends at byte 700, inside the extended header at byte 0/,
		);
		expect(
			(await refusal(Buffer.concat([Buffer.alloc(512), Buffer.alloc(100)])))
				.message,
		).toMatch(/truncated/);
	});

	it("refuses a bad checksum", async () => {
		const tar = tarOf(
			member({ name: "good" }),
			member({ name: "bad" }, Buffer.from("x")),
		);
		tar[512 + 1] = 0x60; // "bad" → "b`d"
		expect((await refusal(tar)).message).toBe(
			'tar entry "b`d" (header at byte 512): header checksum mismatch (a corrupt archive, or not a tar archive)',
		);
		const noSum = header({ name: "n" });
		noSum.fill(0, 148, 156);
		expect((await refusal(tarOf(noSum))).message).toMatch(/checksum mismatch/);
		expect(
			(await refusal(Buffer.from("this is not a tar".repeat(100)))).message,
		).toMatch(/checksum mismatch/);
	});

	it("refuses unsupported entry types instead of skipping them", async () => {
		const msg = async (type: string) =>
			(await refusal(tarOf(member({ name: `t-${type}`, type })))).message;
		expect(await msg("Z")).toBe(
			"tar entry \"t-Z\": unsupported tar entry type 'Z'",
		);
		expect(await msg("S")).toBe(
			"tar entry \"t-S\": unsupported tar entry type 'S' (GNU sparse file)",
		);
		expect(await msg("V")).toMatch(/'V' \(GNU volume label\)/);
		expect(await msg("D")).toMatch(/GNU incremental dump directory/);
		expect(await msg("\x01")).toMatch(/unsupported tar entry type 0x01/);
		// PAX-encoded GNU sparse files (formats 0.x and 1.0) look like regular files.
		expect(
			(
				await refusal(
					tarOf(
						pax([
							["GNU.sparse.major", "1"],
							["GNU.sparse.minor", "0"],
						]),
						member({ name: "sp" }),
					),
				)
			).message,
		).toMatch(/"sp": unsupported tar entry type: GNU sparse file/);
	});

	it("refuses NUL bytes, empty names, names that are not UTF-8 and a non-directory root", async () => {
		expect(
			(await refusal(tarOf(pax([["path", "a\0b"]]), member({ name: "x" }))))
				.message,
		).toBe('tar entry "a\\u0000b": NUL byte in name');
		expect(
			(
				await refusal(
					tarOf(gnuLong("L", "a\0b\0"), member({ name: "x", magic: "gnu" })),
				)
			).message,
		).toMatch(/GNU long name header .*: malformed: NUL byte in name/);
		expect(
			(
				await refusal(
					tarOf(pax([["linkpath", "a\0b"]]), member({ name: "s", type: "2" })),
				)
			).message,
		).toMatch(/NUL byte in link target/);
		expect(
			(await refusal(tarOf(member({ name: "", type: "5" })))).message,
		).toMatch(/empty name/);
		expect(
			(await refusal(tarOf(member({ name: Buffer.from([0x61, 0xff, 0xfe]) }))))
				.message,
		).toMatch(/name is not valid UTF-8/);
		expect((await refusal(tarOf(member({ name: "./" })))).message).toMatch(
			/the root directory can only be a directory, not a file/,
		);
		expect(
			(await refusal(tarOf(member({ name: "s", type: "2" })))).message,
		).toMatch(/symbolic link with an empty target/);
	});

	it("refuses malformed numbers and PAX records", async () => {
		const h = header({ name: "m" });
		h.write("12x4567\0", 100, "latin1");
		fixChecksum(h);
		expect((await refusal(tarOf(h))).message).toBe(
			'tar entry "m" (header at byte 0): the mode field is not a number',
		);
		const bad = (records: Buffer) =>
			tarOf(
				member({ name: "./PaxHeaders/m", type: "x" }, records),
				member({ name: "m" }),
			);
		for (const body of [
			"nonsense",
			"99 path=x\n",
			"3 x\n",
			"10 path=ab",
			"9 =value\n",
			"11 path=abc\n", // the length is one short
			"12 path=abc\nxx",
		])
			expect((await refusal(bad(Buffer.from(body)))).message).toMatch(
				/PAX extended header "\.\/PaxHeaders\/m" at byte 0: malformed/,
			);
		for (const [k, v] of [
			["size", "12a"],
			["uid", "-1"],
			["gid", "99999999999"],
			["mtime", "1e9"],
			["mtime", "."],
			["LIBARCHIVE.xattr.user.x", "!!!"],
			["LIBARCHIVE.xattr.user.%zz", "aGk="],
			["SCHILY.xattr.", "v"],
		] as const)
			expect(
				(await refusal(tarOf(pax([[k, v]]), member({ name: "f" })))).message,
			).toMatch(/^tar entry "f": PAX /);
	});

	it("refuses a lone zero block followed by entries, and extended headers without an entry", async () => {
		expect(
			(
				await refusal(
					Buffer.concat([
						member({ name: "a" }),
						Buffer.alloc(512),
						member({ name: "b" }),
						END,
					]),
				)
			).message,
		).toMatch(/a single zero block at byte 512 followed by more entries/);
		expect(
			(await refusal(tarOf(member({ name: "a" }), pax([["path", "b"]]))))
				.message,
		).toMatch(/the extended header at byte 512 is not followed by an entry/);
	});
});

// ---------------------------------------------------------------------------------------------

describe("fuzzing", { timeout: 60_000 }, () => {
	/** A small archive with a bit of everything, and where its headers are. */
	const seed = tarOf(
		member({ name: "dir", type: "5" }),
		pax([
			["path", "dir/pax-name"],
			["mtime", "1.5"],
			["SCHILY.xattr.user.a", "b"],
		]),
		member({ name: "x" }, prng("a", 700)),
		gnuLong("L", "l".repeat(130)),
		member({ name: "y", magic: "gnu" }, prng("b", 5)),
		member({ name: "hard", type: "1", linkname: "dir/pax-name" }),
		member({ name: "sym", type: "2", linkname: "/abs" }),
		member({ name: "dev", type: "3", devmajor: 1, devminor: 2 }),
	);
	const headers: number[] = [];
	for (let at = 0; at < seed.length; ) {
		const h = seed.subarray(at, at + 512);
		if (h.every((c) => c === 0)) break;
		headers.push(at);
		const size = Number.parseInt(h.toString("latin1", 124, 135), 8);
		at += 512 + Math.ceil(size / 512) * 512;
	}

	/** readTar and indexTar on the same bytes: both succeed or both refuse, with DadiErrors only. */
	async function check(bytes: Buffer, sizes: number[]): Promise<void> {
		let entries: Read[] | undefined;
		try {
			entries = await collect(chunked(bytes, sizes));
		} catch (e) {
			if (!(e instanceof DadiError)) throw e;
			expect(e.code).toBe("INPUT_INVALID");
		}
		let index: Map<string, { offset: number; size: number }> | undefined;
		try {
			index = await indexTar(new BufferSource("fuzz.tar", bytes));
		} catch (e) {
			if (!(e instanceof DadiError)) throw e;
			expect(e.code).toBe("INPUT_INVALID");
		}
		expect(index === undefined).toBe(entries === undefined);
		if (!entries || !index) return;
		const last = new Map<string, Read>();
		for (const e of entries) {
			expect(e.content.length).toBe(e.size);
			for (const p of e.type === "hardlink" ? [e.path, e.linkname] : [e.path]) {
				expect(p.startsWith("/")).toBe(false);
				expect(p.split("/")).not.toContain("..");
				expect(p.split("/")).not.toContain("");
			}
			last.set(e.path, e);
		}
		for (const [p, e] of last)
			if (e.type === "file") {
				const m = index.get(p);
				expect(m && bytes.subarray(m.offset, m.offset + m.size)).toEqual(
					e.content,
				);
			}
	}

	it("the seed archive reads", async () => {
		const got = await collect(chunked(seed));
		expect(got.map((e) => e.path)).toEqual([
			"dir",
			"dir/pax-name",
			"l".repeat(130),
			"hard",
			"sym",
			"dev",
		]);
		expect(headers).toHaveLength(8);
	});

	it("random bytes only ever give DadiErrors (property)", async () => {
		await fc.assert(
			fc.asyncProperty(
				fc.uint8Array({ minLength: 0, maxLength: 3000 }),
				fc.array(fc.integer({ min: 1, max: 700 }), { maxLength: 4 }),
				async (bytes, sizes) => check(Buffer.from(bytes), sizes),
			),
			{ numRuns: 300 },
		);
	});

	it("mutations of a valid archive, with their checksums fixed or not, only ever give DadiErrors (property)", async () => {
		await fc.assert(
			fc.asyncProperty(
				fc.array(
					fc.record({
						// Mostly in and just after headers (where PAX records and long names are).
						header: fc.constantFrom(...headers),
						at: fc.integer({ min: 0, max: 1023 }),
						anywhere: fc.nat({ max: seed.length - 1 }),
						nearHeader: fc.boolean(),
						value: fc.oneof(
							fc.constantFrom(
								...Buffer.from("\0 ./0123456789=\n\x80\xffLKxgS", "latin1"),
							),
							fc.integer({ min: 0, max: 255 }),
						),
					}),
					{ minLength: 1, maxLength: 6 },
				),
				fc.boolean(),
				// Mostly whole, sometimes cut short.
				fc.oneof(
					{ arbitrary: fc.constant(undefined), weight: 4 },
					{ arbitrary: fc.nat({ max: seed.length }), weight: 1 },
				),
				fc.array(fc.integer({ min: 1, max: 1500 }), { maxLength: 3 }),
				async (mutations, fix, cut, sizes) => {
					const b = Buffer.from(seed);
					for (const m of mutations)
						b[m.nearHeader ? m.header + m.at : m.anywhere] = m.value;
					if (fix) for (const h of headers) fixChecksum(b, false, h);
					await check(cut === undefined ? b : b.subarray(0, cut), sizes);
				},
			),
			{ numRuns: 1500 },
		);
	});
});
