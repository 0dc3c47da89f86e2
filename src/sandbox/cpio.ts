/**
 * A deterministic cpio "newc" (SVR4, magic 070701) archive writer: the format of a Linux initramfs.
 *
 * Pure: entries in, bytes out. Every entry is owned by 0:0 with mtime 0; entries are written in
 * byte order of their paths (so a directory always precedes what it contains, as the kernel's
 * unpacker needs) with inode numbers 1, 2, 3, … in that order, and the archive ends with the
 * TRAILER!!! entry. The same entries therefore always give the same bytes.
 */
import { DadiError } from "../errors.js";

export type CpioEntry =
	| { type: "dir"; path: string; mode?: number }
	| { type: "file"; path: string; mode?: number; data: Uint8Array }
	| { type: "symlink"; path: string; target: string }
	| {
			type: "chardev" | "blockdev";
			path: string;
			mode?: number;
			major: number;
			minor: number;
	  };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const MAX32 = 0xffffffff;

/** Checks a relative archive path ("bin/sh"): no leading "/", no empty, "." or ".." components. */
export function checkCpioPath(path: string): void {
	const bad = (why: string) =>
		new DadiError(
			"INPUT_INVALID",
			`cpio entry ${JSON.stringify(path)}: ${why}`,
		);
	if (path.length === 0) throw bad("empty path");
	if (path.includes("\0")) throw bad("NUL in path");
	if (Buffer.byteLength(path) > 4095) throw bad("path longer than 4095 bytes");
	for (const c of path.split("/"))
		if (c === "" || c === "." || c === "..")
			throw bad("paths are relative, with no empty, '.' or '..' components");
}

function compareBytes(a: string, b: string): number {
	return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function parentOf(path: string): string | undefined {
	const i = path.lastIndexOf("/");
	return i < 0 ? undefined : path.slice(0, i);
}

/** `entries` plus a directory entry (mode 0755) for every missing ancestor. */
export function withParents(entries: readonly CpioEntry[]): CpioEntry[] {
	const have = new Set(entries.map((e) => e.path));
	const out = [...entries];
	for (const e of entries) {
		for (let p = parentOf(e.path); p !== undefined; p = parentOf(p)) {
			if (have.has(p)) continue;
			have.add(p);
			out.push({ type: "dir", path: p });
		}
	}
	return out;
}

function hex8(n: number): string {
	return n.toString(16).padStart(8, "0");
}

function header(
	ino: number,
	mode: number,
	nlink: number,
	fileSize: number,
	rdevMajor: number,
	rdevMinor: number,
	nameSize: number,
): string {
	return [
		"070701",
		hex8(ino),
		hex8(mode),
		hex8(0), // uid
		hex8(0), // gid
		hex8(nlink),
		hex8(0), // mtime
		hex8(fileSize),
		hex8(0), // devmajor
		hex8(0), // devminor
		hex8(rdevMajor),
		hex8(rdevMinor),
		hex8(nameSize),
		hex8(0), // check
	].join("");
}

const pad4 = (n: number) => (4 - (n % 4)) % 4;

function record(
	parts: Buffer[],
	name: string,
	ino: number,
	mode: number,
	nlink: number,
	data: Uint8Array,
	rdevMajor = 0,
	rdevMinor = 0,
): number {
	const nameBytes = Buffer.from(`${name}\0`);
	const head = Buffer.from(
		header(
			ino,
			mode,
			nlink,
			data.length,
			rdevMajor,
			rdevMinor,
			nameBytes.length,
		),
		"latin1",
	);
	const namePad = pad4(head.length + nameBytes.length);
	parts.push(head, nameBytes, Buffer.alloc(namePad));
	let n = head.length + nameBytes.length + namePad;
	if (data.length > 0) {
		const dataPad = pad4(data.length);
		parts.push(Buffer.from(data.buffer, data.byteOffset, data.length));
		if (dataPad > 0) parts.push(Buffer.alloc(dataPad));
		n += data.length + dataPad;
	}
	return n;
}

function checkMode(path: string, mode: number): number {
	if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777)
		throw new DadiError(
			"INPUT_INVALID",
			`cpio entry ${JSON.stringify(path)}: mode ${mode} is not a permission mode (0..0o7777)`,
		);
	return mode;
}

function checkDev(path: string, n: number): number {
	if (!Number.isInteger(n) || n < 0 || n > MAX32)
		throw new DadiError(
			"INPUT_INVALID",
			`cpio entry ${JSON.stringify(path)}: device number ${n} out of range`,
		);
	return n;
}

/**
 * The archive of `entries`, as a list of buffers to write in order (a file's bytes are not copied).
 * Throws INPUT_INVALID for a bad path, a duplicate, an entry whose parent directory is not in the
 * list, or a size the format cannot hold.
 */
export function cpioArchive(entries: readonly CpioEntry[]): {
	parts: Buffer[];
	size: number;
} {
	const sorted = [...entries].sort((a, b) => compareBytes(a.path, b.path));
	const dirs = new Set<string>();
	const parts: Buffer[] = [];
	let size = 0;
	let ino = 0;
	let prev: string | undefined;
	for (const e of sorted) {
		checkCpioPath(e.path);
		if (e.path === prev)
			throw new DadiError(
				"INPUT_INVALID",
				`cpio entry ${JSON.stringify(e.path)}: listed twice`,
			);
		prev = e.path;
		const parent = parentOf(e.path);
		if (parent !== undefined && !dirs.has(parent))
			throw new DadiError(
				"INPUT_INVALID",
				`cpio entry ${JSON.stringify(e.path)}: its directory ${JSON.stringify(parent)} is not an entry`,
			);
		ino += 1;
		switch (e.type) {
			case "dir":
				dirs.add(e.path);
				size += record(
					parts,
					e.path,
					ino,
					S_IFDIR | checkMode(e.path, e.mode ?? 0o755),
					2,
					new Uint8Array(0),
				);
				break;
			case "file":
				if (e.data.length > MAX32)
					throw new DadiError(
						"INPUT_INVALID",
						`cpio entry ${JSON.stringify(e.path)}: larger than 4 GiB`,
					);
				size += record(
					parts,
					e.path,
					ino,
					S_IFREG | checkMode(e.path, e.mode ?? 0o644),
					1,
					e.data,
				);
				break;
			case "symlink":
				if (e.target.length === 0 || e.target.includes("\0"))
					throw new DadiError(
						"INPUT_INVALID",
						`cpio entry ${JSON.stringify(e.path)}: symlink target empty or has NUL`,
					);
				size += record(
					parts,
					e.path,
					ino,
					S_IFLNK | 0o777,
					1,
					Buffer.from(e.target),
				);
				break;
			case "chardev":
			case "blockdev":
				size += record(
					parts,
					e.path,
					ino,
					(e.type === "chardev" ? S_IFCHR : S_IFBLK) |
						checkMode(e.path, e.mode ?? 0o600),
					1,
					new Uint8Array(0),
					checkDev(e.path, e.major),
					checkDev(e.path, e.minor),
				);
				break;
		}
	}
	size += record(parts, "TRAILER!!!", 0, 0, 1, new Uint8Array(0));
	return { parts, size };
}
