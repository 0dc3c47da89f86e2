/**
 * The NBD wire protocol (NetworkBlockDevice/nbd doc/proto.md): constants and pure codecs for the
 * fixed-newstyle handshake, option haggling, NBD_INFO_* items, transmission requests and simple and
 * structured replies. No I/O. All integers are big-endian (network order).
 *
 * Every decoder takes bytes a peer sent: it checks the length and magic first and returns a typed
 * value, or throws DadiError("INPUT_INVALID"). Encoders trust their (typed) arguments except where
 * noted. Both directions are here so that tests can speak the protocol with the same codec.
 */
import { DadiError } from "../../errors.js";

// --- magic numbers -----------------------------------------------------------------------------

/** "NBDMAGIC", the first 8 bytes the server sends. */
export const NBD_INIT_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": newstyle negotiation, and the prefix of every option request. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
export const NBD_OPT_REPLY_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// --- handshake ---------------------------------------------------------------------------------

export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;
const KNOWN_CLIENT_FLAGS = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

// transmission flags (16 bits)
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// options
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

// option reply types
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
const REP_ERR = 0x80000000;
export const NBD_REP_ERR_UNSUP = REP_ERR + 1;
export const NBD_REP_ERR_POLICY = REP_ERR + 2;
export const NBD_REP_ERR_INVALID = REP_ERR + 3;
export const NBD_REP_ERR_PLATFORM = REP_ERR + 4;
export const NBD_REP_ERR_TLS_REQD = REP_ERR + 5;
export const NBD_REP_ERR_UNKNOWN = REP_ERR + 6;
export const NBD_REP_ERR_SHUTDOWN = REP_ERR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = REP_ERR + 8;
export const NBD_REP_ERR_TOO_BIG = REP_ERR + 9;

export function isOptionError(replyType: number): boolean {
	return replyType >= REP_ERR;
}

// NBD_INFO_* types
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// --- transmission ------------------------------------------------------------------------------

export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

export const NBD_REPLY_FLAG_DONE = 1 << 0;

export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

export function isErrorChunk(type: number): boolean {
	return (type & 0x8000) !== 0;
}

// error values
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

// --- sizes -------------------------------------------------------------------------------------

export const GREETING_LENGTH = 18;
export const CLIENT_FLAGS_LENGTH = 4;
export const OPTION_HEADER_LENGTH = 16;
export const OPTION_REPLY_HEADER_LENGTH = 20;
export const REQUEST_LENGTH = 28;
export const SIMPLE_REPLY_LENGTH = 16;
export const CHUNK_HEADER_LENGTH = 20;
/** Header of an NBD_REPLY_TYPE_OFFSET_DATA chunk up to its data: chunk header + 64-bit offset. */
export const OFFSET_DATA_HEADER_LENGTH = CHUNK_HEADER_LENGTH + 8;
/** The longest string (export name, description, error message) the protocol allows. */
export const MAX_STRING_LENGTH = 4096;

// --- helpers -----------------------------------------------------------------------------------

function invalid(message: string): never {
	throw new DadiError("INPUT_INVALID", `NBD: ${message}`);
}

function expectLength(buf: Buffer, n: number, what: string): void {
	if (buf.length !== n)
		invalid(`${what}: expected ${n} bytes, got ${buf.length}`);
}

function atLeast(buf: Buffer, n: number, what: string): void {
	if (buf.length < n)
		invalid(`${what}: expected at least ${n} bytes, got ${buf.length}`);
}

/** A 64-bit field as a number, refusing values beyond 2^53 (no export or offset here gets there). */
function safe64(buf: Buffer, at: number, what: string): number {
	const v = buf.readBigUInt64BE(at);
	if (v > BigInt(Number.MAX_SAFE_INTEGER)) invalid(`${what} ${v} is too large`);
	return Number(v);
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** A protocol string: valid UTF-8, no NUL, at most 4096 bytes. */
export function decodeString(bytes: Buffer, what: string): string {
	if (bytes.length > MAX_STRING_LENGTH)
		invalid(`${what} is longer than ${MAX_STRING_LENGTH} bytes`);
	if (bytes.includes(0)) invalid(`${what} contains a NUL byte`);
	try {
		return utf8.decode(bytes);
	} catch {
		return invalid(`${what} is not valid UTF-8`);
	}
}

/** The bytes of a protocol string; throws USAGE for a string the protocol cannot carry. */
export function encodeString(s: string, what: string): Buffer {
	const b = Buffer.from(s, "utf8");
	if (b.length > MAX_STRING_LENGTH || s.includes("\0"))
		throw new DadiError(
			"USAGE",
			`${what} must be at most ${MAX_STRING_LENGTH} bytes of UTF-8 without NUL`,
		);
	return b;
}

// --- handshake: greeting and client flags ------------------------------------------------------

/** S: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
export function encodeGreeting(handshakeFlags: number): Buffer {
	const b = Buffer.alloc(GREETING_LENGTH);
	b.writeBigUInt64BE(NBD_INIT_MAGIC, 0);
	b.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
	b.writeUInt16BE(handshakeFlags, 16);
	return b;
}

export function decodeGreeting(buf: Buffer): { handshakeFlags: number } {
	expectLength(buf, GREETING_LENGTH, "greeting");
	if (buf.readBigUInt64BE(0) !== NBD_INIT_MAGIC)
		invalid("greeting: bad NBDMAGIC");
	if (buf.readBigUInt64BE(8) !== NBD_OPTS_MAGIC)
		invalid("greeting: not fixed newstyle (no IHAVEOPT)");
	return { handshakeFlags: buf.readUInt16BE(16) };
}

export function encodeClientFlags(flags: number): Buffer {
	const b = Buffer.alloc(CLIENT_FLAGS_LENGTH);
	b.writeUInt32BE(flags >>> 0, 0);
	return b;
}

/** C: 32-bit client flags; an unknown flag is an error (the server must drop the connection). */
export function decodeClientFlags(buf: Buffer): number {
	expectLength(buf, CLIENT_FLAGS_LENGTH, "client flags");
	const flags = buf.readUInt32BE(0);
	if ((flags & ~KNOWN_CLIENT_FLAGS) !== 0)
		invalid(`client flags 0x${flags.toString(16)} include unknown flags`);
	return flags;
}

// --- option haggling -----------------------------------------------------------------------------

export interface OptionHeader {
	option: number;
	/** Length of the option data that follows. */
	length: number;
}

/** C: IHAVEOPT, option, length, data. */
export function encodeOption(option: number, data: Buffer = EMPTY): Buffer {
	const b = Buffer.alloc(OPTION_HEADER_LENGTH + data.length);
	b.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
	b.writeUInt32BE(option >>> 0, 8);
	b.writeUInt32BE(data.length, 12);
	data.copy(b, OPTION_HEADER_LENGTH);
	return b;
}

export function decodeOptionHeader(buf: Buffer): OptionHeader {
	expectLength(buf, OPTION_HEADER_LENGTH, "option header");
	if (buf.readBigUInt64BE(0) !== NBD_OPTS_MAGIC)
		invalid("option header: bad IHAVEOPT magic");
	return { option: buf.readUInt32BE(8), length: buf.readUInt32BE(12) };
}

/** A whole option request (header and exactly its data). */
export function decodeOption(buf: Buffer): { option: number; data: Buffer } {
	atLeast(buf, OPTION_HEADER_LENGTH, "option");
	const h = decodeOptionHeader(buf.subarray(0, OPTION_HEADER_LENGTH));
	expectLength(buf, OPTION_HEADER_LENGTH + h.length, "option");
	return { option: h.option, data: buf.subarray(OPTION_HEADER_LENGTH) };
}

export interface OptionReplyHeader {
	option: number;
	type: number;
	length: number;
}

/** S: reply magic, option, reply type, length, data. */
export function encodeOptionReply(
	option: number,
	type: number,
	data: Buffer = EMPTY,
): Buffer {
	const b = Buffer.alloc(OPTION_REPLY_HEADER_LENGTH + data.length);
	b.writeBigUInt64BE(NBD_OPT_REPLY_MAGIC, 0);
	b.writeUInt32BE(option >>> 0, 8);
	b.writeUInt32BE(type >>> 0, 12);
	b.writeUInt32BE(data.length, 16);
	data.copy(b, OPTION_REPLY_HEADER_LENGTH);
	return b;
}

/** An option error reply carrying a message for people (truncated to the protocol's limit). */
export function encodeOptionError(
	option: number,
	type: number,
	message: string,
): Buffer {
	return encodeOptionReply(option, type, messageBytes(message));
}

export function decodeOptionReplyHeader(buf: Buffer): OptionReplyHeader {
	expectLength(buf, OPTION_REPLY_HEADER_LENGTH, "option reply header");
	if (buf.readBigUInt64BE(0) !== NBD_OPT_REPLY_MAGIC)
		invalid("option reply: bad magic");
	return {
		option: buf.readUInt32BE(8),
		type: buf.readUInt32BE(12),
		length: buf.readUInt32BE(16),
	};
}

export function decodeOptionReply(
	buf: Buffer,
): OptionReplyHeader & { data: Buffer } {
	atLeast(buf, OPTION_REPLY_HEADER_LENGTH, "option reply");
	const h = decodeOptionReplyHeader(
		buf.subarray(0, OPTION_REPLY_HEADER_LENGTH),
	);
	expectLength(buf, OPTION_REPLY_HEADER_LENGTH + h.length, "option reply");
	return { ...h, data: buf.subarray(OPTION_REPLY_HEADER_LENGTH) };
}

/** The data of NBD_OPT_INFO and NBD_OPT_GO. */
export interface InfoRequest {
	name: string;
	/** NBD_INFO_* types requested (in the client's order). */
	requests: number[];
}

export function encodeInfoRequest(r: InfoRequest): Buffer {
	const name = encodeString(r.name, "export name");
	const b = Buffer.alloc(4 + name.length + 2 + 2 * r.requests.length);
	b.writeUInt32BE(name.length, 0);
	name.copy(b, 4);
	b.writeUInt16BE(r.requests.length, 4 + name.length);
	r.requests.forEach((t, i) => {
		b.writeUInt16BE(t, 4 + name.length + 2 + 2 * i);
	});
	return b;
}

export function decodeInfoRequest(data: Buffer): InfoRequest {
	atLeast(data, 6, "NBD_OPT_INFO/GO data");
	const nameLength = data.readUInt32BE(0);
	if (nameLength > data.length - 6)
		invalid("NBD_OPT_INFO/GO: the name length exceeds the option data");
	const name = decodeString(data.subarray(4, 4 + nameLength), "export name");
	const count = data.readUInt16BE(4 + nameLength);
	const rest = data.length - 4 - nameLength - 2;
	if (rest !== 2 * count)
		invalid(
			`NBD_OPT_INFO/GO: ${count} information requests need ${2 * count} bytes, the option has ${rest}`,
		);
	const requests: number[] = [];
	for (let i = 0; i < count; i++)
		requests.push(data.readUInt16BE(4 + nameLength + 2 + 2 * i));
	return { name, requests };
}

/** NBD_REP_SERVER data: an export name and an optional description after it. */
export function encodeServerReply(name: string, description = ""): Buffer {
	const n = encodeString(name, "export name");
	const d = encodeString(description, "description");
	const b = Buffer.alloc(4 + n.length + d.length);
	b.writeUInt32BE(n.length, 0);
	n.copy(b, 4);
	d.copy(b, 4 + n.length);
	return b;
}

export function decodeServerReply(data: Buffer): {
	name: string;
	description: string;
} {
	atLeast(data, 4, "NBD_REP_SERVER data");
	const n = data.readUInt32BE(0);
	if (n > data.length - 4)
		invalid("NBD_REP_SERVER: the name length exceeds the reply");
	return {
		name: decodeString(data.subarray(4, 4 + n), "export name"),
		description: decodeString(data.subarray(4 + n), "export description"),
	};
}

/** One NBD_REP_INFO item. */
export type NbdInfo =
	| { type: "export"; size: number; flags: number }
	| { type: "name"; name: string }
	| { type: "description"; description: string }
	| { type: "block-size"; minimum: number; preferred: number; maximum: number }
	| { type: "unknown"; code: number; data: Buffer };

export function encodeInfo(info: NbdInfo): Buffer {
	switch (info.type) {
		case "export": {
			const b = Buffer.alloc(12);
			b.writeUInt16BE(NBD_INFO_EXPORT, 0);
			b.writeBigUInt64BE(BigInt(info.size), 2);
			b.writeUInt16BE(info.flags, 10);
			return b;
		}
		case "name":
		case "description": {
			const s = encodeString(
				info.type === "name" ? info.name : info.description,
				info.type,
			);
			const b = Buffer.alloc(2 + s.length);
			b.writeUInt16BE(
				info.type === "name" ? NBD_INFO_NAME : NBD_INFO_DESCRIPTION,
				0,
			);
			s.copy(b, 2);
			return b;
		}
		case "block-size": {
			const b = Buffer.alloc(14);
			b.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
			b.writeUInt32BE(info.minimum, 2);
			b.writeUInt32BE(info.preferred, 6);
			b.writeUInt32BE(info.maximum, 10);
			return b;
		}
		case "unknown": {
			const b = Buffer.alloc(2 + info.data.length);
			b.writeUInt16BE(info.code, 0);
			info.data.copy(b, 2);
			return b;
		}
	}
}

/** The data of an NBD_REP_INFO reply; unknown types are returned, not refused (clients ignore them). */
export function decodeInfo(data: Buffer): NbdInfo {
	atLeast(data, 2, "NBD_REP_INFO data");
	const code = data.readUInt16BE(0);
	switch (code) {
		case NBD_INFO_EXPORT:
			expectLength(data, 12, "NBD_INFO_EXPORT");
			return {
				type: "export",
				size: safe64(data, 2, "export size"),
				flags: data.readUInt16BE(10),
			};
		case NBD_INFO_NAME:
			return {
				type: "name",
				name: decodeString(data.subarray(2), "export name"),
			};
		case NBD_INFO_DESCRIPTION:
			return {
				type: "description",
				description: decodeString(data.subarray(2), "export description"),
			};
		case NBD_INFO_BLOCK_SIZE:
			expectLength(data, 14, "NBD_INFO_BLOCK_SIZE");
			return {
				type: "block-size",
				minimum: data.readUInt32BE(2),
				preferred: data.readUInt32BE(6),
				maximum: data.readUInt32BE(10),
			};
		default:
			return { type: "unknown", code, data: data.subarray(2) };
	}
}

/** S: the reply to NBD_OPT_EXPORT_NAME: size, transmission flags, 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(
	size: number,
	flags: number,
	noZeroes: boolean,
): Buffer {
	const b = Buffer.alloc(noZeroes ? 10 : 134);
	b.writeBigUInt64BE(BigInt(size), 0);
	b.writeUInt16BE(flags, 8);
	return b;
}

export function decodeExportNameReply(
	buf: Buffer,
	noZeroes: boolean,
): { size: number; flags: number } {
	expectLength(buf, noZeroes ? 10 : 134, "NBD_OPT_EXPORT_NAME reply");
	for (let i = 10; i < buf.length; i++)
		if (buf[i] !== 0) invalid("NBD_OPT_EXPORT_NAME reply: nonzero padding");
	return { size: safe64(buf, 0, "export size"), flags: buf.readUInt16BE(8) };
}

// --- transmission --------------------------------------------------------------------------------

export interface NbdRequest {
	flags: number;
	type: number;
	/** Opaque; echoed in every reply. */
	cookie: bigint;
	/** 64 bits on the wire: kept as a bigint so that an absurd offset is an EINVAL, not a crash. */
	offset: bigint;
	length: number;
}

/** C: a request header (a write's payload follows it separately). */
export function encodeRequest(r: NbdRequest): Buffer {
	const b = Buffer.alloc(REQUEST_LENGTH);
	b.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
	b.writeUInt16BE(r.flags, 4);
	b.writeUInt16BE(r.type, 6);
	b.writeBigUInt64BE(r.cookie, 8);
	b.writeBigUInt64BE(r.offset, 16);
	b.writeUInt32BE(r.length >>> 0, 24);
	return b;
}

export function decodeRequest(buf: Buffer): NbdRequest {
	expectLength(buf, REQUEST_LENGTH, "request");
	const magic = buf.readUInt32BE(0);
	if (magic !== NBD_REQUEST_MAGIC)
		invalid(`request: bad magic 0x${magic.toString(16)}`);
	return {
		flags: buf.readUInt16BE(4),
		type: buf.readUInt16BE(6),
		cookie: buf.readBigUInt64BE(8),
		offset: buf.readBigUInt64BE(16),
		length: buf.readUInt32BE(24),
	};
}

/** S: a simple reply header (a successful read's data follows it). */
export function encodeSimpleReply(error: number, cookie: bigint): Buffer {
	const b = Buffer.allocUnsafe(SIMPLE_REPLY_LENGTH);
	b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
	b.writeUInt32BE(error >>> 0, 4);
	b.writeBigUInt64BE(cookie, 8);
	return b;
}

export function decodeSimpleReply(buf: Buffer): {
	error: number;
	cookie: bigint;
} {
	expectLength(buf, SIMPLE_REPLY_LENGTH, "simple reply");
	if (buf.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC)
		invalid("simple reply: bad magic");
	return { error: buf.readUInt32BE(4), cookie: buf.readBigUInt64BE(8) };
}

export interface ChunkHeader {
	flags: number;
	type: number;
	cookie: bigint;
	/** Length of the chunk's payload. */
	length: number;
}

/** S: a structured reply chunk header; the payload follows. */
export function encodeChunkHeader(h: ChunkHeader): Buffer {
	const b = Buffer.allocUnsafe(CHUNK_HEADER_LENGTH);
	writeChunkHeader(b, h.flags, h.type, h.cookie, h.length);
	return b;
}

function writeChunkHeader(
	b: Buffer,
	flags: number,
	type: number,
	cookie: bigint,
	length: number,
): void {
	b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
	b.writeUInt16BE(flags, 4);
	b.writeUInt16BE(type, 6);
	b.writeBigUInt64BE(cookie, 8);
	b.writeUInt32BE(length, 16);
}

export function decodeChunkHeader(buf: Buffer): ChunkHeader {
	expectLength(buf, CHUNK_HEADER_LENGTH, "structured reply chunk header");
	if (buf.readUInt32BE(0) !== NBD_STRUCTURED_REPLY_MAGIC)
		invalid("structured reply chunk: bad magic");
	return {
		flags: buf.readUInt16BE(4),
		type: buf.readUInt16BE(6),
		cookie: buf.readBigUInt64BE(8),
		length: buf.readUInt32BE(16),
	};
}

/**
 * The first 28 bytes of an NBD_REPLY_TYPE_OFFSET_DATA chunk (header and offset); `dataLength`
 * bytes of data follow it on the wire, written separately so that they are not copied.
 */
export function encodeOffsetDataHeader(
	flags: number,
	cookie: bigint,
	offset: number,
	dataLength: number,
): Buffer {
	const b = Buffer.allocUnsafe(OFFSET_DATA_HEADER_LENGTH);
	writeChunkHeader(
		b,
		flags,
		NBD_REPLY_TYPE_OFFSET_DATA,
		cookie,
		8 + dataLength,
	);
	b.writeBigUInt64BE(BigInt(offset), CHUNK_HEADER_LENGTH);
	return b;
}

/** A whole NBD_REPLY_TYPE_NONE chunk (always the final one). */
export function encodeNoneChunk(cookie: bigint): Buffer {
	return encodeChunkHeader({
		flags: NBD_REPLY_FLAG_DONE,
		type: NBD_REPLY_TYPE_NONE,
		cookie,
		length: 0,
	});
}

/**
 * A whole error chunk: NBD_REPLY_TYPE_ERROR, or NBD_REPLY_TYPE_ERROR_OFFSET when `offset` is
 * given. The message is truncated to the protocol's 4096 bytes.
 */
export function encodeErrorChunk(
	flags: number,
	cookie: bigint,
	error: number,
	message: string,
	offset?: number,
): Buffer {
	const m = messageBytes(message);
	const tail = offset === undefined ? 0 : 8;
	const b = Buffer.alloc(CHUNK_HEADER_LENGTH + 6 + m.length + tail);
	writeChunkHeader(
		b,
		flags,
		offset === undefined ? NBD_REPLY_TYPE_ERROR : NBD_REPLY_TYPE_ERROR_OFFSET,
		cookie,
		6 + m.length + tail,
	);
	b.writeUInt32BE(error >>> 0, CHUNK_HEADER_LENGTH);
	b.writeUInt16BE(m.length, CHUNK_HEADER_LENGTH + 4);
	m.copy(b, CHUNK_HEADER_LENGTH + 6);
	if (offset !== undefined)
		b.writeBigUInt64BE(BigInt(offset), CHUNK_HEADER_LENGTH + 6 + m.length);
	return b;
}

/** The payload of one structured reply chunk, by type. */
export type ChunkPayload =
	| { type: "none" }
	| { type: "offset-data"; offset: number; data: Buffer }
	| { type: "offset-hole"; offset: number; size: number }
	| { type: "error"; error: number; message: string; offset?: number }
	| { type: "unknown"; code: number; data: Buffer };

export function decodeChunkPayload(
	type: number,
	payload: Buffer,
): ChunkPayload {
	switch (type) {
		case NBD_REPLY_TYPE_NONE:
			expectLength(payload, 0, "NBD_REPLY_TYPE_NONE");
			return { type: "none" };
		case NBD_REPLY_TYPE_OFFSET_DATA:
			atLeast(payload, 9, "NBD_REPLY_TYPE_OFFSET_DATA");
			return {
				type: "offset-data",
				offset: safe64(payload, 0, "chunk offset"),
				data: payload.subarray(8),
			};
		case NBD_REPLY_TYPE_OFFSET_HOLE: {
			expectLength(payload, 12, "NBD_REPLY_TYPE_OFFSET_HOLE");
			const size = payload.readUInt32BE(8);
			if (size === 0) invalid("NBD_REPLY_TYPE_OFFSET_HOLE: zero hole size");
			return {
				type: "offset-hole",
				offset: safe64(payload, 0, "hole offset"),
				size,
			};
		}
		default: {
			if (!isErrorChunk(type))
				return { type: "unknown", code: type, data: payload };
			// every error chunk type starts with error, message length, message
			atLeast(payload, 6, "error chunk");
			const error = payload.readUInt32BE(0);
			if (error === 0) invalid("error chunk: zero error value");
			const n = payload.readUInt16BE(4);
			const tail = type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0;
			if (n > payload.length - 6 - tail)
				invalid("error chunk: the message length exceeds the chunk");
			const message = decodeString(payload.subarray(6, 6 + n), "error message");
			if (type === NBD_REPLY_TYPE_ERROR_OFFSET) {
				expectLength(payload, 6 + n + 8, "NBD_REPLY_TYPE_ERROR_OFFSET");
				return {
					type: "error",
					error,
					message,
					offset: safe64(payload, 6 + n, "error offset"),
				};
			}
			if (type === NBD_REPLY_TYPE_ERROR)
				expectLength(payload, 6 + n, "NBD_REPLY_TYPE_ERROR");
			return { type: "error", error, message };
		}
	}
}

// --- misc ----------------------------------------------------------------------------------------

const EMPTY = Buffer.alloc(0);

/** A message as protocol string bytes: NULs replaced, cut to 4096 bytes at a character boundary. */
function messageBytes(message: string): Buffer {
	let b = Buffer.from(message.replaceAll("\0", " "), "utf8");
	if (b.length > MAX_STRING_LENGTH) {
		let end = MAX_STRING_LENGTH;
		// back off to the start of a UTF-8 sequence
		while (end > 0 && ((b[end] as number) & 0xc0) === 0x80) end--;
		b = b.subarray(0, end);
	}
	return b;
}
