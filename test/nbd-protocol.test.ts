/** The NBD wire codec: round trips, fixed layouts from the spec, and fuzzed input to every decoder. */
import fc from "fast-check";
import { describe, expect, test } from "vitest";
import { DadiError } from "../src/errors.js";
import { ByteQueue } from "../src/guest/nbd/byte-queue.js";
import {
	decodeChunkHeader,
	decodeChunkPayload,
	decodeClientFlags,
	decodeExportNameReply,
	decodeGreeting,
	decodeInfo,
	decodeInfoRequest,
	decodeOption,
	decodeOptionHeader,
	decodeOptionReply,
	decodeOptionReplyHeader,
	decodeRequest,
	decodeServerReply,
	decodeSimpleReply,
	encodeChunkHeader,
	encodeClientFlags,
	encodeErrorChunk,
	encodeExportNameReply,
	encodeGreeting,
	encodeInfo,
	encodeInfoRequest,
	encodeNoneChunk,
	encodeOffsetDataHeader,
	encodeOption,
	encodeOptionError,
	encodeOptionReply,
	encodeRequest,
	encodeServerReply,
	encodeSimpleReply,
	isErrorChunk,
	isOptionError,
	NBD_CMD_READ,
	NBD_EINVAL,
	NBD_EIO,
	NBD_FLAG_C_FIXED_NEWSTYLE,
	NBD_FLAG_C_NO_ZEROES,
	NBD_FLAG_FIXED_NEWSTYLE,
	NBD_FLAG_NO_ZEROES,
	NBD_INFO_BLOCK_SIZE,
	NBD_INFO_NAME,
	NBD_OPT_GO,
	NBD_REP_ACK,
	NBD_REP_ERR_UNKNOWN,
	NBD_REP_ERR_UNSUP,
	NBD_REPLY_FLAG_DONE,
	NBD_REPLY_TYPE_ERROR,
	NBD_REPLY_TYPE_ERROR_OFFSET,
	NBD_REPLY_TYPE_NONE,
	NBD_REPLY_TYPE_OFFSET_DATA,
	NBD_REPLY_TYPE_OFFSET_HOLE,
	type NbdInfo,
} from "../src/guest/nbd/protocol.js";
import { thrown } from "./helpers.js";

const hex = (b: Buffer) => b.toString("hex");

describe("fixed layouts (doc/proto.md)", () => {
	test("greeting: NBDMAGIC, IHAVEOPT, handshake flags", () => {
		const g = encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
		expect(g.subarray(0, 16).toString("latin1")).toBe("NBDMAGICIHAVEOPT");
		expect(hex(g.subarray(16))).toBe("0003");
		expect(decodeGreeting(g).handshakeFlags).toBe(3);
	});

	test("option request, option reply, request and reply magics", () => {
		expect(hex(encodeOption(NBD_OPT_GO, Buffer.from("ab")))).toBe(
			`${Buffer.from("IHAVEOPT").toString("hex")}00000007000000026162`,
		);
		expect(hex(encodeOptionReply(NBD_OPT_GO, NBD_REP_ACK))).toBe(
			"0003e889045565a9000000070000000100000000",
		);
		expect(
			hex(
				encodeRequest({
					flags: 0,
					type: NBD_CMD_READ,
					cookie: 0x0102030405060708n,
					offset: 4096n,
					length: 512,
				}),
			),
		).toBe("2560951300000000010203040506070800000000000010000000" + "0200");
		expect(hex(encodeSimpleReply(0, 7n))).toBe(
			"674466980000000000000000" + "00000007",
		);
		expect(
			hex(encodeChunkHeader({ flags: 1, type: 0, cookie: 7n, length: 0 })),
		).toBe("668e33ef000100000000000000000007" + "00000000");
	});

	test("NBD_OPT_EXPORT_NAME reply: 124 zero bytes unless NO_ZEROES", () => {
		expect(encodeExportNameReply(1 << 20, 3, false)).toHaveLength(134);
		expect(encodeExportNameReply(1 << 20, 3, true)).toHaveLength(10);
		const withZeroes = encodeExportNameReply(1 << 20, 3, false);
		withZeroes[100] = 1;
		expect(thrown(() => decodeExportNameReply(withZeroes, false)).code).toBe(
			"INPUT_INVALID",
		);
	});

	test("reply type helpers", () => {
		expect(isOptionError(NBD_REP_ERR_UNSUP)).toBe(true);
		expect(isOptionError(NBD_REP_ACK)).toBe(false);
		expect(isErrorChunk(NBD_REPLY_TYPE_ERROR_OFFSET)).toBe(true);
		expect(isErrorChunk(NBD_REPLY_TYPE_OFFSET_DATA)).toBe(false);
	});
});

describe("round trips", () => {
	test("client flags; unknown client flags are refused", () => {
		for (const f of [
			0,
			NBD_FLAG_C_FIXED_NEWSTYLE,
			NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES,
		])
			expect(decodeClientFlags(encodeClientFlags(f))).toBe(f);
		expect(thrown(() => decodeClientFlags(encodeClientFlags(4))).code).toBe(
			"INPUT_INVALID",
		);
		expect(
			thrown(() => decodeClientFlags(encodeClientFlags(0x80000001))).code,
		).toBe("INPUT_INVALID");
	});

	test("options and option replies", () => {
		fc.assert(
			fc.property(
				fc.nat({ max: 0xffffffff }),
				fc.uint8Array({ maxLength: 300 }),
				(option, data) => {
					const wire = encodeOption(option, Buffer.from(data));
					const h = decodeOptionHeader(wire.subarray(0, 16));
					expect(h).toEqual({ option, length: data.length });
					const o = decodeOption(wire);
					expect(o.option).toBe(option);
					expect(o.data.equals(Buffer.from(data))).toBe(true);
					const r = encodeOptionReply(option, NBD_REP_ERR_UNKNOWN, o.data);
					const d = decodeOptionReply(r);
					expect(decodeOptionReplyHeader(r.subarray(0, 20))).toEqual({
						option,
						type: NBD_REP_ERR_UNKNOWN,
						length: data.length,
					});
					expect(d.data.equals(o.data)).toBe(true);
				},
			),
		);
	});

	test("NBD_OPT_INFO/GO data", () => {
		fc.assert(
			fc.property(
				fc.string({ maxLength: 100 }).filter((s) => !s.includes("\0")),
				fc.array(fc.nat({ max: 0xffff }), { maxLength: 20 }),
				(name, requests) => {
					expect(
						decodeInfoRequest(encodeInfoRequest({ name, requests })),
					).toEqual({ name, requests });
				},
			),
		);
	});

	test("NBD_REP_SERVER data", () => {
		expect(decodeServerReply(encodeServerReply("dadi", "a disk"))).toEqual({
			name: "dadi",
			description: "a disk",
		});
		expect(decodeServerReply(encodeServerReply(""))).toEqual({
			name: "",
			description: "",
		});
	});

	test("NBD_INFO items", () => {
		const items: NbdInfo[] = [
			{ type: "export", size: 2 ** 40 + 5, flags: 0x1f3 },
			{ type: "name", name: "dadi" },
			{ type: "description", description: "sealed image ✓" },
			{ type: "block-size", minimum: 1, preferred: 4096, maximum: 1 << 25 },
			{ type: "unknown", code: 99, data: Buffer.from([1, 2, 3]) },
		];
		for (const i of items) expect(decodeInfo(encodeInfo(i))).toEqual(i);
		expect(encodeInfo(items[0] as NbdInfo)).toHaveLength(12);
		expect(encodeInfo(items[3] as NbdInfo)).toHaveLength(14);
	});

	test("requests", () => {
		fc.assert(
			fc.property(
				fc.nat({ max: 0xffff }),
				fc.nat({ max: 0xffff }),
				fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
				fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
				fc.nat({ max: 0xffffffff }),
				(flags, type, cookie, offset, length) => {
					const r = { flags, type, cookie, offset, length };
					expect(decodeRequest(encodeRequest(r))).toEqual(r);
				},
			),
		);
	});

	test("simple replies and structured chunks", () => {
		expect(
			decodeSimpleReply(encodeSimpleReply(NBD_EIO, 2n ** 64n - 1n)),
		).toEqual({ error: NBD_EIO, cookie: 2n ** 64n - 1n });
		const none = encodeNoneChunk(9n);
		expect(decodeChunkHeader(none)).toEqual({
			flags: NBD_REPLY_FLAG_DONE,
			type: NBD_REPLY_TYPE_NONE,
			cookie: 9n,
			length: 0,
		});
		const data = Buffer.from("hello");
		const head = encodeOffsetDataHeader(0, 5n, 4096, data.length);
		const h = decodeChunkHeader(head.subarray(0, 20));
		expect(h).toEqual({
			flags: 0,
			type: NBD_REPLY_TYPE_OFFSET_DATA,
			cookie: 5n,
			length: 8 + data.length,
		});
		const payload = Buffer.concat([head.subarray(20), data]);
		expect(decodeChunkPayload(h.type, payload)).toEqual({
			type: "offset-data",
			offset: 4096,
			data,
		});
		for (const offset of [undefined, 123456]) {
			const e = encodeErrorChunk(
				NBD_REPLY_FLAG_DONE,
				5n,
				NBD_EINVAL,
				"bad ✓",
				offset,
			);
			const eh = decodeChunkHeader(e.subarray(0, 20));
			expect(eh.type).toBe(
				offset === undefined
					? NBD_REPLY_TYPE_ERROR
					: NBD_REPLY_TYPE_ERROR_OFFSET,
			);
			expect(eh.length).toBe(e.length - 20);
			expect(decodeChunkPayload(eh.type, e.subarray(20))).toEqual({
				type: "error",
				error: NBD_EINVAL,
				message: "bad ✓",
				...(offset === undefined ? {} : { offset }),
			});
		}
		const hole = Buffer.alloc(12);
		hole.writeBigUInt64BE(512n, 0);
		hole.writeUInt32BE(1024, 8);
		expect(decodeChunkPayload(NBD_REPLY_TYPE_OFFSET_HOLE, hole)).toEqual({
			type: "offset-hole",
			offset: 512,
			size: 1024,
		});
	});

	test("error messages are cut to 4096 bytes on a character boundary", () => {
		const e = encodeErrorChunk(0, 1n, NBD_EIO, "é".repeat(3000));
		const p = decodeChunkPayload(NBD_REPLY_TYPE_ERROR, e.subarray(20));
		expect(p.type === "error" && p.message).toBe("é".repeat(2048));
		const r = decodeOptionReply(encodeOptionError(1, 2, "x".repeat(5000)));
		expect(r.data).toHaveLength(4096);
	});

	test("strings: NUL, invalid UTF-8 and over-long names are refused", () => {
		const withName = (name: Buffer) => {
			const b = Buffer.alloc(4 + name.length + 2);
			b.writeUInt32BE(name.length, 0);
			name.copy(b, 4);
			return b;
		};
		for (const bad of [
			Buffer.from("a\0b"),
			Buffer.from([0xc3, 0x28]),
			Buffer.alloc(4097, 0x61),
		])
			expect(thrown(() => decodeInfoRequest(withName(bad))).code).toBe(
				"INPUT_INVALID",
			);
		expect(thrown(() => encodeServerReply("a\0")).code).toBe("USAGE");
	});
});

describe("malformed input: only DadiError(INPUT_INVALID), never another exception", () => {
	/** Each decoder, called as the server or a client would call it. */
	const decoders: [string, (b: Buffer) => unknown][] = [
		["greeting", decodeGreeting],
		["client flags", decodeClientFlags],
		["option header", decodeOptionHeader],
		["option", decodeOption],
		["option reply header", decodeOptionReplyHeader],
		["option reply", decodeOptionReply],
		["info request", decodeInfoRequest],
		["server reply", decodeServerReply],
		["info", decodeInfo],
		["export name reply", (b) => decodeExportNameReply(b, b.length === 10)],
		["request", decodeRequest],
		["simple reply", decodeSimpleReply],
		["chunk header", decodeChunkHeader],
		...[
			NBD_REPLY_TYPE_NONE,
			NBD_REPLY_TYPE_OFFSET_DATA,
			NBD_REPLY_TYPE_OFFSET_HOLE,
			NBD_REPLY_TYPE_ERROR,
			NBD_REPLY_TYPE_ERROR_OFFSET,
			0x8005,
			77,
		].map(
			(t) =>
				[`chunk payload ${t}`, (b: Buffer) => decodeChunkPayload(t, b)] as [
					string,
					(b: Buffer) => unknown,
				],
		),
	];

	/** Valid messages of each kind, to mutate. */
	const valid: Buffer[] = [
		encodeGreeting(3),
		encodeClientFlags(3),
		encodeOption(
			NBD_OPT_GO,
			encodeInfoRequest({ name: "dadi", requests: [3] }),
		),
		encodeInfoRequest({
			name: "dadi",
			requests: [NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE],
		}),
		encodeOptionReply(
			NBD_OPT_GO,
			3,
			encodeInfo({ type: "export", size: 1, flags: 3 }),
		),
		encodeServerReply("dadi", "disk"),
		encodeInfo({
			type: "block-size",
			minimum: 1,
			preferred: 4096,
			maximum: 1 << 25,
		}),
		encodeInfo({ type: "export", size: 1 << 30, flags: 0x1f3 }),
		encodeExportNameReply(1 << 30, 0x1f3, false),
		encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 0n, length: 512 }),
		encodeSimpleReply(0, 1n),
		encodeNoneChunk(1n),
		encodeErrorChunk(1, 1n, NBD_EIO, "read failed", 4096).subarray(20),
		encodeErrorChunk(1, 1n, NBD_EIO, "read failed").subarray(20),
		Buffer.concat([
			encodeOffsetDataHeader(1, 1n, 0, 4),
			Buffer.alloc(4),
		]).subarray(20),
	];

	function onlyDadiErrors(b: Buffer): void {
		for (const [name, decode] of decoders) {
			try {
				decode(b);
			} catch (e) {
				if (!(e instanceof DadiError) || e.code !== "INPUT_INVALID")
					throw new Error(`${name} threw ${String(e)} for ${hex(b)}`);
			}
		}
	}

	test("random bytes", () => {
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
				onlyDadiErrors(Buffer.from(bytes));
			}),
			{ numRuns: 2000 },
		);
	});

	test("mutated valid messages (flipped bytes, cut, extended)", () => {
		fc.assert(
			fc.property(
				fc.constantFrom(...valid),
				fc.array(fc.tuple(fc.nat(), fc.nat({ max: 255 })), { maxLength: 4 }),
				fc.integer({ min: -20, max: 20 }),
				(msg, flips, resize) => {
					const b = Buffer.from(msg);
					for (const [at, v] of flips) b[at % b.length] = v;
					const n = Math.max(0, b.length + resize);
					const out = Buffer.alloc(n);
					b.copy(out, 0, 0, Math.min(n, b.length));
					onlyDadiErrors(out);
				},
			),
			{ numRuns: 3000 },
		);
	});

	test("wrong magics and lengths are refused with INPUT_INVALID", () => {
		const req = encodeRequest({
			flags: 0,
			type: 0,
			cookie: 1n,
			offset: 0n,
			length: 1,
		});
		req[0] = 0x12;
		expect(thrown(() => decodeRequest(req)).code).toBe("INPUT_INVALID");
		expect(thrown(() => decodeRequest(req.subarray(0, 27))).code).toBe(
			"INPUT_INVALID",
		);
		const opt = encodeOption(1);
		opt[7] = 0;
		expect(thrown(() => decodeOptionHeader(opt)).code).toBe("INPUT_INVALID");
		// a name length pointing past the option data
		const go = encodeInfoRequest({ name: "dadi", requests: [] });
		go.writeUInt32BE(1000, 0);
		expect(thrown(() => decodeInfoRequest(go)).code).toBe("INPUT_INVALID");
		// an info request count that does not match the bytes left
		const go2 = encodeInfoRequest({ name: "dadi", requests: [1] });
		expect(
			thrown(() => decodeInfoRequest(Buffer.concat([go2, Buffer.alloc(1)])))
				.code,
		).toBe("INPUT_INVALID");
		// an error chunk whose message length exceeds the chunk
		const e = encodeErrorChunk(1, 1n, NBD_EIO, "abc").subarray(20);
		e.writeUInt16BE(10, 4);
		expect(thrown(() => decodeChunkPayload(NBD_REPLY_TYPE_ERROR, e)).code).toBe(
			"INPUT_INVALID",
		);
		// a zero error value, a zero-sized hole
		const z = Buffer.from(encodeErrorChunk(1, 1n, NBD_EIO, "").subarray(20));
		z.writeUInt32BE(0, 0);
		expect(thrown(() => decodeChunkPayload(NBD_REPLY_TYPE_ERROR, z)).code).toBe(
			"INPUT_INVALID",
		);
		expect(
			thrown(() =>
				decodeChunkPayload(NBD_REPLY_TYPE_OFFSET_HOLE, Buffer.alloc(12)),
			).code,
		).toBe("INPUT_INVALID");
	});
});

describe("ByteQueue", () => {
	test("take and skip across chunk boundaries equal the concatenation", () => {
		fc.assert(
			fc.property(
				fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 10 }),
				fc.array(fc.tuple(fc.boolean(), fc.nat({ max: 50 })), {
					maxLength: 20,
				}),
				(chunks, ops) => {
					const q = new ByteQueue();
					for (const c of chunks) q.push(Buffer.from(c));
					let all = Buffer.concat(chunks.map((c) => Buffer.from(c)));
					for (const [isTake, n0] of ops) {
						expect(q.length).toBe(all.length);
						const n = Math.min(n0, all.length);
						if (isTake) expect(q.take(n).equals(all.subarray(0, n))).toBe(true);
						else expect(q.skip(n0)).toBe(n);
						all = all.subarray(n);
					}
					expect(q.take(q.length).equals(all)).toBe(true);
				},
			),
		);
	});
});
