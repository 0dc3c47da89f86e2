/**
 * The file system itself, free of I/O: one read-only root directory holding one read-only regular
 * file whose bytes come from a BlockSource. `handle` takes one request as read from /dev/fuse and
 * gives the reply to write back (an iovec: header and data, written with one writev), nothing
 * (FORGET and friends), or a promise of either (READ, which asks the source). Tests drive it with
 * encoded requests; the server (server.ts) drives it with the kernel's.
 *
 * Nodes: 1 is the root directory (mode 0555), 2 the file (mode 0444, size = source size). Nothing
 * changes while mounted, so the kernel may cache names, attributes and data for long: long entry
 * and attribute timeouts, FOPEN_KEEP_CACHE on open.
 *
 * Answer order for a request: before INIT everything is EIO; an opcode we do not implement is
 * ENOSYS (whatever its node); a node other than 1 and 2 is ENOENT; then the operation's own rules.
 */
import { performance } from "node:perf_hooks";
import { DadiError } from "../../errors.js";
import type { BlockSource } from "../block-source.js";
import {
	type Dirent,
	DT_DIR,
	DT_REG,
	decodeInHeader,
	decodeRequest,
	direntSize,
	Errno,
	encodeAttrOut,
	encodeDirents,
	encodeEntryOut,
	encodeError,
	encodeInitOut,
	encodeOpenOut,
	encodeOutHeader,
	encodeReply,
	encodeStatfsOut,
	Fopen,
	FUSE_KERNEL_VERSION,
	FUSE_MIN_MINOR,
	FUSE_OUR_MINOR,
	FUSE_ROOT_ID,
	type FuseAttr,
	type FuseRequest,
	InitFlag,
	type InitIn,
	O_ACCMODE,
	O_RDONLY,
	Op,
	OUT_HEADER_SIZE,
	opName,
	S_IFDIR,
	S_IFREG,
	W_OK,
	X_OK,
} from "./abi.js";

export const ROOT_NODE = FUSE_ROOT_ID;
export const FILE_NODE = 2n;

/** How long the kernel may cache names and attributes (seconds): they never change. */
export const CACHE_SECONDS = 24 * 3600;
export const DEFAULT_MAX_READ = 1 << 20;
const PAGE = 4096;
/** A READ larger than this is refused (EINVAL), never answered short (short means EOF). */
const READ_SIZE_LIMIT = 64 << 20;
const O_TRUNC = 0o1000;

/** The iovec of one reply: written with a single writev. */
export type Reply = Buffer[];
export type HandleResult = Reply | undefined | Promise<Reply | undefined>;

export interface FuseHandlerOptions {
	source: BlockSource;
	/** The file's name in the root directory (default "disk"). */
	fileName?: string;
	/** The largest READ the kernel should send, negotiated in INIT as max_pages (default 1 MiB). */
	maxRead?: number;
	/** Seconds since the epoch for every timestamp (default: when the handler was made). */
	time?: number;
	uid?: number;
	gid?: number;
	log?: (line: string) => void;
	onRead?: (bytes: number, ms: number, ok: boolean) => void;
}

/** What INIT settled. */
export interface Negotiated {
	kernelMinor: number;
	kernelFlags: number;
	kernelMaxReadahead: number;
	minor: number;
	flags: number;
	maxReadahead: number;
	/** 0 if the kernel did not take FUSE_MAX_PAGES (its default of 32 pages applies then). */
	maxPages: number;
}

export interface FuseStats {
	/** Requests handled (well-formed or not). */
	requests: number;
	/** READs of the file. */
	reads: number;
	/** Bytes answered to READs. */
	bytesRead: number;
	/** READs that failed (EIO) and messages that were malformed. */
	errors: number;
}

interface PendingRead {
	answered: boolean;
	done?: Promise<Reply | undefined>;
}

/** The flags we take when the kernel offers them; each is something this file system handles. */
const WANTED_FLAGS =
	InitFlag.ASYNC_READ | // several READs of one file in flight (readahead in parallel)
	InitFlag.ASYNC_DIO | // O_DIRECT reads split into parallel requests
	InitFlag.PARALLEL_DIROPS | // LOOKUP/READDIR need no serialising here
	InitFlag.MAX_PAGES; // READs up to max_pages pages instead of 32

export function describeError(e: unknown): string {
	if (e instanceof DadiError) return `${e.code}: ${e.message}`;
	if (e instanceof Error) return e.message;
	return String(e);
}

function checkFileName(name: string): Buffer {
	const b = Buffer.from(name, "utf8");
	if (
		b.length === 0 ||
		b.length > 255 ||
		name === "." ||
		name === ".." ||
		name.includes("/") ||
		name.includes("\0")
	)
		throw new DadiError(
			"USAGE",
			`not a usable file name: ${JSON.stringify(name)}`,
		);
	return b;
}

export class FuseHandler {
	readonly stats: FuseStats = {
		requests: 0,
		reads: 0,
		bytesRead: 0,
		errors: 0,
	};
	readonly fileName: string;
	readonly maxRead: number;
	private readonly source: BlockSource;
	private readonly nameBytes: Buffer;
	private readonly time: number;
	private readonly uid: number;
	private readonly gid: number;
	private readonly log: (line: string) => void;
	private readonly onRead?: (bytes: number, ms: number, ok: boolean) => void;
	private readonly pending = new Map<bigint, PendingRead>();
	private nextFh = 1n;
	private init: Negotiated | undefined;
	private destroyedFlag = false;

	constructor(o: FuseHandlerOptions) {
		if (!Number.isSafeInteger(o.source.size) || o.source.size < 0)
			throw new DadiError(
				"USAGE",
				`the source's size is not a byte count: ${o.source.size}`,
			);
		const maxRead = o.maxRead ?? DEFAULT_MAX_READ;
		if (!Number.isSafeInteger(maxRead) || maxRead < PAGE || maxRead > 16 << 20)
			throw new DadiError(
				"USAGE",
				`maxRead must be between 4 KiB and 16 MiB, not ${maxRead}`,
			);
		this.source = o.source;
		this.fileName = o.fileName ?? "disk";
		this.nameBytes = checkFileName(this.fileName);
		this.maxRead = maxRead;
		this.time = Math.floor(o.time ?? Date.now() / 1000);
		this.uid = o.uid ?? 0;
		this.gid = o.gid ?? 0;
		this.log = o.log ?? (() => {});
		this.onRead = o.onRead;
	}

	/** What INIT settled, once it has. */
	get negotiated(): Negotiated | undefined {
		return this.init;
	}

	/** Whether the kernel sent DESTROY. */
	get destroyed(): boolean {
		return this.destroyedFlag;
	}

	/** READs asked of the source and not answered yet. */
	get inFlight(): number {
		return this.pending.size;
	}

	/** Resolves when every READ now in flight has been answered (or given up). */
	async idle(): Promise<void> {
		await Promise.allSettled(
			[...this.pending.values()].map((p) => p.done ?? Promise.resolve()),
		);
	}

	/**
	 * Answers every READ still waiting for the source with `errno` (for shutdown); their source
	 * reads, when they finish, are dropped.
	 */
	failPending(errno: number = Errno.EIO): Reply[] {
		const out: Reply[] = [];
		for (const [unique, p] of this.pending) {
			if (p.answered) continue;
			p.answered = true;
			out.push([encodeError(unique, errno)]);
		}
		this.pending.clear();
		return out;
	}

	/**
	 * One request in, its reply out. Throws DadiError("INPUT_INVALID") only when the message is too
	 * malformed to know whom to answer (no readable header); a readable header with bad arguments
	 * is answered EINVAL.
	 */
	handle(msg: Buffer): HandleResult {
		this.stats.requests++;
		let header: ReturnType<typeof decodeInHeader>;
		try {
			header = decodeInHeader(msg);
		} catch (e) {
			this.stats.errors++;
			throw e;
		}
		const unique = header.unique;
		const noReply =
			header.opcode === Op.FORGET ||
			header.opcode === Op.BATCH_FORGET ||
			header.opcode === Op.INTERRUPT ||
			header.opcode === Op.NOTIFY_REPLY;
		if (unique === 0n) {
			// A reply with unique 0 would be read as a notification; the kernel never sends it.
			this.stats.errors++;
			this.log(`fuse: dropped ${opName(header.opcode)} with unique 0`);
			return undefined;
		}
		let r: FuseRequest;
		try {
			r = decodeRequest(msg);
		} catch (e) {
			this.stats.errors++;
			this.log(`fuse: ${opName(header.opcode)}: ${describeError(e)}`);
			return noReply ? undefined : [encodeError(unique, Errno.EINVAL)];
		}
		if (r.kind === "init") return [this.answerInit(unique, r)];
		if (this.init === undefined)
			return noReply ? undefined : [encodeError(unique, Errno.EIO)];
		return this.dispatch(r);
	}

	private dispatch(r: FuseRequest): HandleResult {
		const unique = r.header.unique;
		const node = r.header.nodeid;
		const err = (errno: number): Reply => [encodeError(unique, errno)];
		const ok = (payload?: Buffer): Reply => [
			payload
				? encodeReply(unique, payload)
				: encodeOutHeader(OUT_HEADER_SIZE, 0, unique),
		];
		switch (r.kind) {
			case "forget":
			case "batch-forget":
				return undefined; // nodes are static: nothing to count down
			case "interrupt":
				return this.interrupt(r.target);
			case "destroy":
				this.destroyedFlag = true;
				return ok();
			case "other":
				return r.header.opcode === Op.NOTIFY_REPLY
					? undefined
					: err(Errno.ENOSYS);
			default:
				break;
		}
		if (node !== ROOT_NODE && node !== FILE_NODE) return err(Errno.ENOENT);
		const isRoot = node === ROOT_NODE;
		switch (r.kind) {
			case "lookup":
				if (!isRoot) return err(Errno.ENOTDIR);
				if (!r.name.equals(this.nameBytes)) return err(Errno.ENOENT);
				return ok(
					encodeEntryOut({
						nodeid: FILE_NODE,
						generation: 1n,
						entryValid: CACHE_SECONDS,
						attrValid: CACHE_SECONDS,
						entryValidNsec: 0,
						attrValidNsec: 0,
						attr: this.attr(FILE_NODE),
					}),
				);
			case "getattr":
				return ok(
					encodeAttrOut({
						attrValid: CACHE_SECONDS,
						attrValidNsec: 0,
						attr: this.attr(node),
					}),
				);
			case "open": {
				if (isRoot) return err(Errno.EISDIR);
				if ((r.flags & O_ACCMODE) !== O_RDONLY || r.flags & O_TRUNC)
					return err(Errno.EROFS);
				const minor = this.init?.minor ?? 0;
				return ok(
					encodeOpenOut({
						fh: this.nextFh++,
						// The content never changes: keep the page cache across opens; and there is
						// nothing to flush on close, so skip FLUSH (7.35+).
						openFlags: Fopen.KEEP_CACHE | (minor >= 35 ? Fopen.NOFLUSH : 0),
						backingId: 0,
					}),
				);
			}
			case "opendir": {
				if (!isRoot) return err(Errno.ENOTDIR);
				const minor = this.init?.minor ?? 0;
				return ok(
					encodeOpenOut({
						fh: this.nextFh++,
						openFlags: Fopen.KEEP_CACHE | (minor >= 28 ? Fopen.CACHE_DIR : 0),
						backingId: 0,
					}),
				);
			}
			case "read":
				if (isRoot) return err(Errno.EISDIR);
				return this.read(unique, r.offset, r.size);
			case "readdir":
				if (!isRoot) return err(Errno.ENOTDIR);
				return ok(this.readdir(r.offset, r.size));
			case "release":
			case "releasedir":
			case "flush":
				return ok();
			case "statfs":
				return ok(
					encodeStatfsOut({
						blocks: Math.ceil(this.source.size / PAGE),
						bfree: 0,
						bavail: 0,
						files: 2,
						ffree: 0,
						bsize: PAGE,
						namelen: 255,
						frsize: PAGE,
					}),
				);
			case "access":
				if (r.mask & W_OK) return err(Errno.EROFS);
				if (!isRoot && r.mask & X_OK) return err(Errno.EACCES);
				return ok();
			case "getxattr":
			case "listxattr":
				// ENOSYS: the kernel remembers and stops asking (callers see EOPNOTSUPP).
				return err(Errno.ENOSYS);
			default:
				return err(Errno.ENOSYS);
		}
	}

	private answerInit(unique: bigint, r: InitIn): Buffer {
		if (r.major > FUSE_KERNEL_VERSION) {
			// A newer major: answer with ours and the kernel sends INIT again in our major.
			return encodeReply(
				unique,
				encodeInitOut({
					major: FUSE_KERNEL_VERSION,
					minor: FUSE_OUR_MINOR,
					maxReadahead: 0,
					flags: 0,
					maxBackground: 0,
					congestionThreshold: 0,
					maxWrite: 0,
					timeGran: 0,
					maxPages: 0,
					mapAlignment: 0,
					flags2: 0,
					maxStackDepth: 0,
					requestTimeout: 0,
				}),
			);
		}
		if (
			this.init !== undefined ||
			r.major < FUSE_KERNEL_VERSION ||
			r.minor < FUSE_MIN_MINOR
		) {
			this.log(
				this.init
					? "fuse: a second INIT, refused"
					: `fuse: the kernel speaks FUSE ${r.major}.${r.minor}, we need ${FUSE_KERNEL_VERSION}.${FUSE_MIN_MINOR} or later`,
			);
			return encodeError(unique, Errno.EPROTO);
		}
		const minor = Math.min(r.minor, FUSE_OUR_MINOR);
		const flags = (r.flags & WANTED_FLAGS) >>> 0;
		const maxPages =
			flags & InitFlag.MAX_PAGES ? Math.ceil(this.maxRead / PAGE) : 0;
		const maxReadahead = Math.min(r.maxReadahead, this.maxRead);
		this.init = {
			kernelMinor: r.minor,
			kernelFlags: r.flags,
			kernelMaxReadahead: r.maxReadahead,
			minor,
			flags,
			maxReadahead,
			maxPages,
		};
		return encodeReply(
			unique,
			encodeInitOut({
				major: FUSE_KERNEL_VERSION,
				minor,
				maxReadahead,
				flags,
				// Background requests are readahead READs: allow more of them in flight than the
				// kernel's default of 12, for sources with latency (remote chunks).
				maxBackground: 64,
				congestionThreshold: 48,
				maxWrite: PAGE, // never written to; 4 KiB is the kernel's minimum
				timeGran: 1,
				maxPages,
				mapAlignment: 0,
				flags2: 0,
				maxStackDepth: 0,
				requestTimeout: 0,
			}),
		);
	}

	private attr(node: bigint): FuseAttr {
		const t = this.time;
		const common = {
			ino: node,
			atime: t,
			mtime: t,
			ctime: t,
			atimensec: 0,
			mtimensec: 0,
			ctimensec: 0,
			uid: this.uid,
			gid: this.gid,
			rdev: 0,
			blksize: PAGE,
			flags: 0,
		};
		if (node === ROOT_NODE)
			return {
				...common,
				size: 0,
				blocks: 0,
				mode: S_IFDIR | 0o555,
				nlink: 2,
			};
		const size = this.source.size;
		return {
			...common,
			size,
			blocks: Math.ceil(size / 512),
			mode: S_IFREG | 0o444,
			nlink: 1,
		};
	}

	private readdir(offset: number, size: number): Buffer {
		const all: Dirent[] = [
			{ ino: ROOT_NODE, off: 1, type: DT_DIR, name: Buffer.from(".") },
			{ ino: ROOT_NODE, off: 2, type: DT_DIR, name: Buffer.from("..") },
			{ ino: FILE_NODE, off: 3, type: DT_REG, name: this.nameBytes },
		];
		const out: Dirent[] = [];
		let used = 0;
		for (let i = offset; i < all.length; i++) {
			const e = all[i] as Dirent;
			const n = direntSize(e.name.length);
			if (used + n > size) break;
			used += n;
			out.push(e);
		}
		return encodeDirents(out);
	}

	/**
	 * INTERRUPT: the caller of `target` got a signal. Answer the READ with EINTR if it still waits
	 * for the source. (With ASYNC_READ and ASYNC_DIO most READs travel as background requests, which
	 * the kernel never interrupts; synchronous ones — read_folio after a failed readahead — can be.)
	 * Everything else is answered at once, so there is nothing else to interrupt.
	 */
	private interrupt(target: bigint): HandleResult {
		const p = this.pending.get(target);
		if (p === undefined || p.answered) return undefined; // done already: nothing to do
		p.answered = true;
		this.pending.delete(target);
		return [encodeError(target, Errno.EINTR)];
	}

	private read(unique: bigint, offset: number, size: number): HandleResult {
		this.stats.reads++;
		if (size > READ_SIZE_LIMIT) {
			this.stats.errors++;
			this.log(
				`fuse: READ of ${size} bytes refused (limit ${READ_SIZE_LIMIT})`,
			);
			return [encodeError(unique, Errno.EINVAL)];
		}
		const total = this.source.size;
		if (size === 0 || offset >= total)
			return [encodeOutHeader(OUT_HEADER_SIZE, 0, unique)]; // EOF: an empty reply
		const length = Math.min(size, total - offset);
		const started = performance.now();
		let p: Promise<Buffer>;
		try {
			p = this.source.read(offset, length);
		} catch (e) {
			p = Promise.reject(e);
		}
		const entry: PendingRead = { answered: false };
		this.pending.set(unique, entry);
		entry.done = this.finishRead(unique, offset, length, started, p, entry);
		return entry.done;
	}

	private async finishRead(
		unique: bigint,
		offset: number,
		length: number,
		started: number,
		p: Promise<Buffer>,
		entry: PendingRead,
	): Promise<Reply | undefined> {
		let reply: Reply;
		let ok = true;
		try {
			const data = await p;
			if (!Buffer.isBuffer(data) || data.length < length)
				throw new DadiError(
					"INTERNAL",
					`the source returned ${Buffer.isBuffer(data) ? data.length : typeof data} bytes for ${length}`,
				);
			const body = data.length === length ? data : data.subarray(0, length);
			reply = [encodeOutHeader(OUT_HEADER_SIZE + length, 0, unique), body];
			this.stats.bytesRead += length;
		} catch (e) {
			ok = false;
			this.stats.errors++;
			this.log(
				`fuse: READ of ${length} bytes at offset ${offset} failed, answered EIO: ${describeError(e)}`,
			);
			reply = [encodeError(unique, Errno.EIO)];
		}
		try {
			this.onRead?.(ok ? length : 0, performance.now() - started, ok);
		} catch {
			// an observer's failure is not the reader's
		}
		if (this.pending.get(unique) === entry) this.pending.delete(unique);
		if (entry.answered) return undefined; // interrupted or failed at shutdown meanwhile
		entry.answered = true;
		return reply;
	}
}
