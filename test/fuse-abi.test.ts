/** The FUSE codec and the file system's request handler, driven without a kernel. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import type { BlockSource } from "../src/guest/block-source.js";
import {
	ATTR_OUT_SIZE,
	decodeAttrOut,
	decodeDirents,
	decodeEntryOut,
	decodeInHeader,
	decodeInitOut,
	decodeOpenOut,
	decodeOutHeader,
	decodeRequest,
	decodeStatfsOut,
	ENTRY_OUT_SIZE,
	Errno,
	encodeAttrOut,
	encodeDirents,
	encodeEntryOut,
	encodeInitOut,
	encodeOpenOut,
	encodeRequest,
	encodeStatfsOut,
	Fopen,
	type FuseAttr,
	type FuseRequest,
	IN_HEADER_SIZE,
	type InHeader,
	InitFlag,
	type InitOut,
	Op,
	OUT_HEADER_SIZE,
	S_IFDIR,
	S_IFREG,
} from "../src/guest/fuse/abi.js";
import {
	FILE_NODE,
	FuseHandler,
	type FuseHandlerOptions,
	ROOT_NODE,
} from "../src/guest/fuse/handler.js";
import { prng, thrown } from "./helpers.js";

// ------------------------------------------------------------------------------------------
// helpers

let nextUnique = 100n;
function hdr(nodeid: bigint = ROOT_NODE, unique?: bigint): InHeader {
	nextUnique += 2n;
	return {
		len: 0,
		opcode: 0,
		unique: unique ?? nextUnique,
		nodeid,
		uid: 0,
		gid: 0,
		pid: 1234,
		totalExtlen: 0,
	};
}

/** Distributes the request kinds over one type, for building requests in tests. */
type Req = FuseRequest extends infer R
	? R extends FuseRequest
		? Omit<R, "header"> & { header?: InHeader }
		: never
	: never;

function msg(r: Req, nodeid: bigint = ROOT_NODE): Buffer {
	return encodeRequest({ header: hdr(nodeid), ...r } as FuseRequest);
}

function bufferSource(data: Buffer): BlockSource {
	return {
		size: data.length,
		read: async (o, l) => data.subarray(o, o + l),
	};
}

interface Answer {
	error: number;
	unique: bigint;
	body: Buffer;
}

async function ask(h: FuseHandler, m: Buffer): Promise<Answer | undefined> {
	const r = await h.handle(m);
	if (r === undefined) return undefined;
	const all = Buffer.concat(r);
	const head = decodeOutHeader(all);
	return {
		error: head.error,
		unique: head.unique,
		body: all.subarray(OUT_HEADER_SIZE),
	};
}

/** The INIT a Linux 6.18 kernel (FUSE 7.45) sent on this machine, byte for byte. */
const KERNEL_INIT = Buffer.from(
	"680000001a0000000200000000000000000000000000000000000000000000000000000000000000" +
		"070000002d00000000000200fbffff73fd050000000000000000000000000000" +
		"0000000000000000000000000000000000000000000000000000000000000000",
	"hex",
);

const DATA = prng("fuse-abi", 1 << 20);

async function ready(
	o: Partial<FuseHandlerOptions> = {},
): Promise<FuseHandler> {
	const h = new FuseHandler({
		source: bufferSource(DATA),
		time: 1_700_000_000,
		...o,
	});
	const a = await ask(h, KERNEL_INIT);
	expect(a?.error).toBe(0);
	return h;
}

// ------------------------------------------------------------------------------------------
// arbitraries

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const safe = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
const name = fc
	.uint8Array({ minLength: 1, maxLength: 64 })
	.map((a) => Buffer.from(a.map((x) => x || 1)));
const header = fc.record({
	len: fc.constant(0),
	opcode: fc.constant(0),
	unique: u64,
	nodeid: u64,
	uid: u32,
	gid: u32,
	pid: u32,
	totalExtlen: fc.constant(0),
});
const readIn = {
	fh: u64,
	offset: safe,
	size: u32,
	readFlags: u32,
	lockOwner: u64,
	flags: u32,
};
const request: fc.Arbitrary<FuseRequest> = fc.oneof(
	fc.record({
		header,
		kind: fc.constant("init" as const),
		major: u32,
		minor: u32,
		maxReadahead: u32,
		flags: u32,
		flags2: u32,
	}),
	fc.record({ header, kind: fc.constant("lookup" as const), name }),
	fc.record({ header, kind: fc.constant("forget" as const), nlookup: u64 }),
	fc.record({
		header,
		kind: fc.constant("batch-forget" as const),
		forgets: fc.array(fc.record({ nodeid: u64, nlookup: u64 }), {
			maxLength: 8,
		}),
	}),
	fc.record({
		header,
		kind: fc.constant("getattr" as const),
		getattrFlags: u32,
		fh: u64,
	}),
	fc.record({
		header,
		kind: fc.constantFrom("open" as const, "opendir" as const),
		flags: u32,
		openFlags: u32,
	}),
	fc.record({
		header,
		kind: fc.constantFrom("read" as const, "readdir" as const),
		...readIn,
	}),
	fc.record({
		header,
		kind: fc.constantFrom("release" as const, "releasedir" as const),
		fh: u64,
		flags: u32,
		releaseFlags: u32,
		lockOwner: u64,
	}),
	fc.record({
		header,
		kind: fc.constant("flush" as const),
		fh: u64,
		lockOwner: u64,
	}),
	fc.record({
		header,
		kind: fc.constantFrom("statfs" as const, "destroy" as const),
	}),
	fc.record({ header, kind: fc.constant("interrupt" as const), target: u64 }),
	fc.record({ header, kind: fc.constant("access" as const), mask: u32 }),
	fc.record({
		header,
		kind: fc.constant("getxattr" as const),
		size: u32,
		name,
	}),
	fc.record({ header, kind: fc.constant("listxattr" as const), size: u32 }),
);

const attr: fc.Arbitrary<FuseAttr> = fc.record({
	ino: u64,
	size: safe,
	blocks: safe,
	atime: safe,
	mtime: safe,
	ctime: safe,
	atimensec: u32,
	mtimensec: u32,
	ctimensec: u32,
	mode: u32,
	nlink: u32,
	uid: u32,
	gid: u32,
	rdev: u32,
	blksize: u32,
	flags: u32,
});
const u16 = fc.integer({ min: 0, max: 0xffff });
const initOut: fc.Arbitrary<InitOut> = fc.record({
	major: fc.constant(7),
	minor: fc.integer({ min: 23, max: 0xffff_ffff }),
	maxReadahead: u32,
	flags: u32,
	maxBackground: u16,
	congestionThreshold: u16,
	maxWrite: u32,
	timeGran: u32,
	maxPages: u16,
	mapAlignment: u16,
	flags2: u32,
	maxStackDepth: u32,
	requestTimeout: u16,
});

/** Whether a handler's answer is a well-formed reply the kernel could take. */
function checkReply(r: Buffer[] | undefined): void {
	if (r === undefined) return;
	const all = Buffer.concat(r);
	const h = decodeOutHeader(all); // len matches, at least 16 bytes
	expect(h.unique).not.toBe(0n);
	expect(h.error).toBeLessThanOrEqual(0);
	expect(h.error).toBeGreaterThan(-4096);
	if (h.error !== 0) expect(all.length).toBe(OUT_HEADER_SIZE);
}

/** Feeds one message; only DadiError("INPUT_INVALID") may escape, replies must be well-formed. */
async function survives(h: FuseHandler, m: Buffer): Promise<void> {
	let r: Awaited<ReturnType<FuseHandler["handle"]>>;
	try {
		r = await h.handle(m);
	} catch (e) {
		expect(e).toBeInstanceOf(DadiError);
		expect((e as DadiError).code).toBe("INPUT_INVALID");
		return;
	}
	checkReply(r);
}

// ------------------------------------------------------------------------------------------

describe("FUSE codec", () => {
	it("decodes the kernel's real INIT", () => {
		const r = decodeRequest(KERNEL_INIT);
		expect(r.header).toMatchObject({
			len: 104,
			opcode: Op.INIT,
			unique: 2n,
			nodeid: 0n,
			totalExtlen: 0,
		});
		expect(r).toMatchObject({
			kind: "init",
			major: 7,
			minor: 45,
			maxReadahead: 131072,
			flags: 0x73fffffb,
			flags2: 0x5fd,
		});
		expect(encodeRequest(r).equals(KERNEL_INIT)).toBe(true);
	});

	it("round-trips every request kind", () => {
		fc.assert(
			fc.property(request, (r) => {
				const bytes = encodeRequest(r);
				const back = decodeRequest(bytes);
				const opcode = decodeInHeader(bytes).opcode;
				expect(back).toEqual({
					...r,
					header: { ...r.header, len: bytes.length, opcode },
				});
				expect(encodeRequest(back).equals(bytes)).toBe(true);
			}),
			{ numRuns: 500 },
		);
	});

	it("round-trips replies and has the kernel's sizes", () => {
		fc.assert(
			fc.property(initOut, (o) => {
				const b = encodeInitOut(o);
				expect(b.length).toBe(64);
				expect(decodeInitOut(b)).toEqual(o);
			}),
		);
		fc.assert(
			fc.property(
				attr,
				u64,
				u64,
				safe,
				safe,
				u32,
				u32,
				(a, nodeid, generation, ev, av, evn, avn) => {
					const e = {
						nodeid,
						generation,
						entryValid: ev,
						attrValid: av,
						entryValidNsec: evn,
						attrValidNsec: avn,
						attr: a,
					};
					const b = encodeEntryOut(e);
					expect(b.length).toBe(ENTRY_OUT_SIZE);
					expect(decodeEntryOut(b)).toEqual(e);
					const ao = { attrValid: av, attrValidNsec: avn, attr: a };
					expect(encodeAttrOut(ao).length).toBe(ATTR_OUT_SIZE);
					expect(decodeAttrOut(encodeAttrOut(ao))).toEqual(ao);
				},
			),
		);
		fc.assert(
			fc.property(
				u64,
				u32,
				fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
				(fh, openFlags, backingId) => {
					const o = { fh, openFlags, backingId };
					expect(decodeOpenOut(encodeOpenOut(o))).toEqual(o);
				},
			),
		);
		fc.assert(
			fc.property(
				fc.record({
					blocks: safe,
					bfree: safe,
					bavail: safe,
					files: safe,
					ffree: safe,
					bsize: u32,
					namelen: u32,
					frsize: u32,
				}),
				(s) => {
					expect(encodeStatfsOut(s).length).toBe(80);
					expect(decodeStatfsOut(encodeStatfsOut(s))).toEqual(s);
				},
			),
		);
		fc.assert(
			fc.property(
				fc.array(fc.record({ ino: u64, off: safe, type: u32, name }), {
					maxLength: 10,
				}),
				(ds) => {
					const b = encodeDirents(ds);
					expect(b.length % 8).toBe(0);
					expect(decodeDirents(b)).toEqual(ds);
				},
			),
		);
	});

	it("cuts INIT replies for old kernels", () => {
		const o = {
			major: 7,
			minor: 22,
			maxReadahead: 1,
			flags: 1,
			maxBackground: 0,
			congestionThreshold: 0,
			maxWrite: 4096,
			timeGran: 0,
			maxPages: 0,
			mapAlignment: 0,
			flags2: 0,
			maxStackDepth: 0,
			requestTimeout: 0,
		};
		expect(encodeInitOut(o).length).toBe(24);
		expect(encodeInitOut({ ...o, minor: 4 }).length).toBe(8);
	});

	it("rejects malformed messages with INPUT_INVALID", () => {
		const good = msg({ kind: "read", ...readArgs(0, 4096) }, FILE_NODE);
		const cases: Buffer[] = [
			Buffer.alloc(0),
			good.subarray(0, IN_HEADER_SIZE - 1),
			good.subarray(0, good.length - 1), // len says more than there is
			Buffer.concat([good, Buffer.alloc(1)]), // len says less
			withLen(good.subarray(0, IN_HEADER_SIZE + 10)), // READ arguments cut short
			withLen(
				Buffer.concat([
					msg({ kind: "lookup", name: Buffer.from("x") }).subarray(
						0,
						IN_HEADER_SIZE,
					),
					Buffer.from("abc"),
				]),
			), // no NUL
		];
		const ext = Buffer.from(good);
		ext.writeUInt16LE(100, 36); // extensions longer than the message
		cases.push(ext);
		const batch = msg({ kind: "batch-forget", forgets: [] });
		batch.writeUInt32LE(1000, IN_HEADER_SIZE); // count beyond the message
		cases.push(batch);
		for (const c of cases)
			expect(thrown(() => decodeRequest(c)).code).toBe("INPUT_INVALID");
		expect(thrown(() => decodeOutHeader(Buffer.alloc(15))).code).toBe(
			"INPUT_INVALID",
		);
		expect(thrown(() => decodeEntryOut(Buffer.alloc(100))).code).toBe(
			"INPUT_INVALID",
		);
		expect(thrown(() => decodeDirents(Buffer.alloc(20, 0))).code).toBe(
			"INPUT_INVALID",
		);
	});
});

function readArgs(offset: number, size: number) {
	return {
		fh: 1n,
		offset,
		size,
		readFlags: 0,
		lockOwner: 0n,
		flags: 0,
	};
}

/** Rewrites the header's len to the buffer's length (so that arguments are what is wrong). */
function withLen(b: Buffer): Buffer {
	const c = Buffer.from(b);
	if (c.length >= 4) c.writeUInt32LE(c.length, 0);
	return c;
}

describe("FUSE handler", () => {
	it("negotiates INIT: our minor, only flags we handle, 1 MiB reads", async () => {
		const h = new FuseHandler({ source: bufferSource(DATA) });
		const a = await ask(h, KERNEL_INIT);
		expect(a?.error).toBe(0);
		expect(a?.unique).toBe(2n);
		const o = decodeInitOut(a?.body as Buffer);
		expect(o.major).toBe(7);
		expect(o.minor).toBe(45);
		expect(o.maxPages).toBe(256);
		expect(o.maxReadahead).toBe(131072);
		expect(o.flags & ~0x73fffffb).toBe(0); // nothing the kernel did not offer
		expect(o.flags & InitFlag.ASYNC_READ).toBeTruthy();
		expect(o.flags & InitFlag.MAX_PAGES).toBeTruthy();
		for (const f of [
			InitFlag.WRITEBACK_CACHE,
			InitFlag.SPLICE_READ,
			InitFlag.POSIX_LOCKS,
			InitFlag.DO_READDIRPLUS,
			InitFlag.INIT_EXT,
			InitFlag.EXPORT_SUPPORT,
		])
			expect(o.flags & f).toBe(0);
		expect(o.flags2).toBe(0);
		expect(h.negotiated?.minor).toBe(45);
		// A second INIT is a protocol error.
		expect((await ask(h, KERNEL_INIT))?.error).toBe(-Errno.EPROTO);
	});

	it("speaks an older kernel's minor and refuses ancient or foreign majors", async () => {
		const init = (major: number, minor: number, flags: number) =>
			msg({
				kind: "init",
				major,
				minor,
				maxReadahead: 1 << 20,
				flags,
				flags2: 0,
			});
		const old = new FuseHandler({
			source: bufferSource(DATA),
			maxRead: 256 << 10,
		});
		const a = await ask(
			old,
			init(7, 31, InitFlag.ASYNC_READ | InitFlag.MAX_PAGES),
		);
		const o = decodeInitOut(a?.body as Buffer);
		expect([o.minor, o.maxPages, o.maxReadahead]).toEqual([31, 64, 256 << 10]);
		const noPages = new FuseHandler({ source: bufferSource(DATA) });
		const b = await ask(noPages, init(7, 27, InitFlag.ASYNC_READ));
		expect(b?.body.length).toBe(64);
		expect(decodeInitOut(b?.body as Buffer).maxPages).toBe(0);
		const older = new FuseHandler({ source: bufferSource(DATA) });
		expect((await ask(older, init(7, 11, 0)))?.error).toBe(-Errno.EPROTO);
		expect((await ask(older, init(6, 45, 0)))?.error).toBe(-Errno.EPROTO);
		// A newer major: we answer with ours and wait for the kernel's next INIT.
		const newer = new FuseHandler({ source: bufferSource(DATA) });
		const c = await ask(newer, init(8, 0, 0));
		expect(decodeInitOut(c?.body as Buffer).major).toBe(7);
		expect(newer.negotiated).toBeUndefined();
		expect((await ask(newer, init(7, 45, InitFlag.MAX_PAGES)))?.error).toBe(0);
	});

	it("answers EIO before INIT", async () => {
		const h = new FuseHandler({ source: bufferSource(DATA) });
		expect(
			(await ask(h, msg({ kind: "getattr", getattrFlags: 0, fh: 0n })))?.error,
		).toBe(-Errno.EIO);
		expect(await ask(h, msg({ kind: "forget", nlookup: 1n }))).toBeUndefined();
	});

	it("looks up the one file and nothing else", async () => {
		const h = await ready({ fileName: "image.raw" });
		const a = await ask(
			h,
			msg({ kind: "lookup", name: Buffer.from("image.raw") }),
		);
		expect(a?.error).toBe(0);
		const e = decodeEntryOut(a?.body as Buffer);
		expect(e.nodeid).toBe(FILE_NODE);
		expect(e.attr).toMatchObject({
			ino: FILE_NODE,
			size: DATA.length,
			blocks: DATA.length / 512,
			mode: S_IFREG | 0o444,
			nlink: 1,
			mtime: 1_700_000_000,
		});
		expect(e.entryValid).toBeGreaterThan(3600);
		for (const n of ["disk", "image.raw2", "IMAGE.RAW", "."])
			expect(
				(await ask(h, msg({ kind: "lookup", name: Buffer.from(n) })))?.error,
			).toBe(-Errno.ENOENT);
		expect(
			(await ask(h, msg({ kind: "lookup", name: Buffer.from("x") }, FILE_NODE)))
				?.error,
		).toBe(-Errno.ENOTDIR);
	});

	it("reports attributes of the root and the file", async () => {
		const h = await ready();
		const root = decodeAttrOut(
			(await ask(h, msg({ kind: "getattr", getattrFlags: 0, fh: 0n })))
				?.body as Buffer,
		);
		expect(root.attr).toMatchObject({
			ino: ROOT_NODE,
			mode: S_IFDIR | 0o555,
			nlink: 2,
		});
		const file = decodeAttrOut(
			(
				await ask(
					h,
					msg({ kind: "getattr", getattrFlags: 0, fh: 0n }, FILE_NODE),
				)
			)?.body as Buffer,
		);
		expect(file.attr).toMatchObject({
			size: DATA.length,
			mode: S_IFREG | 0o444,
			blksize: 4096,
		});
		const s = decodeStatfsOut(
			(await ask(h, msg({ kind: "statfs" })))?.body as Buffer,
		);
		expect(s).toMatchObject({
			blocks: DATA.length / 4096,
			bfree: 0,
			bsize: 4096,
		});
	});

	it("opens read-only, keeps the cache, refuses writing with EROFS", async () => {
		const h = await ready();
		const open = async (flags: number, node = FILE_NODE) =>
			ask(h, msg({ kind: "open", flags, openFlags: 0 }, node));
		const a = await open(0o100000); // O_RDONLY|O_LARGEFILE
		expect(a?.error).toBe(0);
		const o = decodeOpenOut(a?.body as Buffer);
		expect(o.openFlags & Fopen.KEEP_CACHE).toBeTruthy();
		expect(o.openFlags & Fopen.DIRECT_IO).toBe(0);
		for (const flags of [1, 2, 0o1000])
			expect((await open(flags))?.error).toBe(-Errno.EROFS);
		expect((await open(0, ROOT_NODE))?.error).toBe(-Errno.EISDIR);
		expect(
			(
				await ask(
					h,
					msg({ kind: "opendir", flags: 0, openFlags: 0 }, FILE_NODE),
				)
			)?.error,
		).toBe(-Errno.ENOTDIR);
		expect(
			(
				await ask(
					h,
					msg(
						{
							kind: "release",
							fh: o.fh,
							flags: 0,
							releaseFlags: 0,
							lockOwner: 0n,
						},
						FILE_NODE,
					),
				)
			)?.error,
		).toBe(0);
		expect(
			(await ask(h, msg({ kind: "access", mask: 4 }, FILE_NODE)))?.error,
		).toBe(0);
		expect(
			(await ask(h, msg({ kind: "access", mask: 2 }, FILE_NODE)))?.error,
		).toBe(-Errno.EROFS);
		expect(
			(await ask(h, msg({ kind: "access", mask: 1 }, FILE_NODE)))?.error,
		).toBe(-Errno.EACCES);
	});

	it("reads: exact ranges, clamped at the end, empty past it", async () => {
		const h = await ready();
		await fc.assert(
			fc.asyncProperty(
				fc.integer({ min: 0, max: DATA.length + 10_000 }),
				fc.integer({ min: 0, max: 1 << 20 }),
				async (offset, size) => {
					const a = await ask(
						h,
						msg({ kind: "read", ...readArgs(offset, size) }, FILE_NODE),
					);
					expect(a?.error).toBe(0);
					const end = Math.min(DATA.length, offset + size);
					expect(
						a?.body.equals(DATA.subarray(Math.min(offset, end), end)),
					).toBe(true);
				},
			),
			{ numRuns: 200 },
		);
		expect(
			(await ask(h, msg({ kind: "read", ...readArgs(0, 10) }, ROOT_NODE)))
				?.error,
		).toBe(-Errno.EISDIR);
		expect(h.stats.errors).toBe(0);
		expect(h.inFlight).toBe(0);
	});

	it("turns source failures into EIO with a log line, and keeps serving", async () => {
		const lines: string[] = [];
		const observed: boolean[] = [];
		const h = await ready({
			source: {
				size: DATA.length,
				read: async (o, l) => {
					if (o < 8192)
						throw new DadiError("AUTH_FAILED", "chunk 0 did not verify");
					if (o === 8192) return Buffer.alloc(l - 1); // a short answer is an error too
					return DATA.subarray(o, o + l);
				},
			},
			log: (l) => lines.push(l),
			onRead: (_b, _ms, ok) => observed.push(ok),
		});
		const bad = await ask(
			h,
			msg({ kind: "read", ...readArgs(0, 4096) }, FILE_NODE),
		);
		expect(bad?.error).toBe(-Errno.EIO);
		const short = await ask(
			h,
			msg({ kind: "read", ...readArgs(8192, 4096) }, FILE_NODE),
		);
		expect(short?.error).toBe(-Errno.EIO);
		const good = await ask(
			h,
			msg({ kind: "read", ...readArgs(65536, 4096) }, FILE_NODE),
		);
		expect(good?.body.equals(DATA.subarray(65536, 69632))).toBe(true);
		expect(lines.join("\n")).toMatch(
			/READ of 4096 bytes at offset 0 failed.*AUTH_FAILED/,
		);
		expect(observed).toEqual([false, false, true]);
		expect(h.stats).toMatchObject({ reads: 3, errors: 2, bytesRead: 4096 });
	});

	it("answers an interrupted READ with EINTR and drops the late data", async () => {
		let release: (b: Buffer) => void = () => {};
		const h = await ready({
			source: {
				size: DATA.length,
				read: () =>
					new Promise<Buffer>((r) => {
						release = r;
					}),
			},
		});
		const m = msg({ kind: "read", ...readArgs(0, 4096) }, FILE_NODE);
		const unique = decodeInHeader(m).unique;
		const pending = h.handle(m) as Promise<Buffer[] | undefined>;
		expect(h.inFlight).toBe(1);
		const intr = await ask(h, msg({ kind: "interrupt", target: unique }));
		expect(intr).toEqual({
			error: -Errno.EINTR,
			unique,
			body: Buffer.alloc(0),
		});
		release(Buffer.alloc(4096));
		expect(await pending).toBeUndefined();
		// An interrupt for something already answered (or unknown) needs no reply.
		expect(
			await ask(h, msg({ kind: "interrupt", target: unique })),
		).toBeUndefined();
	});

	it("fails READs in flight at shutdown", async () => {
		const h = await ready({
			source: { size: DATA.length, read: () => new Promise<Buffer>(() => {}) },
		});
		const m = msg({ kind: "read", ...readArgs(0, 4096) }, FILE_NODE);
		void h.handle(m);
		void h.handle(msg({ kind: "read", ...readArgs(4096, 4096) }, FILE_NODE));
		const replies = h.failPending();
		expect(replies.map((r) => decodeOutHeader(Buffer.concat(r)).error)).toEqual(
			[-Errno.EIO, -Errno.EIO],
		);
		expect(h.inFlight).toBe(0);
	});

	it("lists the root directory, resuming at any offset", async () => {
		const h = await ready();
		const dir = async (offset: number, size = 4096) =>
			decodeDirents(
				(await ask(h, msg({ kind: "readdir", ...readArgs(offset, size) })))
					?.body as Buffer,
			);
		const all = await dir(0);
		expect(all.map((d) => [d.name.toString(), d.ino, d.off])).toEqual([
			[".", ROOT_NODE, 1],
			["..", ROOT_NODE, 2],
			["disk", FILE_NODE, 3],
		]);
		expect((await dir(2)).map((d) => d.name.toString())).toEqual(["disk"]);
		expect(await dir(3)).toEqual([]);
		expect((await dir(0, 40)).length).toBe(1); // only what fits
		expect(
			(await ask(h, msg({ kind: "readdir", ...readArgs(0, 4096) }, FILE_NODE)))
				?.error,
		).toBe(-Errno.ENOTDIR);
	});

	it("sends no reply to FORGET, BATCH_FORGET and NOTIFY_REPLY; answers DESTROY", async () => {
		const h = await ready();
		expect(
			await ask(h, msg({ kind: "forget", nlookup: 5n }, FILE_NODE)),
		).toBeUndefined();
		expect(
			await ask(
				h,
				msg({ kind: "batch-forget", forgets: [{ nodeid: 2n, nlookup: 1n }] }),
			),
		).toBeUndefined();
		expect(
			await ask(
				h,
				msg({ kind: "other", body: Buffer.alloc(8) }, 0n).fill(41, 4, 5),
			),
		).toBeUndefined();
		expect((await ask(h, msg({ kind: "destroy" }, 0n)))?.error).toBe(0);
		expect(h.destroyed).toBe(true);
	});

	it("answers ENOSYS to every opcode it does not implement, ENOENT for unknown nodes", async () => {
		const h = await ready();
		const handled = new Set<number>([
			Op.LOOKUP,
			Op.FORGET,
			Op.GETATTR,
			Op.OPEN,
			Op.READ,
			Op.STATFS,
			Op.RELEASE,
			Op.FLUSH,
			Op.INIT,
			Op.OPENDIR,
			Op.READDIR,
			Op.RELEASEDIR,
			Op.ACCESS,
			Op.INTERRUPT,
			Op.DESTROY,
			Op.BATCH_FORGET,
			Op.NOTIFY_REPLY,
			Op.GETXATTR,
			Op.LISTXATTR,
		]);
		await fc.assert(
			fc.asyncProperty(
				fc
					.oneof(u32, fc.integer({ min: 0, max: 60 }))
					.filter((o) => !handled.has(o)),
				u64,
				fc.uint8Array({ maxLength: 200 }),
				async (opcode, nodeid, body) => {
					const m = encodeRequest({
						header: hdr(nodeid),
						kind: "other",
						body: Buffer.from(body),
					});
					m.writeUInt32LE(opcode, 4);
					expect((await ask(h, m))?.error).toBe(-Errno.ENOSYS);
				},
			),
			{ numRuns: 300 },
		);
		const unknown = fc
			.bigInt({ min: 0n, max: (1n << 64n) - 1n })
			.filter((n) => n !== ROOT_NODE && n !== FILE_NODE);
		const nodeOps: Req[] = [
			{ kind: "lookup", name: Buffer.from("disk") },
			{ kind: "getattr", getattrFlags: 0, fh: 0n },
			{ kind: "open", flags: 0, openFlags: 0 },
			{ kind: "opendir", flags: 0, openFlags: 0 },
			{ kind: "read", ...readArgs(0, 4096) },
			{ kind: "readdir", ...readArgs(0, 4096) },
			{ kind: "release", fh: 1n, flags: 0, releaseFlags: 0, lockOwner: 0n },
			{ kind: "flush", fh: 1n, lockOwner: 0n },
			{ kind: "statfs" },
			{ kind: "access", mask: 4 },
			{ kind: "getxattr", size: 0, name: Buffer.from("user.x") },
			{ kind: "listxattr", size: 0 },
		];
		await fc.assert(
			fc.asyncProperty(
				unknown,
				fc.constantFrom(...nodeOps),
				async (node, r) => {
					expect((await ask(h, msg(r, node)))?.error).toBe(-Errno.ENOENT);
				},
			),
			{ numRuns: 300 },
		);
	});

	it("never throws anything but INPUT_INVALID and always answers well-formed, for random bytes", async () => {
		const h = await ready();
		await fc.assert(
			fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), async (b) => {
				await survives(h, Buffer.from(b));
				await survives(h, withLen(Buffer.from(b))); // with a consistent length field
			}),
			{ numRuns: 1000 },
		);
	});

	it("never throws anything but INPUT_INVALID for mutated valid requests", async () => {
		const fresh = new FuseHandler({ source: bufferSource(DATA) });
		const h = await ready();
		const mutation = fc.oneof(
			fc.record({
				kind: fc.constant("set" as const),
				at: fc.nat(),
				value: fc.integer({ min: 0, max: 255 }),
			}),
			fc.record({ kind: fc.constant("cut" as const), at: fc.nat() }),
			fc.record({
				kind: fc.constant("grow" as const),
				extra: fc.uint8Array({ minLength: 1, maxLength: 64 }),
			}),
		);
		await fc.assert(
			fc.asyncProperty(
				request,
				fc.array(mutation, { minLength: 1, maxLength: 4 }),
				fc.boolean(),
				async (r, ms, fixLen) => {
					let b = encodeRequest(r);
					for (const m of ms) {
						if (m.kind === "set" && b.length > 0) b[m.at % b.length] = m.value;
						else if (m.kind === "cut") b = b.subarray(0, m.at % (b.length + 1));
						else if (m.kind === "grow")
							b = Buffer.concat([b, Buffer.from(m.extra)]);
					}
					if (fixLen) b = withLen(b);
					await survives(h, b);
					await survives(fresh, b);
				},
			),
			{ numRuns: 2000 },
		);
	});
});
