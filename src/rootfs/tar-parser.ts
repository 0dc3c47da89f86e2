/**
 * The tar header state machine shared by the streaming reader and the indexer: it takes header
 * blocks one at a time, collects the extended headers that precede an entry (PAX 'x' and 'g',
 * GNU 'L' and 'K'), and turns each real header into a validated, normalised entry. It never
 * reads bytes itself: for an extended header it says how many body bytes it needs.
 */
import { DadiError } from "../errors.js";
import type { TarEntry, TarEntryType } from "./tar-entry.js";
import { decodeHeader, parsePaxRecords, type RawHeader } from "./tar-header.js";
import {
	decodeUtf8,
	displayName,
	entryError,
	normalizePath,
	quote,
} from "./tar-path.js";

export interface TarReadOptions {
	/** Largest regular-file content accepted, in bytes (default 64 GiB). */
	maxEntrySize?: number;
	/** Largest body of one PAX or GNU long-name header, and of all those before one entry (default 1 MiB). */
	maxPaxSize?: number;
	/** Longest member path or link target, in bytes of its raw form (default 4096). */
	maxPathLength?: number;
}

export type TarLimits = Required<TarReadOptions>;

export const DEFAULT_LIMITS: TarLimits = {
	maxEntrySize: 64 * 2 ** 30,
	maxPaxSize: 2 ** 20,
	maxPathLength: 4096,
};

export function resolveLimits(opts: TarReadOptions | undefined): TarLimits {
	const limits = { ...DEFAULT_LIMITS };
	for (const key of Object.keys(DEFAULT_LIMITS) as Array<keyof TarLimits>) {
		const v = opts?.[key];
		if (v === undefined) continue;
		if (!Number.isSafeInteger(v) || v < 0)
			throw new DadiError(
				"USAGE",
				`tar reader: ${key} must be a non-negative integer, not ${String(v)}`,
			);
		limits[key] = v;
	}
	return limits;
}

/** Everything of a TarEntry but its content. */
export type TarEntryInfo = Omit<TarEntry, "body" | "skip">;

export type HeaderStep =
	| {
			kind: "meta";
			/** Bytes of body that follow the header (then padding to a block boundary). */
			size: number;
			/** For messages. */
			name: string;
			/** Hands the body over once read. */
			apply(body: Buffer): void;
	  }
	| {
			kind: "entry";
			entry: TarEntryInfo;
			/** The raw name, for messages. */
			name: string;
			/** Bytes of content that follow the header (then padding): `entry.size` for files, else 0. */
			dataSize: number;
	  };

const TYPES: Record<string, TarEntryType> = {
	"0": "file",
	"\0": "file",
	"7": "file",
	"1": "hardlink",
	"2": "symlink",
	"3": "chardev",
	"4": "blockdev",
	"5": "dir",
	"6": "fifo",
};

const UNSUPPORTED: Record<string, string> = {
	S: "GNU sparse file",
	D: "GNU incremental dump directory",
	M: "GNU multi-volume continuation",
	N: "GNU old long name",
	V: "GNU volume label",
	X: "Solaris extended header",
	A: "Solaris access control list",
	E: "Solaris extended attributes",
	I: "inode metadata",
};

function describeType(flag: number): string {
	const c = String.fromCharCode(flag);
	const shown =
		flag >= 0x20 && flag < 0x7f
			? `'${c}'`
			: `0x${flag.toString(16).padStart(2, "0")}`;
	const what = UNSUPPORTED[c];
	return what ? `${shown} (${what})` : shown;
}

const SCHILY_XATTR = "SCHILY.xattr.";
const LIBARCHIVE_XATTR = "LIBARCHIVE.xattr.";
const MAX_ID = 0xffffffff;

export class TarParser {
	private readonly local = new Map<string, Buffer>();
	private readonly global = new Map<string, Buffer>();
	private longName: Buffer | undefined;
	private longLink: Buffer | undefined;
	/** Body bytes of the extended headers waiting for their entry (-1: none). */
	private pendingBytes = -1;
	private pendingAt = 0;
	private globalBytes = 0;

	constructor(private readonly limits: TarLimits) {}

	/** A non-zero header block read at byte `offset`. */
	header(block: Buffer, offset: number): HeaderStep {
		const h = decodeHeader(block, offset);
		const c = String.fromCharCode(h.typeflag);
		if (c === "x" || c === "g" || c === "L" || c === "K")
			return this.meta(h, c, offset);
		return this.entry(h);
	}

	/** The end of the archive: refuses extended headers left without an entry. */
	finish(offset: number): void {
		if (this.pendingBytes >= 0)
			throw new DadiError(
				"INPUT_INVALID",
				`tar archive: the extended header at byte ${this.pendingAt} is not followed by an entry (the archive ends at byte ${offset})`,
			);
	}

	private meta(h: RawHeader, c: string, offset: number): HeaderStep {
		const name = displayName(h.name);
		const what =
			c === "x" || c === "g" ? "PAX extended header" : "GNU long name header";
		const where = `tar ${what} ${quote(name)} at byte ${offset}`;
		const max = this.limits.maxPaxSize;
		if (h.size > max)
			throw new DadiError(
				"INPUT_INVALID",
				`${where} declares ${h.size} bytes, more than the limit of ${max}`,
			);
		if (c === "g") {
			if (this.globalBytes + h.size > max)
				throw new DadiError(
					"INPUT_INVALID",
					`${where}: global extended headers add up to more than the limit of ${max} bytes`,
				);
			this.globalBytes += h.size;
		} else {
			if (this.pendingBytes < 0) {
				this.pendingBytes = 0;
				this.pendingAt = offset;
			}
			if (this.pendingBytes + h.size > max)
				throw new DadiError(
					"INPUT_INVALID",
					`${where}: the extended headers of one entry add up to more than the limit of ${max} bytes`,
				);
			this.pendingBytes += h.size;
		}
		const malformed = (detail: string) =>
			new DadiError("INPUT_INVALID", `${where}: malformed: ${detail}`);
		return {
			kind: "meta",
			size: h.size,
			name,
			apply: (body) => {
				if (c === "L") this.longName = longNameOf(body, malformed);
				else if (c === "K") this.longLink = longNameOf(body, malformed);
				else {
					for (const [k, v] of parsePaxRecords(body, malformed)) {
						// Keep a copy: values outlive the chunk they came in.
						if (c === "x") this.local.set(k, Buffer.from(v));
						else if (v.length === 0) this.global.delete(k);
						else this.global.set(k, Buffer.from(v));
					}
				}
			},
		};
	}

	/** A PAX value: the entry's own ('x') over the global one ('g'); empty means "not set". */
	private pax(key: string): Buffer | undefined {
		const v = this.local.has(key) ? this.local.get(key) : this.global.get(key);
		return v !== undefined && v.length > 0 ? v : undefined;
	}

	private entry(h: RawHeader): HeaderStep {
		try {
			return this.buildEntry(h);
		} finally {
			this.local.clear();
			this.longName = undefined;
			this.longLink = undefined;
			this.pendingBytes = -1;
		}
	}

	private buildEntry(h: RawHeader): HeaderStep {
		const limits = this.limits;
		const rawBytes = this.longName ?? this.pax("path") ?? h.name;
		const shown = displayName(rawBytes);
		const fail = (problem: string) => entryError(shown, problem);
		const name = decodeName(rawBytes, "name", fail);
		if (rawBytes.length > limits.maxPathLength)
			throw fail(
				`name is ${rawBytes.length} bytes, more than the limit of ${limits.maxPathLength}`,
			);

		for (const k of [...this.local.keys(), ...this.global.keys()])
			if (k.startsWith("GNU.sparse."))
				throw fail(
					`unsupported tar entry type: GNU sparse file (PAX key ${k})`,
				);

		const c = String.fromCharCode(h.typeflag);
		let type = TYPES[c];
		if (type === undefined)
			throw fail(`unsupported tar entry type ${describeType(h.typeflag)}`);
		// Old archives mark directories with a regular-file flag and a trailing slash.
		if (c === "\0" && name.endsWith("/")) type = "dir";

		const path = normalizePath(name);
		if (typeof path !== "string") throw fail(path.problem);
		if (path === "." && type !== "dir")
			throw fail(`the root directory can only be a directory, not a ${type}`);

		let size = 0;
		if (type === "file") {
			size = this.paxNumber("size", fail) ?? h.size;
			if (size > limits.maxEntrySize)
				throw new DadiError(
					"INPUT_INVALID",
					`tar entry ${quote(shown)} declares ${size} bytes, more than the limit of ${limits.maxEntrySize}`,
				);
		}

		let linkname = "";
		if (type === "hardlink" || type === "symlink") {
			const linkBytes = this.longLink ?? this.pax("linkpath") ?? h.linkname;
			const raw = decodeName(linkBytes, "link target", fail);
			if (linkBytes.length > limits.maxPathLength)
				throw fail(
					`link target is ${linkBytes.length} bytes, more than the limit of ${limits.maxPathLength}`,
				);
			if (type === "symlink") {
				if (raw === "") throw fail("symbolic link with an empty target");
				linkname = raw;
			} else {
				const target = normalizePath(raw);
				if (typeof target !== "string")
					throw fail(`hard link target ${quote(raw)}: ${target.problem}`);
				if (target === ".")
					throw fail(`hard link target ${quote(raw)} is the root directory`);
				linkname = target;
			}
		}

		const mtime = this.paxMtime(fail) ?? h.mtime;
		const uid = this.paxNumber("uid", fail, MAX_ID) ?? h.uid;
		const gid = this.paxNumber("gid", fail, MAX_ID) ?? h.gid;
		const isDevice = type === "chardev" || type === "blockdev";
		const devmajor = isDevice
			? (this.paxNumber("SCHILY.devmajor", fail, MAX_ID) ?? h.devmajor)
			: 0;
		const devminor = isDevice
			? (this.paxNumber("SCHILY.devminor", fail, MAX_ID) ?? h.devminor)
			: 0;

		return {
			kind: "entry",
			name: shown,
			dataSize: size,
			entry: {
				path,
				type,
				mode: h.mode & 0o7777,
				uid,
				gid,
				mtime,
				size,
				linkname,
				devmajor,
				devminor,
				xattrs: this.xattrs(fail),
			},
		};
	}

	private paxNumber(
		key: string,
		fail: (problem: string) => DadiError,
		max = Number.MAX_SAFE_INTEGER,
	): number | undefined {
		const v = this.pax(key);
		if (v === undefined) return undefined;
		const s = v.toString("latin1");
		if (!/^[0-9]+$/.test(s))
			throw fail(`PAX ${key} ${quote(s)} is not a number`);
		const n = Number(s);
		if (n > max) throw fail(`PAX ${key} ${s} is out of range`);
		return n;
	}

	private paxMtime(fail: (problem: string) => DadiError): number | undefined {
		const v = this.pax("mtime");
		if (v === undefined) return undefined;
		const s = v.toString("latin1");
		const n = Number(s);
		if (
			!/^-?[0-9]+(\.[0-9]+)?$/.test(s) ||
			!(Math.abs(n) <= Number.MAX_SAFE_INTEGER)
		)
			throw fail(`PAX mtime ${quote(s)} is not a time`);
		return n;
	}

	private xattrs(fail: (problem: string) => DadiError): Record<string, Buffer> {
		const out: Record<string, Buffer> = Object.create(null);
		for (const records of [this.global, this.local])
			for (const [k, v] of records) {
				let name: string | undefined;
				let value: Buffer;
				if (k.startsWith(SCHILY_XATTR)) {
					// GNU tar writes "=" and "%" in names as %3D and %25.
					name = k
						.slice(SCHILY_XATTR.length)
						.replace(/%3D/gi, "=")
						.replace(/%25/g, "%");
					value = v;
				} else if (k.startsWith(LIBARCHIVE_XATTR)) {
					name = percentDecode(k.slice(LIBARCHIVE_XATTR.length));
					const b64 = v.toString("latin1");
					if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64))
						throw fail(`PAX ${k} is not base64`);
					value = Buffer.from(b64, "base64");
				} else continue;
				if (name === undefined || name === "" || name.includes("\0"))
					throw fail(`PAX ${quote(k)} does not name an extended attribute`);
				out[name] = value;
			}
		// A plain object for the consumer (no null prototype surprises), keys in record order.
		return { ...out };
	}
}

/** A GNU 'L'/'K' body: the name, NUL-terminated; only NULs may follow the terminator. */
function longNameOf(
	body: Buffer,
	malformed: (detail: string) => DadiError,
): Buffer {
	const nul = body.indexOf(0);
	if (nul < 0) return Buffer.from(body);
	for (let i = nul; i < body.length; i++)
		if (body[i] !== 0) throw malformed("NUL byte in name");
	return Buffer.from(body.subarray(0, nul));
}

function decodeName(
	bytes: Buffer,
	what: string,
	fail: (problem: string) => DadiError,
): string {
	if (bytes.includes(0)) throw fail(`NUL byte in ${what}`);
	const s = decodeUtf8(bytes);
	if (s === undefined) throw fail(`${what} is not valid UTF-8`);
	return s;
}

/** libarchive's URL encoding of xattr names: %XX escapes of bytes, UTF-8 underneath. */
function percentDecode(s: string): string | undefined {
	const bytes: number[] = [];
	const raw = Buffer.from(s, "utf8");
	for (let i = 0; i < raw.length; i++) {
		const c = raw[i] as number;
		if (c !== 0x25) {
			bytes.push(c);
			continue;
		}
		const hex = raw.toString("latin1", i + 1, i + 3);
		if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return undefined;
		bytes.push(Number.parseInt(hex, 16));
		i += 2;
	}
	return decodeUtf8(Buffer.from(bytes));
}
