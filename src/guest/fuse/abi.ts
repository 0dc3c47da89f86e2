/**
 * The FUSE kernel ABI (Linux include/uapi/linux/fuse.h), protocol 7.x: opcodes, flags and the
 * byte layouts of the requests and replies this file system speaks, as pure encoders and decoders.
 *
 * Layout facts (all integers in the machine's byte order; little-endian on every platform we
 * run on — `assertLittleEndian` checks at mount time):
 *
 * | struct            | size | fields (offset: type name)                                             |
 * |-------------------|------|------------------------------------------------------------------------|
 * | fuse_in_header    |   40 | 0 u32 len, 4 u32 opcode, 8 u64 unique, 16 u64 nodeid, 24 u32 uid,       |
 * |                   |      | 28 u32 gid, 32 u32 pid, 36 u16 total_extlen (8-byte units), 38 u16 pad |
 * | fuse_out_header   |   16 | 0 u32 len, 4 i32 error (0 or -errno), 8 u64 unique                      |
 * | fuse_init_in      | 16/64| 0 major, 4 minor, 8 max_readahead, 12 flags, 16 flags2 (7.36+), unused |
 * | fuse_init_out     |24/64 | 0 major, 4 minor, 8 max_readahead, 12 flags, 16 u16 max_background,    |
 * |                   |      | 18 u16 congestion_threshold, 20 max_write, 24 time_gran, 28 u16        |
 * |                   |      | max_pages, 30 u16 map_alignment, 32 flags2, 36 max_stack_depth,         |
 * |                   |      | 40 u16 request_timeout, 42.. unused (zero)                             |
 * | fuse_attr         |   88 | 0 ino, 8 size, 16 blocks, 24 atime, 32 mtime, 40 ctime (u64 each),     |
 * |                   |      | 48 atimensec, 52 mtimensec, 56 ctimensec, 60 mode, 64 nlink, 68 uid,   |
 * |                   |      | 72 gid, 76 rdev, 80 blksize, 84 flags (u32 each)                       |
 * | fuse_entry_out    |  128 | 0 nodeid, 8 generation, 16 entry_valid, 24 attr_valid (u64), 32 u32    |
 * |                   |      | entry_valid_nsec, 36 u32 attr_valid_nsec, 40 fuse_attr                 |
 * | fuse_attr_out     |  104 | 0 u64 attr_valid, 8 u32 attr_valid_nsec, 12 pad, 16 fuse_attr          |
 * | fuse_open_in      |    8 | 0 u32 flags (open(2) flags), 4 u32 open_flags                          |
 * | fuse_open_out     |   16 | 0 u64 fh, 8 u32 open_flags (FOPEN_*), 12 i32 backing_id (7.40+)        |
 * | fuse_read_in      |24/40 | 0 u64 fh, 8 u64 offset, 16 u32 size, 20 u32 read_flags, 24 u64         |
 * |                   |      | lock_owner, 32 u32 flags, 36 pad (the last three since 7.9)            |
 * | fuse_release_in   |   24 | 0 u64 fh, 8 u32 flags, 12 u32 release_flags, 16 u64 lock_owner         |
 * | fuse_flush_in     |   24 | 0 u64 fh, 8 u32 unused, 12 pad, 16 u64 lock_owner                      |
 * | fuse_getattr_in   |   16 | 0 u32 getattr_flags, 4 pad, 8 u64 fh                                   |
 * | fuse_forget_in    |    8 | 0 u64 nlookup                                                          |
 * | fuse_batch_forget |  8+n·16 | 0 u32 count, 4 pad, then count × {u64 nodeid, u64 nlookup}          |
 * | fuse_interrupt_in |    8 | 0 u64 unique                                                           |
 * | fuse_access_in    |    8 | 0 u32 mask, 4 pad                                                      |
 * | fuse_getxattr_in  |    8 | 0 u32 size, 4 pad (GETXATTR: then the NUL-terminated name)             |
 * | fuse_kstatfs      |   80 | 0 blocks, 8 bfree, 16 bavail, 24 files, 32 ffree (u64), 40 bsize,      |
 * |                   |      | 44 namelen, 48 frsize, 52 pad, 56 spare[6] (u32)                       |
 * | fuse_dirent       | 24+n | 0 u64 ino, 8 u64 off (of the next entry), 16 u32 namelen, 20 u32 type, |
 * |                   |      | 24 name; each record padded to a multiple of 8                         |
 *
 * A request is one read(2) of /dev/fuse: the in-header, the opcode's arguments, then
 * `total_extlen * 8` bytes of extensions (7.38+; only sent for features we never ask for). A reply
 * is one write(2): the out-header and the reply arguments. Every decoder checks bounds first and
 * throws DadiError("INPUT_INVALID") on anything malformed: the bytes come from the kernel, but the
 * codec does not trust them.
 */
import { DadiError } from "../../errors.js";

/** The protocol major version we speak; the kernel must speak it too. */
export const FUSE_KERNEL_VERSION = 7;
/** The highest minor version whose layouts this module follows (the kernel here offers 7.45). */
export const FUSE_OUR_MINOR = 45;
/** The lowest minor version we accept (7.12: Linux 2.6.29; everything we use exists by then). */
export const FUSE_MIN_MINOR = 12;

export const FUSE_ROOT_ID = 1n;
export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;
export const ATTR_SIZE = 88;
export const ENTRY_OUT_SIZE = 40 + ATTR_SIZE;
export const ATTR_OUT_SIZE = 16 + ATTR_SIZE;
export const OPEN_OUT_SIZE = 16;
export const STATFS_OUT_SIZE = 80;
export const INIT_IN_SIZE = 64;
export const INIT_OUT_SIZE = 64;
/** fuse_init_out as a 7.5–7.22 kernel expects it. */
export const INIT_OUT_COMPAT_22_SIZE = 24;
export const READ_IN_SIZE = 40;
/** fuse_read_in before 7.9. */
export const READ_IN_COMPAT_SIZE = 24;
export const DIRENT_HEADER_SIZE = 24;
/** The kernel's FUSE_INT_REQ_BIT: INTERRUPT requests carry their own unique with this bit set. */
export const FUSE_INT_REQ_BIT = 1n;

/** Request opcodes (enum fuse_opcode). */
export const Op = {
	LOOKUP: 1,
	FORGET: 2,
	GETATTR: 3,
	SETATTR: 4,
	READLINK: 5,
	SYMLINK: 6,
	MKNOD: 8,
	MKDIR: 9,
	UNLINK: 10,
	RMDIR: 11,
	RENAME: 12,
	LINK: 13,
	OPEN: 14,
	READ: 15,
	WRITE: 16,
	STATFS: 17,
	RELEASE: 18,
	FSYNC: 20,
	SETXATTR: 21,
	GETXATTR: 22,
	LISTXATTR: 23,
	REMOVEXATTR: 24,
	FLUSH: 25,
	INIT: 26,
	OPENDIR: 27,
	READDIR: 28,
	RELEASEDIR: 29,
	FSYNCDIR: 30,
	GETLK: 31,
	SETLK: 32,
	SETLKW: 33,
	ACCESS: 34,
	CREATE: 35,
	INTERRUPT: 36,
	BMAP: 37,
	DESTROY: 38,
	IOCTL: 39,
	POLL: 40,
	NOTIFY_REPLY: 41,
	BATCH_FORGET: 42,
	FALLOCATE: 43,
	READDIRPLUS: 44,
	RENAME2: 45,
	LSEEK: 46,
	COPY_FILE_RANGE: 47,
	SETUPMAPPING: 48,
	REMOVEMAPPING: 49,
	SYNCFS: 50,
	TMPFILE: 51,
	STATX: 52,
	COPY_FILE_RANGE_64: 53,
} as const;

/** INIT flags (the low 32 bits; bits 32–63 travel in flags2 when FUSE_INIT_EXT is set). */
export const InitFlag = {
	ASYNC_READ: 1 << 0,
	POSIX_LOCKS: 1 << 1,
	ATOMIC_O_TRUNC: 1 << 3,
	EXPORT_SUPPORT: 1 << 4,
	BIG_WRITES: 1 << 5,
	DONT_MASK: 1 << 6,
	SPLICE_WRITE: 1 << 7,
	SPLICE_MOVE: 1 << 8,
	SPLICE_READ: 1 << 9,
	FLOCK_LOCKS: 1 << 10,
	HAS_IOCTL_DIR: 1 << 11,
	AUTO_INVAL_DATA: 1 << 12,
	DO_READDIRPLUS: 1 << 13,
	READDIRPLUS_AUTO: 1 << 14,
	ASYNC_DIO: 1 << 15,
	WRITEBACK_CACHE: 1 << 16,
	NO_OPEN_SUPPORT: 1 << 17,
	PARALLEL_DIROPS: 1 << 18,
	HANDLE_KILLPRIV: 1 << 19,
	POSIX_ACL: 1 << 20,
	ABORT_ERROR: 1 << 21,
	MAX_PAGES: 1 << 22,
	CACHE_SYMLINKS: 1 << 23,
	NO_OPENDIR_SUPPORT: 1 << 24,
	EXPLICIT_INVAL_DATA: 1 << 25,
	MAP_ALIGNMENT: 1 << 26,
	SUBMOUNTS: 1 << 27,
	HANDLE_KILLPRIV_V2: 1 << 28,
	SETXATTR_EXT: 1 << 29,
	INIT_EXT: 1 << 30,
	INIT_RESERVED: 2 ** 31,
} as const;

/** fuse_open_out.open_flags. */
export const Fopen = {
	DIRECT_IO: 1 << 0,
	KEEP_CACHE: 1 << 1,
	NONSEEKABLE: 1 << 2,
	CACHE_DIR: 1 << 3,
	STREAM: 1 << 4,
	NOFLUSH: 1 << 5,
} as const;

/** The Linux errno values the file system answers with. */
export const Errno = {
	EPERM: 1,
	ENOENT: 2,
	EINTR: 4,
	EIO: 5,
	EBADF: 9,
	EACCES: 13,
	ENOTDIR: 20,
	EISDIR: 21,
	EINVAL: 22,
	EROFS: 30,
	ERANGE: 34,
	ENOSYS: 38,
	ENODATA: 61,
	EPROTO: 71,
	EOPNOTSUPP: 95,
} as const;

/** File type bits (st_mode) and dirent types. */
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const DT_DIR = 4;
export const DT_REG = 8;
/** open(2) access modes. */
export const O_ACCMODE = 3;
export const O_RDONLY = 0;
/** access(2) mask bits. */
export const R_OK = 4;
export const W_OK = 2;
export const X_OK = 1;

export interface InHeader {
	/** Total length of the request, header included. */
	len: number;
	opcode: number;
	unique: bigint;
	nodeid: bigint;
	uid: number;
	gid: number;
	pid: number;
	/** Length of the extensions at the end of the request, in 8-byte units. */
	totalExtlen: number;
}

export interface InitIn {
	major: number;
	minor: number;
	maxReadahead: number;
	flags: number;
	/** Bits 32–63 of the flags (only meaningful with FUSE_INIT_EXT; 0 if absent). */
	flags2: number;
}

export interface ReadIn {
	fh: bigint;
	/** Byte offset (for READDIR: the cookie of the entry to start at). Values past 2^53 lose precision. */
	offset: number;
	size: number;
	readFlags: number;
	lockOwner: bigint;
	flags: number;
}

export interface ReleaseIn {
	fh: bigint;
	flags: number;
	releaseFlags: number;
	lockOwner: bigint;
}

/** A decoded request: the header and the arguments of the opcodes this file system handles. */
export type FuseRequest = { header: InHeader } & (
	| ({ kind: "init" } & InitIn)
	| { kind: "lookup"; name: Buffer }
	| { kind: "forget"; nlookup: bigint }
	| {
			kind: "batch-forget";
			forgets: { nodeid: bigint; nlookup: bigint }[];
	  }
	| { kind: "getattr"; getattrFlags: number; fh: bigint }
	| { kind: "open" | "opendir"; flags: number; openFlags: number }
	| ({ kind: "read" | "readdir" } & ReadIn)
	| ({ kind: "release" | "releasedir" } & ReleaseIn)
	| { kind: "flush"; fh: bigint; lockOwner: bigint }
	| { kind: "statfs" | "destroy" }
	| { kind: "interrupt"; target: bigint }
	| { kind: "access"; mask: number }
	| { kind: "getxattr"; size: number; name: Buffer }
	| { kind: "listxattr"; size: number }
	/** Any other opcode: the raw arguments. */
	| { kind: "other"; body: Buffer }
);

export interface FuseAttr {
	ino: bigint;
	size: number;
	blocks: number;
	atime: number;
	mtime: number;
	ctime: number;
	atimensec: number;
	mtimensec: number;
	ctimensec: number;
	mode: number;
	nlink: number;
	uid: number;
	gid: number;
	rdev: number;
	blksize: number;
	flags: number;
}

export interface InitOut {
	major: number;
	minor: number;
	maxReadahead: number;
	flags: number;
	maxBackground: number;
	congestionThreshold: number;
	maxWrite: number;
	timeGran: number;
	maxPages: number;
	mapAlignment: number;
	flags2: number;
	maxStackDepth: number;
	requestTimeout: number;
}

export interface EntryOut {
	nodeid: bigint;
	generation: bigint;
	entryValid: number;
	attrValid: number;
	entryValidNsec: number;
	attrValidNsec: number;
	attr: FuseAttr;
}

export interface AttrOut {
	attrValid: number;
	attrValidNsec: number;
	attr: FuseAttr;
}

export interface OpenOut {
	fh: bigint;
	openFlags: number;
	backingId: number;
}

export interface StatfsOut {
	blocks: number;
	bfree: number;
	bavail: number;
	files: number;
	ffree: number;
	bsize: number;
	namelen: number;
	frsize: number;
}

export interface Dirent {
	ino: bigint;
	/** The cookie of the entry after this one (what the next READDIR passes as offset). */
	off: number;
	type: number;
	name: Buffer;
}

export interface OutHeader {
	len: number;
	/** 0 or a negative errno. */
	error: number;
	unique: bigint;
}

// ---------------------------------------------------------------------------------------------
// helpers

function invalid(what: string): DadiError {
	return new DadiError("INPUT_INVALID", `malformed FUSE message: ${what}`);
}

function need(b: Buffer, n: number, what: string): void {
	if (b.length < n) throw invalid(`${what} needs ${n} bytes, has ${b.length}`);
}

/** A u64 as a number (exact below 2^53, rounded above: only ever compared against sizes). */
function u64n(b: Buffer, at: number): number {
	return b.readUInt32LE(at) + b.readUInt32LE(at + 4) * 0x1_0000_0000;
}

function putU64n(b: Buffer, at: number, v: number): void {
	if (!Number.isSafeInteger(v) || v < 0)
		throw new DadiError("INTERNAL", `not a u64: ${v}`);
	b.writeUInt32LE(v % 0x1_0000_0000, at);
	b.writeUInt32LE(Math.floor(v / 0x1_0000_0000), at + 4);
}

/** The bytes up to the first NUL: a C string argument. */
function cString(b: Buffer, what: string): Buffer {
	const end = b.indexOf(0);
	if (end < 0) throw invalid(`${what} is not NUL-terminated`);
	return b.subarray(0, end);
}

export function assertLittleEndian(): void {
	if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1)
		throw new DadiError(
			"INTERNAL",
			"the FUSE codec assumes a little-endian machine",
		);
}

// ---------------------------------------------------------------------------------------------
// requests (kernel → us)

export function decodeInHeader(msg: Buffer): InHeader {
	need(msg, IN_HEADER_SIZE, "fuse_in_header");
	const h: InHeader = {
		len: msg.readUInt32LE(0),
		opcode: msg.readUInt32LE(4),
		unique: msg.readBigUInt64LE(8),
		nodeid: msg.readBigUInt64LE(16),
		uid: msg.readUInt32LE(24),
		gid: msg.readUInt32LE(28),
		pid: msg.readUInt32LE(32),
		totalExtlen: msg.readUInt16LE(36),
	};
	if (h.len !== msg.length)
		throw invalid(`header says ${h.len} bytes, message has ${msg.length}`);
	if (IN_HEADER_SIZE + h.totalExtlen * 8 > h.len)
		throw invalid(
			`extensions of ${h.totalExtlen * 8} bytes do not fit in ${h.len}`,
		);
	return h;
}

export function encodeInHeader(h: Omit<InHeader, "len">, len: number): Buffer {
	const b = Buffer.alloc(IN_HEADER_SIZE);
	b.writeUInt32LE(len, 0);
	b.writeUInt32LE(h.opcode, 4);
	b.writeBigUInt64LE(h.unique, 8);
	b.writeBigUInt64LE(h.nodeid, 16);
	b.writeUInt32LE(h.uid, 24);
	b.writeUInt32LE(h.gid, 28);
	b.writeUInt32LE(h.pid, 32);
	b.writeUInt16LE(h.totalExtlen, 36);
	return b;
}

function decodeReadIn(body: Buffer, what: string): ReadIn {
	need(body, READ_IN_COMPAT_SIZE, what);
	const full = body.length >= READ_IN_SIZE;
	return {
		fh: body.readBigUInt64LE(0),
		offset: u64n(body, 8),
		size: body.readUInt32LE(16),
		readFlags: body.readUInt32LE(20),
		lockOwner: full ? body.readBigUInt64LE(24) : 0n,
		flags: full ? body.readUInt32LE(32) : 0,
	};
}

/** Decodes one request as read from /dev/fuse. Throws DadiError("INPUT_INVALID") if malformed. */
export function decodeRequest(msg: Buffer): FuseRequest {
	const header = decodeInHeader(msg);
	const body = msg.subarray(
		IN_HEADER_SIZE,
		header.len - header.totalExtlen * 8,
	);
	switch (header.opcode) {
		case Op.INIT: {
			need(body, 16, "fuse_init_in");
			return {
				header,
				kind: "init",
				major: body.readUInt32LE(0),
				minor: body.readUInt32LE(4),
				maxReadahead: body.readUInt32LE(8),
				flags: body.readUInt32LE(12),
				flags2: body.length >= 20 ? body.readUInt32LE(16) : 0,
			};
		}
		case Op.LOOKUP:
			return { header, kind: "lookup", name: cString(body, "LOOKUP name") };
		case Op.FORGET:
			need(body, 8, "fuse_forget_in");
			return { header, kind: "forget", nlookup: body.readBigUInt64LE(0) };
		case Op.BATCH_FORGET: {
			need(body, 8, "fuse_batch_forget_in");
			const count = body.readUInt32LE(0);
			need(body, 8 + count * 16, `BATCH_FORGET of ${count}`);
			const forgets: { nodeid: bigint; nlookup: bigint }[] = [];
			for (let i = 0; i < count; i++)
				forgets.push({
					nodeid: body.readBigUInt64LE(8 + i * 16),
					nlookup: body.readBigUInt64LE(16 + i * 16),
				});
			return { header, kind: "batch-forget", forgets };
		}
		case Op.GETATTR:
			// Before 7.9 GETATTR had no arguments.
			if (body.length === 0)
				return { header, kind: "getattr", getattrFlags: 0, fh: 0n };
			need(body, 16, "fuse_getattr_in");
			return {
				header,
				kind: "getattr",
				getattrFlags: body.readUInt32LE(0),
				fh: body.readBigUInt64LE(8),
			};
		case Op.OPEN:
		case Op.OPENDIR:
			need(body, 8, "fuse_open_in");
			return {
				header,
				kind: header.opcode === Op.OPEN ? "open" : "opendir",
				flags: body.readUInt32LE(0),
				openFlags: body.readUInt32LE(4),
			};
		case Op.READ:
		case Op.READDIR:
			return {
				header,
				kind: header.opcode === Op.READ ? "read" : "readdir",
				...decodeReadIn(body, "fuse_read_in"),
			};
		case Op.RELEASE:
		case Op.RELEASEDIR:
			need(body, 16, "fuse_release_in");
			return {
				header,
				kind: header.opcode === Op.RELEASE ? "release" : "releasedir",
				fh: body.readBigUInt64LE(0),
				flags: body.readUInt32LE(8),
				releaseFlags: body.readUInt32LE(12),
				lockOwner: body.length >= 24 ? body.readBigUInt64LE(16) : 0n,
			};
		case Op.FLUSH:
			need(body, 24, "fuse_flush_in");
			return {
				header,
				kind: "flush",
				fh: body.readBigUInt64LE(0),
				lockOwner: body.readBigUInt64LE(16),
			};
		case Op.STATFS:
			return { header, kind: "statfs" };
		case Op.DESTROY:
			return { header, kind: "destroy" };
		case Op.INTERRUPT:
			need(body, 8, "fuse_interrupt_in");
			return { header, kind: "interrupt", target: body.readBigUInt64LE(0) };
		case Op.ACCESS:
			need(body, 8, "fuse_access_in");
			return { header, kind: "access", mask: body.readUInt32LE(0) };
		case Op.GETXATTR:
			need(body, 8, "fuse_getxattr_in");
			return {
				header,
				kind: "getxattr",
				size: body.readUInt32LE(0),
				name: cString(body.subarray(8), "GETXATTR name"),
			};
		case Op.LISTXATTR:
			need(body, 8, "fuse_getxattr_in");
			return { header, kind: "listxattr", size: body.readUInt32LE(0) };
		default:
			return { header, kind: "other", body };
	}
}

function encodeReadIn(r: ReadIn): Buffer {
	const b = Buffer.alloc(READ_IN_SIZE);
	b.writeBigUInt64LE(r.fh, 0);
	putU64n(b, 8, r.offset);
	b.writeUInt32LE(r.size, 16);
	b.writeUInt32LE(r.readFlags, 20);
	b.writeBigUInt64LE(r.lockOwner, 24);
	b.writeUInt32LE(r.flags, 32);
	return b;
}

const cstr = (name: Buffer) => Buffer.concat([name, Buffer.alloc(1)]);

/** The opcode of a request kind ("other" keeps the header's). */
function opcodeOf(r: FuseRequest): number {
	switch (r.kind) {
		case "init":
			return Op.INIT;
		case "lookup":
			return Op.LOOKUP;
		case "forget":
			return Op.FORGET;
		case "batch-forget":
			return Op.BATCH_FORGET;
		case "getattr":
			return Op.GETATTR;
		case "open":
			return Op.OPEN;
		case "opendir":
			return Op.OPENDIR;
		case "read":
			return Op.READ;
		case "readdir":
			return Op.READDIR;
		case "release":
			return Op.RELEASE;
		case "releasedir":
			return Op.RELEASEDIR;
		case "flush":
			return Op.FLUSH;
		case "statfs":
			return Op.STATFS;
		case "destroy":
			return Op.DESTROY;
		case "interrupt":
			return Op.INTERRUPT;
		case "access":
			return Op.ACCESS;
		case "getxattr":
			return Op.GETXATTR;
		case "listxattr":
			return Op.LISTXATTR;
		case "other":
			return r.header.opcode;
	}
}

/**
 * Encodes a request the way the kernel sends it (current layouts; no extensions): the inverse of
 * decodeRequest, for tests and tools. `header.len`, `header.opcode` and `header.totalExtlen`
 * are derived.
 */
export function encodeRequest(r: FuseRequest): Buffer {
	let body: Buffer;
	switch (r.kind) {
		case "init":
			body = Buffer.alloc(INIT_IN_SIZE);
			body.writeUInt32LE(r.major, 0);
			body.writeUInt32LE(r.minor, 4);
			body.writeUInt32LE(r.maxReadahead, 8);
			body.writeUInt32LE(r.flags >>> 0, 12);
			body.writeUInt32LE(r.flags2 >>> 0, 16);
			break;
		case "lookup":
			body = cstr(r.name);
			break;
		case "forget":
			body = Buffer.alloc(8);
			body.writeBigUInt64LE(r.nlookup, 0);
			break;
		case "batch-forget":
			body = Buffer.alloc(8 + r.forgets.length * 16);
			body.writeUInt32LE(r.forgets.length, 0);
			r.forgets.forEach((f, i) => {
				body.writeBigUInt64LE(f.nodeid, 8 + i * 16);
				body.writeBigUInt64LE(f.nlookup, 16 + i * 16);
			});
			break;
		case "getattr":
			body = Buffer.alloc(16);
			body.writeUInt32LE(r.getattrFlags, 0);
			body.writeBigUInt64LE(r.fh, 8);
			break;
		case "open":
		case "opendir":
			body = Buffer.alloc(8);
			body.writeUInt32LE(r.flags >>> 0, 0);
			body.writeUInt32LE(r.openFlags >>> 0, 4);
			break;
		case "read":
		case "readdir":
			body = encodeReadIn(r);
			break;
		case "release":
		case "releasedir":
			body = Buffer.alloc(24);
			body.writeBigUInt64LE(r.fh, 0);
			body.writeUInt32LE(r.flags >>> 0, 8);
			body.writeUInt32LE(r.releaseFlags >>> 0, 12);
			body.writeBigUInt64LE(r.lockOwner, 16);
			break;
		case "flush":
			body = Buffer.alloc(24);
			body.writeBigUInt64LE(r.fh, 0);
			body.writeBigUInt64LE(r.lockOwner, 16);
			break;
		case "statfs":
		case "destroy":
			body = Buffer.alloc(0);
			break;
		case "interrupt":
			body = Buffer.alloc(8);
			body.writeBigUInt64LE(r.target, 0);
			break;
		case "access":
			body = Buffer.alloc(8);
			body.writeUInt32LE(r.mask >>> 0, 0);
			break;
		case "getxattr":
			body = Buffer.concat([Buffer.alloc(8), cstr(r.name)]);
			body.writeUInt32LE(r.size >>> 0, 0);
			break;
		case "listxattr":
			body = Buffer.alloc(8);
			body.writeUInt32LE(r.size >>> 0, 0);
			break;
		case "other":
			body = r.body;
			break;
	}
	const len = IN_HEADER_SIZE + body.length;
	return Buffer.concat([
		encodeInHeader({ ...r.header, opcode: opcodeOf(r), totalExtlen: 0 }, len),
		body,
	]);
}

// ---------------------------------------------------------------------------------------------
// replies (us → kernel)

export function encodeOutHeader(
	len: number,
	error: number,
	unique: bigint,
): Buffer {
	const b = Buffer.allocUnsafe(OUT_HEADER_SIZE);
	b.writeUInt32LE(len, 0);
	b.writeInt32LE(error, 4);
	b.writeBigUInt64LE(unique, 8);
	return b;
}

export function decodeOutHeader(msg: Buffer): OutHeader {
	need(msg, OUT_HEADER_SIZE, "fuse_out_header");
	const h = {
		len: msg.readUInt32LE(0),
		error: msg.readInt32LE(4),
		unique: msg.readBigUInt64LE(8),
	};
	if (h.len !== msg.length)
		throw invalid(`reply header says ${h.len} bytes, reply has ${msg.length}`);
	return h;
}

/** An error reply: the out-header alone, with -errno. */
export function encodeError(unique: bigint, errno: number): Buffer {
	return encodeOutHeader(OUT_HEADER_SIZE, -errno, unique);
}

/** A successful reply with `payload` as its arguments. */
export function encodeReply(unique: bigint, payload: Buffer): Buffer {
	const b = Buffer.allocUnsafe(OUT_HEADER_SIZE + payload.length);
	b.writeUInt32LE(b.length, 0);
	b.writeInt32LE(0, 4);
	b.writeBigUInt64LE(unique, 8);
	payload.copy(b, OUT_HEADER_SIZE);
	return b;
}

function writeAttr(b: Buffer, at: number, a: FuseAttr): void {
	b.writeBigUInt64LE(a.ino, at);
	putU64n(b, at + 8, a.size);
	putU64n(b, at + 16, a.blocks);
	putU64n(b, at + 24, a.atime);
	putU64n(b, at + 32, a.mtime);
	putU64n(b, at + 40, a.ctime);
	b.writeUInt32LE(a.atimensec, at + 48);
	b.writeUInt32LE(a.mtimensec, at + 52);
	b.writeUInt32LE(a.ctimensec, at + 56);
	b.writeUInt32LE(a.mode, at + 60);
	b.writeUInt32LE(a.nlink, at + 64);
	b.writeUInt32LE(a.uid, at + 68);
	b.writeUInt32LE(a.gid, at + 72);
	b.writeUInt32LE(a.rdev, at + 76);
	b.writeUInt32LE(a.blksize, at + 80);
	b.writeUInt32LE(a.flags, at + 84);
}

function readAttr(b: Buffer, at: number): FuseAttr {
	need(b, at + ATTR_SIZE, "fuse_attr");
	return {
		ino: b.readBigUInt64LE(at),
		size: u64n(b, at + 8),
		blocks: u64n(b, at + 16),
		atime: u64n(b, at + 24),
		mtime: u64n(b, at + 32),
		ctime: u64n(b, at + 40),
		atimensec: b.readUInt32LE(at + 48),
		mtimensec: b.readUInt32LE(at + 52),
		ctimensec: b.readUInt32LE(at + 56),
		mode: b.readUInt32LE(at + 60),
		nlink: b.readUInt32LE(at + 64),
		uid: b.readUInt32LE(at + 68),
		gid: b.readUInt32LE(at + 72),
		rdev: b.readUInt32LE(at + 76),
		blksize: b.readUInt32LE(at + 80),
		flags: b.readUInt32LE(at + 84),
	};
}

/** fuse_init_out, cut to what a kernel of negotiated minor `o.minor` expects. */
export function encodeInitOut(o: InitOut): Buffer {
	const b = Buffer.alloc(INIT_OUT_SIZE);
	b.writeUInt32LE(o.major, 0);
	b.writeUInt32LE(o.minor, 4);
	b.writeUInt32LE(o.maxReadahead, 8);
	b.writeUInt32LE(o.flags >>> 0, 12);
	b.writeUInt16LE(o.maxBackground, 16);
	b.writeUInt16LE(o.congestionThreshold, 18);
	b.writeUInt32LE(o.maxWrite, 20);
	b.writeUInt32LE(o.timeGran, 24);
	b.writeUInt16LE(o.maxPages, 28);
	b.writeUInt16LE(o.mapAlignment, 30);
	b.writeUInt32LE(o.flags2 >>> 0, 32);
	b.writeUInt32LE(o.maxStackDepth, 36);
	b.writeUInt16LE(o.requestTimeout, 40);
	if (o.major === FUSE_KERNEL_VERSION && o.minor < 23)
		return b.subarray(0, o.minor < 5 ? 8 : INIT_OUT_COMPAT_22_SIZE);
	return b;
}

export function decodeInitOut(b: Buffer): InitOut {
	need(b, 8, "fuse_init_out");
	const at = (n: number, read: (o: number) => number, o: number) =>
		b.length >= n ? read(o) : 0;
	const u32 = (o: number) => b.readUInt32LE(o);
	const u16 = (o: number) => b.readUInt16LE(o);
	return {
		major: u32(0),
		minor: u32(4),
		maxReadahead: at(12, u32, 8),
		flags: at(16, u32, 12),
		maxBackground: at(18, u16, 16),
		congestionThreshold: at(20, u16, 18),
		maxWrite: at(24, u32, 20),
		timeGran: at(28, u32, 24),
		maxPages: at(30, u16, 28),
		mapAlignment: at(32, u16, 30),
		flags2: at(36, u32, 32),
		maxStackDepth: at(40, u32, 36),
		requestTimeout: at(42, u16, 40),
	};
}

export function encodeEntryOut(e: EntryOut): Buffer {
	const b = Buffer.alloc(ENTRY_OUT_SIZE);
	b.writeBigUInt64LE(e.nodeid, 0);
	b.writeBigUInt64LE(e.generation, 8);
	putU64n(b, 16, e.entryValid);
	putU64n(b, 24, e.attrValid);
	b.writeUInt32LE(e.entryValidNsec, 32);
	b.writeUInt32LE(e.attrValidNsec, 36);
	writeAttr(b, 40, e.attr);
	return b;
}

export function decodeEntryOut(b: Buffer): EntryOut {
	need(b, ENTRY_OUT_SIZE, "fuse_entry_out");
	return {
		nodeid: b.readBigUInt64LE(0),
		generation: b.readBigUInt64LE(8),
		entryValid: u64n(b, 16),
		attrValid: u64n(b, 24),
		entryValidNsec: b.readUInt32LE(32),
		attrValidNsec: b.readUInt32LE(36),
		attr: readAttr(b, 40),
	};
}

export function encodeAttrOut(a: AttrOut): Buffer {
	const b = Buffer.alloc(ATTR_OUT_SIZE);
	putU64n(b, 0, a.attrValid);
	b.writeUInt32LE(a.attrValidNsec, 8);
	writeAttr(b, 16, a.attr);
	return b;
}

export function decodeAttrOut(b: Buffer): AttrOut {
	need(b, ATTR_OUT_SIZE, "fuse_attr_out");
	return {
		attrValid: u64n(b, 0),
		attrValidNsec: b.readUInt32LE(8),
		attr: readAttr(b, 16),
	};
}

export function encodeOpenOut(o: OpenOut): Buffer {
	const b = Buffer.alloc(OPEN_OUT_SIZE);
	b.writeBigUInt64LE(o.fh, 0);
	b.writeUInt32LE(o.openFlags >>> 0, 8);
	b.writeInt32LE(o.backingId, 12);
	return b;
}

export function decodeOpenOut(b: Buffer): OpenOut {
	need(b, OPEN_OUT_SIZE, "fuse_open_out");
	return {
		fh: b.readBigUInt64LE(0),
		openFlags: b.readUInt32LE(8),
		backingId: b.readInt32LE(12),
	};
}

export function encodeStatfsOut(s: StatfsOut): Buffer {
	const b = Buffer.alloc(STATFS_OUT_SIZE);
	putU64n(b, 0, s.blocks);
	putU64n(b, 8, s.bfree);
	putU64n(b, 16, s.bavail);
	putU64n(b, 24, s.files);
	putU64n(b, 32, s.ffree);
	b.writeUInt32LE(s.bsize, 40);
	b.writeUInt32LE(s.namelen, 44);
	b.writeUInt32LE(s.frsize, 48);
	return b;
}

export function decodeStatfsOut(b: Buffer): StatfsOut {
	need(b, STATFS_OUT_SIZE, "fuse_statfs_out");
	return {
		blocks: u64n(b, 0),
		bfree: u64n(b, 8),
		bavail: u64n(b, 16),
		files: u64n(b, 24),
		ffree: u64n(b, 32),
		bsize: b.readUInt32LE(40),
		namelen: b.readUInt32LE(44),
		frsize: b.readUInt32LE(48),
	};
}

/** The size of one fuse_dirent record for a name of `nameLength` bytes, padding included. */
export function direntSize(nameLength: number): number {
	return (DIRENT_HEADER_SIZE + nameLength + 7) & ~7;
}

/** Packs directory entries back to back (READDIR's reply); the caller keeps within the size asked. */
export function encodeDirents(entries: readonly Dirent[]): Buffer {
	let total = 0;
	for (const e of entries) total += direntSize(e.name.length);
	const b = Buffer.alloc(total);
	let at = 0;
	for (const e of entries) {
		b.writeBigUInt64LE(e.ino, at);
		putU64n(b, at + 8, e.off);
		b.writeUInt32LE(e.name.length, at + 16);
		b.writeUInt32LE(e.type, at + 20);
		e.name.copy(b, at + DIRENT_HEADER_SIZE);
		at += direntSize(e.name.length);
	}
	return b;
}

export function decodeDirents(b: Buffer): Dirent[] {
	const out: Dirent[] = [];
	let at = 0;
	while (at < b.length) {
		need(b, at + DIRENT_HEADER_SIZE, "fuse_dirent");
		const namelen = b.readUInt32LE(at + 16);
		if (namelen > 4096) throw invalid(`dirent name of ${namelen} bytes`);
		need(b, at + direntSize(namelen), "fuse_dirent name");
		out.push({
			ino: b.readBigUInt64LE(at),
			off: u64n(b, at + 8),
			type: b.readUInt32LE(at + 20),
			name: Buffer.from(
				b.subarray(at + DIRENT_HEADER_SIZE, at + DIRENT_HEADER_SIZE + namelen),
			),
		});
		at += direntSize(namelen);
	}
	return out;
}

/** The opcode's name, for log lines ("opcode 99" if unknown). */
export function opName(opcode: number): string {
	for (const [name, code] of Object.entries(Op))
		if (code === opcode) return name;
	return `opcode ${opcode}`;
}
