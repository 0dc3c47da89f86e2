/**
 * The NBD server: a raw-socket client written here for malformed and edge-case traffic, and NBD
 * clients no one here wrote (nbdinfo, nbdcopy, qemu-img, qemu-io) for interoperability and data.
 */
import { execFile } from "node:child_process";
import { readFile, stat, writeFile } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { DadiError } from "../src/errors.js";
import type { BlockSource } from "../src/guest/block-source.js";
import { ByteQueue } from "../src/guest/nbd/byte-queue.js";
import {
	decodeChunkHeader,
	decodeChunkPayload,
	decodeExportNameReply,
	decodeGreeting,
	decodeInfo,
	decodeOptionReplyHeader,
	decodeServerReply,
	decodeSimpleReply,
	encodeClientFlags,
	encodeInfoRequest,
	encodeOption,
	encodeRequest,
	NBD_CMD_CACHE,
	NBD_CMD_DISC,
	NBD_CMD_FLAG_DF,
	NBD_CMD_FLAG_FUA,
	NBD_CMD_FLUSH,
	NBD_CMD_READ,
	NBD_CMD_TRIM,
	NBD_CMD_WRITE,
	NBD_CMD_WRITE_ZEROES,
	NBD_EINVAL,
	NBD_EIO,
	NBD_EPERM,
	NBD_ESHUTDOWN,
	NBD_FLAG_C_FIXED_NEWSTYLE,
	NBD_FLAG_C_NO_ZEROES,
	NBD_FLAG_CAN_MULTI_CONN,
	NBD_FLAG_FIXED_NEWSTYLE,
	NBD_FLAG_HAS_FLAGS,
	NBD_FLAG_NO_ZEROES,
	NBD_FLAG_READ_ONLY,
	NBD_FLAG_SEND_DF,
	NBD_FLAG_SEND_FLUSH,
	NBD_INFO_BLOCK_SIZE,
	NBD_INFO_DESCRIPTION,
	NBD_INFO_NAME,
	NBD_OPT_ABORT,
	NBD_OPT_EXPORT_NAME,
	NBD_OPT_GO,
	NBD_OPT_INFO,
	NBD_OPT_LIST,
	NBD_OPT_STRUCTURED_REPLY,
	NBD_REP_ACK,
	NBD_REP_ERR_INVALID,
	NBD_REP_ERR_UNKNOWN,
	NBD_REP_ERR_UNSUP,
	NBD_REP_INFO,
	NBD_REP_SERVER,
	NBD_REPLY_FLAG_DONE,
	NBD_SIMPLE_REPLY_MAGIC,
	type NbdInfo,
} from "../src/guest/nbd/protocol.js";
import { NbdServer, type NbdServerOptions } from "../src/guest/nbd/server.js";
import { openSealedImage } from "../src/image/open-image.js";
import {
	cleanupTempDirs,
	prng,
	rejection,
	sealInto,
	tempDir,
	thrown,
	writeDisk,
	writeKey,
} from "./helpers.js";

afterAll(cleanupTempDirs);

const MiB = 1024 * 1024;
const DISK = prng("nbd-disk", 64 * MiB);
const SECRET = "s3cr3t-key-material";

// --- block sources -------------------------------------------------------------------------------

interface TestSource extends BlockSource {
	active: number;
	maxActive: number;
	reads: number;
}

/** A source over a buffer; `gate` may hold a read back, `fails` makes a range fail. */
function memorySource(
	buf: Buffer,
	o: {
		gate?: (offset: number, length: number) => Promise<void> | undefined;
		fails?: (offset: number, length: number) => boolean;
	} = {},
): TestSource {
	const s: TestSource = {
		size: buf.length,
		active: 0,
		maxActive: 0,
		reads: 0,
		async read(offset, length) {
			s.reads++;
			s.active++;
			s.maxActive = Math.max(s.maxActive, s.active);
			try {
				await (o.gate?.(offset, length) ?? new Promise(setImmediate));
				if (o.fails?.(offset, length))
					throw new DadiError(
						"AUTH_FAILED",
						`chunk at ${offset}: forged (${SECRET})`,
					);
				return buf.subarray(offset, offset + length);
			} finally {
				s.active--;
			}
		},
	};
	return s;
}

/** Waits until `cond` holds (polling), failing after `ms`. */
async function until(cond: () => boolean, ms = 5000): Promise<void> {
	const end = Date.now() + ms;
	while (!cond()) {
		if (Date.now() > end) throw new Error("condition not reached in time");
		await new Promise((r) => setTimeout(r, 5));
	}
}

function gate(): { wait: Promise<void>; open: () => void } {
	let open = () => {};
	const wait = new Promise<void>((r) => {
		open = r;
	});
	return { wait, open };
}

// --- a raw NBD client ----------------------------------------------------------------------------

class Raw {
	private readonly q = new ByteQueue();
	private want:
		| { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void }
		| undefined;
	closed = false;
	readonly done: Promise<void>;

	private constructor(readonly socket: Socket) {
		socket.on("data", (b: Buffer) => {
			this.q.push(b);
			this.feed();
		});
		socket.on("error", () => {});
		this.done = new Promise((r) =>
			socket.once("close", () => {
				this.closed = true;
				this.want?.reject(new Error("connection closed"));
				this.want = undefined;
				r();
			}),
		);
	}

	static open(path: string | number): Promise<Raw> {
		return new Promise((resolve, reject) => {
			const s =
				typeof path === "string" ? connect(path) : connect(path, "127.0.0.1");
			s.once("connect", () => resolve(new Raw(s)));
			s.once("error", reject);
		});
	}

	send(...bufs: Buffer[]): void {
		for (const b of bufs) this.socket.write(b);
	}

	read(n: number, ms = 5000): Promise<Buffer> {
		if (this.q.length >= n) return Promise.resolve(this.q.take(n));
		if (this.closed) return Promise.reject(new Error("connection closed"));
		return new Promise((resolve, reject) => {
			const t = setTimeout(() => {
				this.want = undefined;
				reject(new Error(`timed out waiting for ${n} bytes`));
			}, ms);
			this.want = {
				n,
				resolve: (b) => {
					clearTimeout(t);
					resolve(b);
				},
				reject: (e) => {
					clearTimeout(t);
					reject(e);
				},
			};
		});
	}

	/** True if the server closes the connection within `ms`. */
	async closesWithin(ms = 3000): Promise<boolean> {
		let t: NodeJS.Timeout | undefined;
		const r = await Promise.race([
			this.done.then(() => true),
			new Promise<boolean>((res) => {
				t = setTimeout(() => res(false), ms);
			}),
		]);
		clearTimeout(t);
		return r;
	}

	/** Bytes received and not read. */
	get pending(): number {
		return this.q.length;
	}

	destroy(): void {
		this.socket.destroy();
	}

	private feed(): void {
		if (this.want && this.q.length >= this.want.n) {
			const w = this.want;
			this.want = undefined;
			w.resolve(this.q.take(w.n));
		}
	}
}

async function hello(
	c: Raw,
	flags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES,
): Promise<void> {
	const g = decodeGreeting(await c.read(18));
	expect(g.handshakeFlags).toBe(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	c.send(encodeClientFlags(flags));
}

async function optReply(c: Raw) {
	const h = decodeOptionReplyHeader(await c.read(20));
	return { ...h, data: await c.read(h.length) };
}

/** Sends NBD_OPT_INFO or NBD_OPT_GO; the info items and the final reply type. */
async function info(
	c: Raw,
	option: number,
	name: string,
	requests: number[] = [],
): Promise<{ final: number; infos: NbdInfo[]; message: string }> {
	c.send(encodeOption(option, encodeInfoRequest({ name, requests })));
	const infos: NbdInfo[] = [];
	for (;;) {
		const r = await optReply(c);
		expect(r.option).toBe(option);
		if (r.type === NBD_REP_INFO) infos.push(decodeInfo(r.data));
		else return { final: r.type, infos, message: r.data.toString() };
	}
}

/** Handshake through NBD_OPT_GO; the export's size and transmission flags. */
async function go(
	c: Raw,
	o: { structured?: boolean; name?: string } = {},
): Promise<{ size: number; flags: number }> {
	await hello(c);
	if (o.structured) {
		c.send(encodeOption(NBD_OPT_STRUCTURED_REPLY));
		expect((await optReply(c)).type).toBe(NBD_REP_ACK);
	}
	const r = await info(c, NBD_OPT_GO, o.name ?? "dadi");
	expect(r.final).toBe(NBD_REP_ACK);
	const e = r.infos.find((i) => i.type === "export");
	if (e?.type !== "export") throw new Error("no NBD_INFO_EXPORT");
	return { size: e.size, flags: e.flags };
}

let nextCookie = 1n;
interface Req {
	cookie: bigint;
	type: number;
	offset: number;
	length: number;
}

function request(
	c: Raw,
	type: number,
	offset: number | bigint,
	length: number,
	flags = 0,
	payload?: Buffer,
): Req {
	const cookie = nextCookie++;
	c.send(
		encodeRequest({ flags, type, cookie, offset: BigInt(offset), length }),
		...(payload ? [payload] : []),
	);
	return { cookie, type, offset: Number(offset), length };
}

interface Result {
	error: number;
	data: Buffer;
	/** Reply chunks (structured) in arrival order. */
	chunks: string[];
	messages: string[];
	errorOffsets: number[];
}

/**
 * Reads replies until every request in `reqs` is complete; returns them by cookie, plus the order
 * in which they completed. Structured read data is reassembled and checked to stay in range.
 */
async function replies(
	c: Raw,
	reqs: Req[],
): Promise<{ byCookie: Map<bigint, Result>; order: bigint[] }> {
	const open = new Map(reqs.map((r) => [r.cookie, r]));
	const byCookie = new Map<bigint, Result>();
	const order: bigint[] = [];
	const result = (r: Req) => {
		let x = byCookie.get(r.cookie);
		if (!x) {
			x = {
				error: 0,
				data: Buffer.alloc(r.type === NBD_CMD_READ ? r.length : 0),
				chunks: [],
				messages: [],
				errorOffsets: [],
			};
			byCookie.set(r.cookie, x);
		}
		return x;
	};
	while (open.size > 0) {
		const head = await c.read(4);
		if (head.readUInt32BE(0) === NBD_SIMPLE_REPLY_MAGIC) {
			const s = decodeSimpleReply(Buffer.concat([head, await c.read(12)]));
			const r = open.get(s.cookie);
			if (!r) throw new Error(`reply for unknown cookie ${s.cookie}`);
			const x = result(r);
			x.error = s.error;
			if (s.error === 0 && r.type === NBD_CMD_READ && r.length > 0)
				x.data = await c.read(r.length);
			open.delete(r.cookie);
			order.push(r.cookie);
			continue;
		}
		const h = decodeChunkHeader(Buffer.concat([head, await c.read(16)]));
		const r = open.get(h.cookie);
		if (!r) throw new Error(`chunk for unknown cookie ${h.cookie}`);
		const p = decodeChunkPayload(h.type, await c.read(h.length));
		const x = result(r);
		x.chunks.push(p.type);
		if (p.type === "offset-data") {
			const at = p.offset - r.offset;
			if (at < 0 || at + p.data.length > r.length)
				throw new Error("a data chunk outside the request");
			p.data.copy(x.data, at);
		} else if (p.type === "error") {
			x.error ||= p.error;
			x.messages.push(p.message);
			if (p.offset !== undefined) x.errorOffsets.push(p.offset);
		}
		if (h.flags & NBD_REPLY_FLAG_DONE) {
			open.delete(r.cookie);
			order.push(r.cookie);
		}
	}
	return { byCookie, order };
}

async function one(c: Raw, req: Req): Promise<Result> {
	return (await replies(c, [req])).byCookie.get(req.cookie) as Result;
}

// --- servers -------------------------------------------------------------------------------------

async function withServer(
	o: Partial<NbdServerOptions> & { source?: BlockSource },
	fn: (s: {
		server: NbdServer;
		path: string;
		address: string;
		logs: string[];
	}) => Promise<void>,
): Promise<void> {
	const logs: string[] = [];
	const server = new NbdServer({
		source: memorySource(DISK),
		description: "test disk",
		log: (l) => logs.push(l),
		...o,
	});
	const path = join(await tempDir(), "nbd.sock");
	const { address } = await server.listen({ unix: path });
	try {
		await fn({ server, path, address, logs });
	} finally {
		await server.close(1000);
	}
}

// --- external programs ---------------------------------------------------------------------------

function run(
	cmd: string,
	args: string[],
	timeout = 60_000,
): Promise<{ code: number; stdout: string; stderr: string }> {
	return new Promise((resolve) => {
		execFile(
			cmd,
			args,
			{ timeout, maxBuffer: 64 * MiB },
			(err, stdout, stderr) => {
				const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
				resolve({ code, stdout, stderr });
			},
		);
	});
}

async function sameAs(file: string, expected: Buffer): Promise<boolean> {
	return (await readFile(file)).equals(expected);
}

// =================================================================================================

describe("handshake", () => {
	test("options: LIST, INFO, unknown and malformed options are answered; GO then serves", async () => {
		await withServer({}, async ({ path }) => {
			const c = await Raw.open(path);
			await hello(c);

			c.send(encodeOption(NBD_OPT_LIST));
			const s = await optReply(c);
			expect(s.type).toBe(NBD_REP_SERVER);
			expect(decodeServerReply(s.data)).toEqual({
				name: "dadi",
				description: "test disk",
			});
			expect((await optReply(c)).type).toBe(NBD_REP_ACK);

			c.send(encodeOption(NBD_OPT_LIST, Buffer.from("x")));
			expect((await optReply(c)).type).toBe(NBD_REP_ERR_INVALID);

			const unknown = await info(c, NBD_OPT_INFO, "other");
			expect(unknown.final).toBe(NBD_REP_ERR_UNKNOWN);
			expect(unknown.infos).toEqual([]);
			expect(unknown.message).toContain("other");

			const all = await info(c, NBD_OPT_INFO, "", [
				NBD_INFO_NAME,
				NBD_INFO_DESCRIPTION,
				NBD_INFO_BLOCK_SIZE,
			]);
			expect(all.final).toBe(NBD_REP_ACK);
			expect(all.infos).toContainEqual({
				type: "export",
				size: DISK.length,
				flags:
					NBD_FLAG_HAS_FLAGS |
					NBD_FLAG_READ_ONLY |
					NBD_FLAG_SEND_FLUSH |
					NBD_FLAG_CAN_MULTI_CONN |
					(1 << 10), // NBD_FLAG_SEND_CACHE
			});
			expect(all.infos).toContainEqual({ type: "name", name: "dadi" });
			expect(all.infos).toContainEqual({
				type: "description",
				description: "test disk",
			});
			expect(all.infos).toContainEqual({
				type: "block-size",
				minimum: 1,
				preferred: 4096,
				maximum: 32 * MiB,
			});

			// an unknown option with a payload: skipped and refused
			c.send(encodeOption(0x4242, Buffer.alloc(5000, 7)));
			const u = await optReply(c);
			expect(u.option).toBe(0x4242);
			expect(u.type).toBe(NBD_REP_ERR_UNSUP);

			// a name length that points past the data
			const bad = encodeInfoRequest({ name: "dadi", requests: [] });
			bad.writeUInt32BE(99, 0);
			c.send(encodeOption(NBD_OPT_GO, bad));
			expect((await optReply(c)).type).toBe(NBD_REP_ERR_INVALID);

			c.send(encodeOption(NBD_OPT_STRUCTURED_REPLY, Buffer.from("x")));
			expect((await optReply(c)).type).toBe(NBD_REP_ERR_INVALID);
			c.send(encodeOption(NBD_OPT_STRUCTURED_REPLY));
			expect((await optReply(c)).type).toBe(NBD_REP_ACK);
			c.send(encodeOption(NBD_OPT_STRUCTURED_REPLY));
			expect((await optReply(c)).type).toBe(NBD_REP_ERR_INVALID);

			const g = await info(c, NBD_OPT_GO, "dadi");
			expect(g.final).toBe(NBD_REP_ACK);
			const e = g.infos.find((i) => i.type === "export");
			expect(e?.type === "export" && e.flags & NBD_FLAG_SEND_DF).toBeTruthy();
			// the spec recommends sending the block sizes even when not asked
			expect(g.infos.some((i) => i.type === "block-size")).toBe(true);

			const r = await one(c, request(c, NBD_CMD_READ, 12345, 1000));
			expect(r.error).toBe(0);
			expect(r.data.equals(DISK.subarray(12345, 13345))).toBe(true);
			c.destroy();
		});
	});

	test("protocol violations close the connection; the server keeps serving", async () => {
		await withServer({}, async ({ path, server, logs }) => {
			// unknown client flags
			const a = await Raw.open(path);
			await hello(a, NBD_FLAG_C_FIXED_NEWSTYLE | 0x10);
			expect(await a.closesWithin()).toBe(true);

			// bad option magic
			const b = await Raw.open(path);
			await hello(b);
			const opt = encodeOption(NBD_OPT_LIST);
			opt[0] = 0;
			b.send(opt);
			expect(await b.closesWithin()).toBe(true);

			// an option longer than 64 KiB: not read, the connection is dropped
			const c = await Raw.open(path);
			await hello(c);
			const huge = encodeOption(0x4242);
			huge.writeUInt32BE(1 << 20, 12);
			c.send(huge);
			expect(await c.closesWithin()).toBe(true);

			// NBD_OPT_EXPORT_NAME of an export that does not exist cannot be refused politely
			const d = await Raw.open(path);
			await hello(d);
			d.send(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from("nope")));
			expect(await d.closesWithin()).toBe(true);

			// garbage instead of a request
			const e = await Raw.open(path);
			await go(e);
			e.send(Buffer.alloc(28, 0x41));
			expect(await e.closesWithin()).toBe(true);

			// a write whose payload is over the limit is not read
			const f = await Raw.open(path);
			await go(f);
			request(f, NBD_CMD_WRITE, 0, 64 * MiB);
			expect(await f.closesWithin()).toBe(true);

			expect(logs.filter((l) => l.includes("protocol error"))).toHaveLength(6);
			expect(server.stats.errors).toBe(6);

			const ok = await Raw.open(path);
			await go(ok);
			const r = await one(ok, request(ok, NBD_CMD_READ, 0, 4096));
			expect(r.data.equals(DISK.subarray(0, 4096))).toBe(true);
			ok.destroy();
		});
	});

	test("NBD_OPT_EXPORT_NAME, with and without the 124 zero bytes", async () => {
		await withServer({ exportName: "disk0" }, async ({ path }) => {
			for (const noZeroes of [false, true]) {
				const c = await Raw.open(path);
				await hello(
					c,
					NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0),
				);
				c.send(
					encodeOption(
						NBD_OPT_EXPORT_NAME,
						Buffer.from(noZeroes ? "" : "disk0"),
					),
				);
				const r = decodeExportNameReply(
					await c.read(noZeroes ? 10 : 134),
					noZeroes,
				);
				expect(r.size).toBe(DISK.length);
				expect(r.flags & NBD_FLAG_READ_ONLY).toBeTruthy();
				const x = await one(c, request(c, NBD_CMD_READ, 777, 100));
				expect(x.data.equals(DISK.subarray(777, 877))).toBe(true);
				c.destroy();
			}
		});
	});

	test("NBD_OPT_ABORT is acknowledged, then the server closes; a silent client times out", async () => {
		await withServer({ handshakeTimeoutMs: 300 }, async ({ path, logs }) => {
			const c = await Raw.open(path);
			await hello(c);
			c.send(encodeOption(NBD_OPT_ABORT));
			const r = await optReply(c);
			expect([r.option, r.type]).toEqual([NBD_OPT_ABORT, NBD_REP_ACK]);
			expect(await c.closesWithin()).toBe(true);

			const slow = await Raw.open(path);
			await slow.read(18);
			expect(await slow.closesWithin(3000)).toBe(true);
			expect(logs.some((l) => l.includes("handshake not finished"))).toBe(true);
		});
	});
});

describe("transmission", () => {
	test("reads are answered as they complete: a slow read does not hold back the others", async () => {
		let g = gate();
		const source = memorySource(DISK, {
			gate: (offset) => (offset === 0 ? g.wait : undefined),
		});
		await withServer({ source }, async ({ path }) => {
			for (const structured of [false, true]) {
				g = gate();
				const c = await Raw.open(path);
				await go(c, { structured });
				const slow = request(c, NBD_CMD_READ, 0, 4096);
				const fast = [1, 2, 3].map((i) =>
					request(c, NBD_CMD_READ, i * 65536, 4096),
				);
				const first = await replies(c, fast);
				expect(first.byCookie.size).toBe(3);
				g.open();
				const last = await one(c, slow);
				expect(last.data.equals(DISK.subarray(0, 4096))).toBe(true);
				for (const f of fast)
					expect(
						first.byCookie
							.get(f.cookie)
							?.data.equals(DISK.subarray(f.offset, f.offset + 4096)),
					).toBe(true);
				c.destroy();
			}
		});
	});

	test("errors: past the end, too long, bad flags, writes, unknown commands; the connection keeps serving", async () => {
		await withServer({ maxBlock: MiB }, async ({ path, server }) => {
			for (const structured of [false, true]) {
				const c = await Raw.open(path);
				await go(c, { structured });
				const size = DISK.length;
				const cases: [Req, number][] = [
					[request(c, NBD_CMD_READ, size - 100, 200), NBD_EINVAL],
					[request(c, NBD_CMD_READ, 2n ** 64n - 1n, 1), NBD_EINVAL],
					[request(c, NBD_CMD_READ, 0, MiB + 1), NBD_EINVAL],
					[request(c, NBD_CMD_READ, 0, 0xffffffff), NBD_EINVAL],
					[request(c, NBD_CMD_READ, 0, 512, 0x8000), NBD_EINVAL],
					[request(c, NBD_CMD_READ, 0, 512, NBD_CMD_FLAG_FUA), NBD_EINVAL],
					[
						request(c, NBD_CMD_WRITE, 0, 4096, 0, Buffer.alloc(4096, 1)),
						NBD_EPERM,
					],
					[
						request(c, NBD_CMD_WRITE, 0, 3, 0x40, Buffer.from("abc")),
						NBD_EINVAL,
					],
					[request(c, NBD_CMD_TRIM, 0, 4096), NBD_EPERM],
					[request(c, NBD_CMD_WRITE_ZEROES, 0, 4096), NBD_EPERM],
					[request(c, NBD_CMD_FLUSH, 0, 0), 0],
					[request(c, NBD_CMD_CACHE, 0, 65536), 0],
					[request(c, NBD_CMD_CACHE, size, 1), NBD_EINVAL],
					[request(c, 7, 0, 4096), NBD_EINVAL], // NBD_CMD_BLOCK_STATUS: not negotiated
					[request(c, 99, 0, 0), NBD_EINVAL],
					[request(c, NBD_CMD_READ, size - 10, 10), 0],
					[request(c, NBD_CMD_READ, 5, 0), 0],
				];
				// DF is only valid once structured replies are negotiated
				cases.push([
					request(c, NBD_CMD_READ, 0, 512, NBD_CMD_FLAG_DF),
					structured ? 0 : NBD_EINVAL,
				]);
				const got = await replies(
					c,
					cases.map(([r]) => r),
				);
				for (const [r, error] of cases) {
					const x = got.byCookie.get(r.cookie) as Result;
					expect({ type: r.type, offset: r.offset, error: x.error }).toEqual({
						type: r.type,
						offset: r.offset,
						error,
					});
					if (structured && error !== 0)
						expect(x.messages[0]?.length).toBeGreaterThan(0);
				}
				const tail = got.byCookie.get(
					cases[15]?.[0].cookie as bigint,
				) as Result;
				expect(tail.data.equals(DISK.subarray(size - 10))).toBe(true);
				const after = await one(c, request(c, NBD_CMD_READ, 4096, 4096));
				expect(after.data.equals(DISK.subarray(4096, 8192))).toBe(true);
				c.destroy();
			}
			expect(server.stats.errors).toBeGreaterThanOrEqual(24);
		});
	});

	test("minimum block size: unaligned requests are EINVAL", async () => {
		await withServer({ minBlock: 512 }, async ({ path }) => {
			const c = await Raw.open(path);
			await go(c);
			expect((await one(c, request(c, NBD_CMD_READ, 100, 512))).error).toBe(
				NBD_EINVAL,
			);
			expect((await one(c, request(c, NBD_CMD_READ, 512, 100))).error).toBe(
				NBD_EINVAL,
			);
			expect((await one(c, request(c, NBD_CMD_READ, 1024, 512))).error).toBe(0);
			c.destroy();
		});
	});

	test("NBD_CMD_DISC: reads in flight are answered, then the server closes", async () => {
		const g = gate();
		const source = memorySource(DISK, { gate: () => g.wait });
		await withServer({ source }, async ({ path }) => {
			const c = await Raw.open(path);
			await go(c);
			const reqs = [0, 1, 2, 3].map((i) =>
				request(c, NBD_CMD_READ, i * MiB, 65536),
			);
			request(c, NBD_CMD_DISC, 0, 0);
			await until(() => source.active === 4);
			await new Promise((r) => setTimeout(r, 50));
			expect(c.closed).toBe(false);
			g.open();
			const got = await replies(c, reqs);
			for (const r of reqs)
				expect(
					got.byCookie
						.get(r.cookie)
						?.data.equals(DISK.subarray(r.offset, r.offset + 65536)),
				).toBe(true);
			expect(await c.closesWithin()).toBe(true);
		});
	});
});

describe("structured replies", () => {
	test("a large unaligned read comes in chunks that cover it exactly; DF gives one chunk", async () => {
		await withServer({ replyChunk: MiB }, async ({ path }) => {
			const c = await Raw.open(path);
			await go(c, { structured: true });
			const off = 3 * MiB - 1000;
			const len = 5 * MiB + 3000;
			const r = await one(c, request(c, NBD_CMD_READ, off, len));
			expect(r.error).toBe(0);
			expect(r.chunks).toEqual(Array(7).fill("offset-data"));
			expect(r.data.equals(DISK.subarray(off, off + len))).toBe(true);
			const df = await one(
				c,
				request(c, NBD_CMD_READ, off, len, NBD_CMD_FLAG_DF),
			);
			expect(df.chunks).toEqual(["offset-data"]);
			expect(df.data.equals(DISK.subarray(off, off + len))).toBe(true);
			const empty = await one(c, request(c, NBD_CMD_READ, 0, 0));
			expect(empty.chunks).toEqual(["none"]);
			c.destroy();
		});
	});

	test("a failing range: EIO for the pieces that failed, data for the rest, a log line with the code only", async () => {
		const bad = 8 * MiB;
		const source = memorySource(DISK, {
			fails: (o, n) => o < bad + 4096 && bad < o + n,
		});
		const reads: [number, boolean][] = [];
		await withServer(
			{ source, replyChunk: MiB, onRead: (n, _ms, ok) => reads.push([n, ok]) },
			async ({ path, logs, server }) => {
				const c = await Raw.open(path);
				await go(c, { structured: true });
				const r = await one(c, request(c, NBD_CMD_READ, 6 * MiB, 4 * MiB));
				expect(r.error).toBe(NBD_EIO);
				expect(r.errorOffsets).toEqual([bad]);
				expect(r.messages[0]).toContain("AUTH_FAILED");
				expect(r.chunks.filter((t) => t === "offset-data")).toHaveLength(3);
				// the pieces that did read are there
				expect(
					r.data.subarray(0, 2 * MiB).equals(DISK.subarray(6 * MiB, bad)),
				).toBe(true);
				expect(
					r.data.subarray(3 * MiB).equals(DISK.subarray(bad + MiB, 10 * MiB)),
				).toBe(true);
				const ok = await one(c, request(c, NBD_CMD_READ, 0, MiB));
				expect(ok.data.equals(DISK.subarray(0, MiB))).toBe(true);

				const s = await Raw.open(path);
				await go(s);
				expect((await one(s, request(s, NBD_CMD_READ, bad, 512))).error).toBe(
					NBD_EIO,
				);
				const fine = await one(s, request(s, NBD_CMD_READ, bad - 512, 512));
				expect(fine.data.equals(DISK.subarray(bad - 512, bad))).toBe(true);
				c.destroy();
				s.destroy();

				const failures = logs.filter((l) => l.includes("failed"));
				expect(failures).toHaveLength(2);
				for (const l of failures) expect(l).toContain("AUTH_FAILED");
				expect([...logs, ...r.messages].some((l) => l.includes(SECRET))).toBe(
					false,
				);
				expect(server.stats.errors).toBe(2);
				expect(reads).toContainEqual([4 * MiB, false]);
				expect(reads).toContainEqual([MiB, true]);
			},
		);
	});
});

describe("robustness", () => {
	test("clients that vanish with reads in flight do not disturb the server", async () => {
		const g = gate();
		const source = memorySource(DISK, {
			gate: (o) => (o >= 32 * MiB ? g.wait : undefined),
		});
		await withServer({ source }, async ({ path, server, logs }) => {
			for (const [pass, structured] of [false, true].entries()) {
				const c = await Raw.open(path);
				await go(c, { structured });
				for (let i = 0; i < 20; i++)
					request(c, NBD_CMD_READ, 32 * MiB + i * MiB, MiB);
				await until(() => source.active === 20 * (pass + 1));
				// and one cut off in the middle of a write's payload
				const w = await Raw.open(path);
				await go(w, { structured });
				request(w, NBD_CMD_WRITE, 0, MiB, 0, Buffer.alloc(1000));
				await new Promise((r) => setTimeout(r, 20));
				c.destroy();
				w.destroy();
				await c.done;
			}
			await until(() => server.stats.connections === 0);
			g.open();
			await until(() => source.active === 0);
			expect(logs.some((l) => l.includes("replies dropped"))).toBe(true);
			const ok = await Raw.open(path);
			await go(ok);
			const r = await one(ok, request(ok, NBD_CMD_READ, 40 * MiB, MiB));
			expect(r.data.equals(DISK.subarray(40 * MiB, 41 * MiB))).toBe(true);
			ok.destroy();
		});
	});

	test("back-pressure: no more than maxInFlight reads reach the source", async () => {
		const g = gate();
		const source = memorySource(DISK, { gate: () => g.wait });
		await withServer({ source, maxInFlight: 4 }, async ({ path }) => {
			const c = await Raw.open(path);
			await go(c);
			const reqs = Array.from({ length: 40 }, (_, i) =>
				request(c, NBD_CMD_READ, i * 8192, 4096),
			);
			await until(() => source.active === 4);
			await new Promise((r) => setTimeout(r, 50));
			expect(source.active).toBe(4);
			g.open();
			const got = await replies(c, reqs);
			expect(got.byCookie.size).toBe(40);
			expect(source.maxActive).toBe(4);
			for (const r of reqs)
				expect(
					got.byCookie
						.get(r.cookie)
						?.data.equals(DISK.subarray(r.offset, r.offset + 4096)),
				).toBe(true);
			c.destroy();
		});
	});

	test("many clients at once; beyond maxClients a connection is refused", async () => {
		await withServer({ maxClients: 48 }, async ({ path, server }) => {
			const clients = await Promise.all(
				Array.from({ length: 48 }, () => Raw.open(path)),
			);
			await Promise.all(clients.map((c) => go(c)));
			const extra = await Raw.open(path);
			expect(await extra.closesWithin()).toBe(true);
			expect(server.stats.connections).toBe(48);
			await Promise.all(
				clients.map(async (c, i) => {
					const off = i * 997 * 13;
					const r = await one(c, request(c, NBD_CMD_READ, off, 65536));
					expect(r.data.equals(DISK.subarray(off, off + 65536))).toBe(true);
				}),
			);
			clients[0]?.destroy();
			await clients[0]?.done;
			await until(() => server.stats.connections === 47);
			const again = await Raw.open(path);
			await go(again);
			for (const c of [...clients, again]) c.destroy();
		});
	});

	test("close(): in-flight reads are answered, later requests get ESHUTDOWN, the socket file goes", async () => {
		const g = gate();
		const source = memorySource(DISK, { gate: () => g.wait });
		const logs: string[] = [];
		const server = new NbdServer({ source, log: (l) => logs.push(l) });
		const path = join(await tempDir(), "nbd.sock");
		await server.listen({ unix: path });
		const c = await Raw.open(path);
		await go(c);
		const negotiating = await Raw.open(path);
		await negotiating.read(18);
		const inflight = request(c, NBD_CMD_READ, 0, 4096);
		await until(() => source.active === 1);
		const closing = server.close(5000);
		expect(await negotiating.closesWithin()).toBe(true);
		const late = request(c, NBD_CMD_READ, 4096, 4096);
		const lateReply = await one(c, late);
		expect(lateReply.error).toBe(NBD_ESHUTDOWN);
		g.open();
		const r = await one(c, inflight);
		expect(r.data.equals(DISK.subarray(0, 4096))).toBe(true);
		expect(await c.closesWithin()).toBe(true);
		await closing;
		await expect(stat(path)).rejects.toThrow();
		await expect(Raw.open(path)).rejects.toThrow();
		expect((await rejection(server.listen({ unix: path }))).code).toBe("USAGE");
	});

	test("close() cuts connections still busy after its timeout", async () => {
		const source = memorySource(DISK, { gate: () => new Promise(() => {}) });
		const server = new NbdServer({ source });
		const path = join(await tempDir(), "nbd.sock");
		await server.listen({ unix: path });
		const c = await Raw.open(path);
		await go(c);
		request(c, NBD_CMD_READ, 0, 4096);
		await until(() => source.active === 1);
		const t0 = Date.now();
		await server.close(300);
		expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
		expect(Date.now() - t0).toBeLessThan(3000);
		expect(await c.closesWithin()).toBe(true);
		expect(server.stats.connections).toBe(0);
	});

	test("unix socket: 0600; a stale socket is replaced, a live one or a file is refused", async () => {
		const dir = await tempDir();
		const path = join(dir, "s.sock");
		// a socket file nobody listens on, as a killed server leaves it
		const py = await run("python3", [
			"-c",
			"import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])",
			path,
		]);
		expect(py.code).toBe(0);
		expect((await stat(path)).isSocket()).toBe(true);
		const a = new NbdServer({ source: memorySource(DISK) });
		await a.listen({ unix: path });
		expect((await stat(path)).mode & 0o777).toBe(0o600);
		const b = new NbdServer({ source: memorySource(DISK) });
		expect((await rejection(b.listen({ unix: path }))).code).toBe(
			"OUTPUT_EXISTS",
		);
		// a still serves
		const c = await Raw.open(path);
		await go(c);
		c.destroy();
		await a.close();
		const file = join(dir, "file");
		await writeFile(file, "keep me");
		expect((await rejection(b.listen({ unix: file }))).code).toBe(
			"OUTPUT_EXISTS",
		);
		expect(await readFile(file, "utf8")).toBe("keep me");
		await b.close();
	});

	test("options are checked", () => {
		const source = memorySource(Buffer.alloc(4096));
		for (const o of [
			{ minBlock: 3 },
			{ minBlock: 1 << 17 },
			{ preferredBlock: 256 },
			{ maxBlock: 1024 },
			{ maxInFlight: 0 },
			{ maxClients: -1 },
			{ exportName: "a\0b" },
			{ exportName: "x".repeat(5000) },
		])
			expect(thrown(() => new NbdServer({ source, ...o })).code).toBe("USAGE");
	});
});

// =================================================================================================

describe("real clients", () => {
	let server: NbdServer;
	let unixUri: string;
	let tcpUri: string;
	let dir: string;
	const source = memorySource(DISK);

	beforeAll(async () => {
		dir = await tempDir();
		server = new NbdServer({ source, description: "64 MiB of noise" });
		unixUri = (await server.listen({ unix: join(dir, "nbd.sock") })).address;
		tcpUri = (await server.listen({ host: "127.0.0.1", port: 0 })).address;
	});
	afterAll(async () => {
		await server?.close();
	});

	test("nbdinfo sees the size, read-only, multi-conn and block sizes (unix and tcp)", async () => {
		expect(unixUri).toBe(`nbd+unix:///dadi?socket=${join(dir, "nbd.sock")}`);
		expect(tcpUri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/dadi$/);
		for (const uri of [unixUri, tcpUri]) {
			const r = await run("nbdinfo", ["--json", uri]);
			expect(r.code, r.stderr).toBe(0);
			const j = JSON.parse(r.stdout);
			expect(j.protocol).toBe("newstyle-fixed");
			expect(j.structured).toBe(true);
			const e = j.exports[0];
			expect(e["export-name"]).toBe("dadi");
			expect(e["export-size"]).toBe(DISK.length);
			expect(e.description).toBe("64 MiB of noise");
			expect(e.is_read_only).toBe(true);
			expect(e.can_multi_conn).toBe(true);
			expect(e.can_flush).toBe(true);
			expect(e.can_trim).toBe(false);
			expect(e.block_size_preferred).toBe(4096);
			expect(e.block_size_maximum).toBe(32 * MiB);
		}
	});

	test("nbdcopy and qemu-img convert make byte-identical copies", async () => {
		const a = join(dir, "nbdcopy.img");
		const r1 = await run("nbdcopy", [unixUri, a]);
		expect(r1.code, r1.stderr).toBe(0);
		expect(await sameAs(a, DISK)).toBe(true);
		const b = join(dir, "qemu.img");
		const r2 = await run("qemu-img", [
			"convert",
			"-f",
			"raw",
			"-O",
			"raw",
			unixUri,
			b,
		]);
		expect(r2.code, r2.stderr).toBe(0);
		expect(await sameAs(b, DISK)).toBe(true);
	});

	test("over tcp: nbdcopy with 4 connections and 64 requests in flight, small requests", async () => {
		const before = source.maxActive;
		const a = join(dir, "tcp.img");
		const r = await run("nbdcopy", [
			"--connections=4",
			"--requests=64",
			"--request-size=65536",
			tcpUri,
			a,
		]);
		expect(r.code, r.stderr).toBe(0);
		expect(await sameAs(a, DISK)).toBe(true);
		expect(Math.max(before, source.maxActive)).toBeGreaterThan(8);
	});

	test("qemu-io: hundreds of random reads in flight, each checked against the content", async () => {
		// block i of 4 KiB is filled with one byte value, so qemu-io's `-P` checks every byte
		const B = 4096;
		const size = 16 * MiB;
		const pattern = (i: number) => (i * 37 + 11) & 0xff;
		const content = Buffer.alloc(size);
		for (let i = 0; i < size / B; i++)
			content.fill(pattern(i), i * B, (i + 1) * B);
		const src = memorySource(content);
		await withServer({ source: src }, async ({ address }) => {
			const rnd = prng("qemu-io offsets", 4 * 400);
			const args = ["-r", "-f", "raw", address];
			for (let k = 0; k < 400; k++) {
				const i = rnd.readUInt32BE(k * 4) % (size / B);
				args.push("-c", `aio_read -P ${pattern(i)} ${i * B} ${B}`);
			}
			args.push("-c", "aio_flush");
			// a wrong pattern must be caught: block 1 does not hold block 0's byte
			args.push("-c", `read -P ${pattern(0)} ${B} ${B}`);
			const r = await run("qemu-io", args);
			const out = r.stdout + r.stderr;
			// (qemu-io reports the read, then the failed check)
			expect(out.match(/read 4096\/4096 bytes/g)?.length).toBe(401);
			expect(out.match(/Pattern verification failed/g)?.length).toBe(1);
			expect(out).toContain(`Pattern verification failed at offset ${B}`);
			expect(src.maxActive).toBeGreaterThan(1);
		});
	});

	test("a source that fails a range: clients see EIO there and read everything else", async () => {
		const bad = 5 * MiB;
		const failing = memorySource(DISK.subarray(0, 16 * MiB), {
			fails: (o, n) => o < bad + 65536 && bad < o + n,
		});
		await withServer({ source: failing }, async ({ address, logs }) => {
			const r = await run("qemu-io", [
				"-r",
				"-f",
				"raw",
				address,
				"-c",
				`read ${bad - MiB} 65536`,
				"-c",
				`read ${bad} 65536`,
				"-c",
				`read ${bad + MiB} 65536`,
			]);
			const out = r.stdout + r.stderr;
			expect(out.match(/read 65536\/65536 bytes/g)?.length).toBe(2);
			expect(out).toMatch(/read failed: Input\/output error/);
			const copy = await run("nbdcopy", [address, join(dir, "failing.img")]);
			expect(copy.code).not.toBe(0);
			expect(copy.stderr).toMatch(/Input\/output error/);
			expect(logs.some((l) => l.includes("AUTH_FAILED"))).toBe(true);
			// the server is still fine for reads that avoid the range
			const ok = await run("qemu-io", [
				"-r",
				"-f",
				"raw",
				address,
				"-c",
				`read 0 ${MiB}`,
			]);
			expect(ok.stdout).toContain(`read ${MiB}/${MiB} bytes`);
		});
	});

	test("simple replies only (structured replies disabled): nbdcopy still copies exactly", async () => {
		await withServer(
			{ source: memorySource(DISK), structuredReplies: false },
			async ({ address }) => {
				const info = await run("nbdinfo", ["--json", address]);
				expect(JSON.parse(info.stdout).structured).toBe(false);
				const f = join(dir, "simple.img");
				const r = await run("nbdcopy", ["--requests=32", address, f]);
				expect(r.code, r.stderr).toBe(0);
				expect(await sameAs(f, DISK)).toBe(true);
			},
		);
	});

	test("a sealed image served from its virtual disk copies out byte-identical", async () => {
		const d = await tempDir();
		const size = 8 * MiB;
		const disk = join(d, "disk.img");
		const content = await writeDisk(disk, size, [
			{ at: 0, bytes: prng("sealed-a", 3 * MiB) },
			{ at: 5 * MiB, bytes: prng("sealed-b", 2 * MiB + 123) },
		]);
		const { key } = await writeKey(d);
		const oci = join(d, "oci");
		await sealInto(disk, oci, "v1", key, { chunkSize: 65536 });
		const img = await openSealedImage(
			{ transport: "oci", dir: oci, tag: "v1" },
			key,
		);
		try {
			await withServer({ source: img.disk }, async ({ address }) => {
				const a = join(d, "out-nbdcopy.img");
				const r1 = await run("nbdcopy", [address, a]);
				expect(r1.code, r1.stderr).toBe(0);
				expect(await sameAs(a, content)).toBe(true);
				const b = join(d, "out-qemu.img");
				const r2 = await run("qemu-img", [
					"convert",
					"-f",
					"raw",
					"-O",
					"raw",
					address,
					b,
				]);
				expect(r2.code, r2.stderr).toBe(0);
				expect(await sameAs(b, content)).toBe(true);
			});
		} finally {
			await img.close();
		}
	});
});
