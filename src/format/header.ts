/**
 * The 64-byte layer header (docs/format.md, "Header"). Pure codec: bytes in, checked fields out.
 * Magic and version are checked first, then sizes, then reserved bytes.
 */
import { DadiError } from "../errors.js";
import { isZero, readU64, writeU64 } from "./bytes.js";
import {
	COMPRESSION_NAMES,
	HEADER_MAGIC,
	HEADER_SIZE,
	LAYER_ID_SIZE,
	LAYER_VERSION,
	MAX_CHUNK_SHIFT,
	MAX_CHUNKS,
	MIN_CHUNK_SHIFT,
	SUITE_NAMES,
} from "./constants.js";

export interface LayerHeader {
	chunkShift: number;
	suite: number;
	compression: number;
	virtualSize: number;
	layerId: Buffer;
}

export function encodeHeader(h: LayerHeader): Buffer {
	validateHeaderFields(h);
	const b = Buffer.alloc(HEADER_SIZE);
	HEADER_MAGIC.copy(b, 0);
	b.writeUInt16LE(LAYER_VERSION, 8);
	b.writeUInt16LE(HEADER_SIZE, 10);
	b.writeUInt8(h.chunkShift, 12);
	b.writeUInt8(h.suite, 13);
	b.writeUInt8(h.compression, 14);
	writeU64(b, 16, h.virtualSize);
	h.layerId.copy(b, 24);
	return b;
}

export function decodeHeader(b: Buffer): LayerHeader {
	if (b.length < HEADER_SIZE)
		throw new DadiError(
			"FORMAT_INVALID",
			`layer header: ${b.length} bytes, need ${HEADER_SIZE}`,
		);
	if (!b.subarray(0, 8).equals(HEADER_MAGIC))
		throw new DadiError(
			"FORMAT_INVALID",
			"layer header: bad magic (not a dadi sealed layer)",
		);
	const version = b.readUInt16LE(8);
	if (version !== LAYER_VERSION)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`layer header: layer encoding version ${version} is not supported (this build reads version ${LAYER_VERSION})`,
		);
	const size = b.readUInt16LE(10);
	if (size !== HEADER_SIZE)
		throw new DadiError(
			"FORMAT_INVALID",
			`layer header: header size ${size}, expected ${HEADER_SIZE}`,
		);
	if (b[15] !== 0 || !isZero(b, 56, 64))
		throw new DadiError(
			"FORMAT_INVALID",
			"layer header: reserved bytes are not zero",
		);
	const h: LayerHeader = {
		chunkShift: b.readUInt8(12),
		suite: b.readUInt8(13),
		compression: b.readUInt8(14),
		virtualSize: readU64(b, 16, "layer header: virtual size"),
		layerId: Buffer.from(b.subarray(24, 24 + LAYER_ID_SIZE)),
	};
	validateHeaderFields(h);
	return h;
}

function validateHeaderFields(h: LayerHeader): void {
	if (
		!Number.isInteger(h.chunkShift) ||
		h.chunkShift < MIN_CHUNK_SHIFT ||
		h.chunkShift > MAX_CHUNK_SHIFT
	)
		throw new DadiError(
			"FORMAT_INVALID",
			`layer header: chunk size 2^${h.chunkShift} is outside 4 KiB..1 MiB`,
		);
	if (SUITE_NAMES[h.suite] === undefined)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`layer header: cipher suite ${h.suite} is not supported`,
		);
	if (COMPRESSION_NAMES[h.compression] === undefined)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`layer header: compression codec ${h.compression} is not supported`,
		);
	if (!Number.isSafeInteger(h.virtualSize) || h.virtualSize < 1)
		throw new DadiError(
			"FORMAT_INVALID",
			"layer header: virtual size must be at least 1 byte",
		);
	if (Math.ceil(h.virtualSize / 2 ** h.chunkShift) > MAX_CHUNKS)
		throw new DadiError(
			"FORMAT_INVALID",
			"layer header: virtual size needs more than 2^32-1 chunks",
		);
	if (h.layerId.length !== LAYER_ID_SIZE)
		throw new DadiError(
			"FORMAT_INVALID",
			`layer header: layer id must be ${LAYER_ID_SIZE} bytes`,
		);
}
