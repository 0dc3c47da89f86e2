/**
 * The 64-byte layer trailer (docs/format.md, "Trailer"): where the index is and how big it is.
 * It sits at the end so a layer is written in one pass; a reader fetches it first.
 */
import { DadiError } from "../errors.js";
import { isZero, readU64, writeU64 } from "./bytes.js";
import {
	EXTENT_SIZE,
	HEADER_SIZE,
	INDEX_NONCE_SIZE,
	LAYER_VERSION,
	TAG_SIZE,
	TRAILER_MAGIC,
	TRAILER_SIZE,
} from "./constants.js";

export interface LayerTrailer {
	/** Bytes of chunk data between the header and the index. */
	dataLength: number;
	/** Number of extents in the index. */
	extentCount: number;
}

export function indexOffsetOf(t: LayerTrailer): number {
	return HEADER_SIZE + t.dataLength;
}

export function indexLengthOf(t: LayerTrailer): number {
	return INDEX_NONCE_SIZE + t.extentCount * EXTENT_SIZE + TAG_SIZE;
}

export function blobSizeOf(t: LayerTrailer): number {
	return HEADER_SIZE + t.dataLength + indexLengthOf(t) + TRAILER_SIZE;
}

export function encodeTrailer(t: LayerTrailer): Buffer {
	const b = Buffer.alloc(TRAILER_SIZE);
	writeU64(b, 0, indexOffsetOf(t));
	b.writeUInt32LE(indexLengthOf(t), 8);
	b.writeUInt32LE(t.extentCount, 12);
	writeU64(b, 16, t.dataLength);
	b.writeUInt16LE(LAYER_VERSION, 48);
	b.writeUInt16LE(TRAILER_SIZE, 50);
	TRAILER_MAGIC.copy(b, 56);
	return b;
}

/** Decodes and cross-checks a trailer; `blobSize` is the size of the whole layer blob. */
export function decodeTrailer(b: Buffer, blobSize: number): LayerTrailer {
	if (b.length !== TRAILER_SIZE)
		throw new DadiError(
			"FORMAT_INVALID",
			`layer trailer: ${b.length} bytes, need ${TRAILER_SIZE}`,
		);
	if (!b.subarray(56, 64).equals(TRAILER_MAGIC))
		throw new DadiError(
			"FORMAT_INVALID",
			"layer trailer: bad magic (truncated or not a dadi sealed layer)",
		);
	const version = b.readUInt16LE(48);
	if (version !== LAYER_VERSION)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`layer trailer: layer encoding version ${version} is not supported (this build reads version ${LAYER_VERSION})`,
		);
	if (b.readUInt16LE(50) !== TRAILER_SIZE)
		throw new DadiError("FORMAT_INVALID", "layer trailer: wrong trailer size");
	if (!isZero(b, 24, 48) || !isZero(b, 52, 56))
		throw new DadiError(
			"FORMAT_INVALID",
			"layer trailer: reserved bytes are not zero",
		);
	const indexOffset = readU64(b, 0, "layer trailer: index offset");
	const indexLength = b.readUInt32LE(8);
	const extentCount = b.readUInt32LE(12);
	const dataLength = readU64(b, 16, "layer trailer: data length");
	const t = { dataLength, extentCount };
	if (indexOffset !== indexOffsetOf(t))
		throw new DadiError(
			"FORMAT_INVALID",
			"layer trailer: index offset does not follow the data",
		);
	if (indexLength !== indexLengthOf(t))
		throw new DadiError(
			"FORMAT_INVALID",
			"layer trailer: index length does not match the extent count",
		);
	if (blobSizeOf(t) !== blobSize)
		throw new DadiError(
			"FORMAT_INVALID",
			`layer trailer: the layer should be ${blobSizeOf(t)} bytes but is ${blobSize} (truncated or extended)`,
		);
	return t;
}
