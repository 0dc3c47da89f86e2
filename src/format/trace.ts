/**
 * Start-up access traces (docs/format.md §10): which chunks of which layer a workload read first,
 * in first-read order, with the time of each first read. The plaintext reveals the image's access
 * pattern, so it is stored only in the operator's own file (0600) and travels sealed under a key
 * derived from the image key (trace-seal.ts).
 *
 *   header (16 bytes): "DTRC" | version u8 (1) | flags u8 (0) | reserved u16 (0) | count u32 | reserved u32 (0)
 *   count entries (10 bytes each): layer u16 | chunk u32 | ms u32        (all big-endian)
 *
 * A (layer, chunk) pair appears at most once; times never decrease; nothing follows the entries.
 */
import { DadiError } from "../errors.js";

export const TRACE_MAGIC = Buffer.from("DTRC", "latin1");
export const TRACE_VERSION = 1;
export const TRACE_HEADER_SIZE = 16;
export const TRACE_ENTRY_SIZE = 10;
/** At most this many entries (10 MiB of entries; 4 TiB of disk at 4 KiB chunks). */
export const MAX_TRACE_ENTRIES = 1 << 20;
export const MAX_TRACE_BYTES =
	TRACE_HEADER_SIZE + TRACE_ENTRY_SIZE * MAX_TRACE_ENTRIES;
const MAX_U32 = 0xffff_ffff;

export interface TraceEntry {
	/** Layer index, 0 = bottom. */
	layer: number;
	/** Chunk index on the virtual disk. */
	chunk: number;
	/** Milliseconds after the start of recording of the first read. */
	ms: number;
}

const bad = (msg: string) => new DadiError("FORMAT_INVALID", `trace: ${msg}`);

export function encodeTrace(entries: readonly TraceEntry[]): Buffer {
	if (entries.length > MAX_TRACE_ENTRIES)
		throw new DadiError(
			"USAGE",
			`trace: ${entries.length} entries is more than the ${MAX_TRACE_ENTRIES} allowed`,
		);
	checkEntries(entries, (m) => new DadiError("INTERNAL", `trace: ${m}`));
	const out = Buffer.alloc(
		TRACE_HEADER_SIZE + TRACE_ENTRY_SIZE * entries.length,
	);
	TRACE_MAGIC.copy(out, 0);
	out.writeUInt8(TRACE_VERSION, 4);
	out.writeUInt32BE(entries.length, 8);
	entries.forEach((e, i) => {
		const at = TRACE_HEADER_SIZE + i * TRACE_ENTRY_SIZE;
		out.writeUInt16BE(e.layer, at);
		out.writeUInt32BE(e.chunk, at + 2);
		out.writeUInt32BE(e.ms, at + 6);
	});
	return out;
}

/** Parses a trace; FORMAT_INVALID (FORMAT_UNSUPPORTED for another version) on anything else. */
export function decodeTrace(bytes: Buffer): TraceEntry[] {
	if (bytes.length < TRACE_HEADER_SIZE)
		throw bad(`${bytes.length} bytes is shorter than the header`);
	if (!bytes.subarray(0, 4).equals(TRACE_MAGIC))
		throw bad("not a dadi trace (bad magic)");
	const version = bytes.readUInt8(4);
	if (version !== TRACE_VERSION)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`trace: version ${version} is not supported (this build reads version ${TRACE_VERSION})`,
		);
	if (bytes.readUInt8(5) !== 0) throw bad("unknown flags");
	if (bytes.readUInt16BE(6) !== 0 || bytes.readUInt32BE(12) !== 0)
		throw bad("reserved bytes are not zero");
	const count = bytes.readUInt32BE(8);
	if (count > MAX_TRACE_ENTRIES)
		throw bad(`${count} entries is more than the ${MAX_TRACE_ENTRIES} allowed`);
	if (bytes.length !== TRACE_HEADER_SIZE + TRACE_ENTRY_SIZE * count)
		throw bad(
			`${bytes.length} bytes, but ${count} entries take ${TRACE_HEADER_SIZE + TRACE_ENTRY_SIZE * count}`,
		);
	const entries: TraceEntry[] = new Array(count);
	for (let i = 0; i < count; i++) {
		const at = TRACE_HEADER_SIZE + i * TRACE_ENTRY_SIZE;
		entries[i] = {
			layer: bytes.readUInt16BE(at),
			chunk: bytes.readUInt32BE(at + 2),
			ms: bytes.readUInt32BE(at + 6),
		};
	}
	checkEntries(entries, bad);
	return entries;
}

function checkEntries(
	entries: readonly TraceEntry[],
	err: (m: string) => DadiError,
): void {
	const seen = new Set<number>();
	let last = 0;
	entries.forEach((e, i) => {
		if (
			!isUint(e.layer, 0xffff) ||
			!isUint(e.chunk, MAX_U32) ||
			!isUint(e.ms, MAX_U32)
		)
			throw err(`entry ${i} is out of range`);
		if (e.ms < last) throw err(`entry ${i}: times go backwards`);
		last = e.ms;
		const k = e.layer * 2 ** 32 + e.chunk;
		if (seen.has(k))
			throw err(`entry ${i}: layer ${e.layer} chunk ${e.chunk} is repeated`);
		seen.add(k);
	});
}

function isUint(v: number, max: number): boolean {
	return Number.isSafeInteger(v) && v >= 0 && v <= max;
}

/**
 * Checks a (decrypted, authenticated) trace against the image it is used with: every layer index
 * below the image's layer count, every chunk on its disk. FORMAT_INVALID otherwise.
 */
export function checkTraceFits(
	entries: readonly TraceEntry[],
	layers: number,
	chunks: number,
): void {
	entries.forEach((e, i) => {
		if (e.layer >= layers || e.chunk >= chunks)
			throw bad(
				`entry ${i} (layer ${e.layer}, chunk ${e.chunk}) is outside the image (${layers} layer${layers === 1 ? "" : "s"}, ${chunks} chunks)`,
			);
	});
}

/** Counts for messages and --json: entries, per layer, the span of times. */
export function traceSummary(entries: readonly TraceEntry[]): {
	entries: number;
	perLayer: Record<string, number>;
	lastMs: number;
} {
	const perLayer: Record<string, number> = {};
	for (const e of entries)
		perLayer[String(e.layer)] = (perLayer[String(e.layer)] ?? 0) + 1;
	return {
		entries: entries.length,
		perLayer,
		lastMs: entries[entries.length - 1]?.ms ?? 0,
	};
}
