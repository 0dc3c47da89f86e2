/**
 * One file of the audit log (the active `audit.log`, or a rotated `audit.log.<first seq>`): its
 * lines, the chain check of its records against the record before its first, and reading records
 * by position. A file's records continue the chain exactly: its first record's seq and prev follow
 * the last record of the file before it (or of the chain's anchor, or seq 0 and 64 zeros).
 */
import { type FileHandle, open } from "node:fs/promises";
import { DadiError, fromSystemError } from "../errors.js";
import {
	MAX_LINE_BYTES,
	parseLine,
	type StoredRecord,
	selfConsistent,
} from "./audit-record.js";

const READ_CHUNK = 1 << 20;

/** A point of the chain: a record's seq and hash (seq 0 and 64 zeros before the first record). */
export interface ChainPoint {
	seq: number;
	hash: string;
}

interface Line {
	offset: number;
	/** null when the line is longer than any record can be */
	bytes: Buffer | null;
	/** false for a last line without its "\n" */
	complete: boolean;
}

export async function* readLines(
	fh: FileHandle,
	start: number,
	end: number,
): AsyncGenerator<Line> {
	const buf = Buffer.alloc(READ_CHUNK);
	let pos = start;
	let lineStart = start;
	let parts: Buffer[] = [];
	let partsLen = 0;
	let overlong = false;
	while (pos < end) {
		const { bytesRead } = await fh.read(
			buf,
			0,
			Math.min(READ_CHUNK, end - pos),
			pos,
		);
		if (bytesRead === 0) break;
		const chunk = buf.subarray(0, bytesRead);
		let i = 0;
		while (i < chunk.length) {
			const nl = chunk.indexOf(0x0a, i);
			const stop = nl < 0 ? chunk.length : nl;
			if (!overlong) {
				if (partsLen + (stop - i) > MAX_LINE_BYTES) {
					overlong = true;
					parts = [];
					partsLen = 0;
				} else {
					parts.push(Buffer.from(chunk.subarray(i, stop)));
					partsLen += stop - i;
				}
			}
			if (nl < 0) break;
			yield {
				offset: lineStart,
				bytes: overlong ? null : Buffer.concat(parts, partsLen),
				complete: true,
			};
			lineStart = pos + nl + 1;
			parts = [];
			partsLen = 0;
			overlong = false;
			i = nl + 1;
		}
		pos += bytesRead;
	}
	if (lineStart < pos)
		yield {
			offset: lineStart,
			bytes: overlong ? null : Buffer.concat(parts, partsLen),
			complete: false,
		};
}

export interface Scan {
	/** byte offset of each record */
	offsets: number[];
	/** bytes of the chained records (where a torn tail starts) */
	size: number;
	last: ChainPoint;
	repairedBytes: number;
}

/**
 * Walks a file whose records continue the chain after `from`: the chained prefix, and what follows
 * it. What follows is a torn tail (for the caller to cut off) when it holds no complete,
 * self-consistent record; otherwise the file was damaged in the middle: FORMAT_INVALID.
 */
export async function scanSegment(
	fh: FileHandle,
	file: string,
	fileSize: number,
	from: ChainPoint,
): Promise<Scan> {
	const offsets: number[] = [];
	let last = from;
	let good = 0;
	let lineNo = 0;
	let badLine: number | undefined;
	for await (const l of readLines(fh, 0, fileSize)) {
		lineNo++;
		const r = l.complete && l.bytes ? parseLine(l.bytes) : undefined;
		if (badLine === undefined) {
			if (
				r &&
				r.seq === last.seq + 1 &&
				r.prev === last.hash &&
				selfConsistent(r)
			) {
				offsets.push(l.offset);
				last = { seq: r.seq, hash: r.hash };
				good = l.offset + (l.bytes as Buffer).length + 1;
				continue;
			}
			badLine = lineNo;
		}
		if (r && selfConsistent(r))
			throw new DadiError(
				"FORMAT_INVALID",
				`audit log ${file} is damaged at line ${badLine}; it was edited or the disk corrupted it; move it aside to start a new one`,
			);
	}
	return { offsets, size: good, last, repairedBytes: fileSize - good };
}

/** The first and the last record of a complete file (a rotated one), undefined if none parse. */
export async function headAndTail(
	fh: FileHandle,
	size: number,
): Promise<{ head: StoredRecord; tail: StoredRecord } | undefined> {
	if (size === 0) return undefined;
	const n = Math.min(size, MAX_LINE_BYTES + 1);
	const buf = Buffer.alloc(n);
	await readFully(fh, buf, 0);
	const nl = buf.indexOf(0x0a);
	const head = nl < 0 ? undefined : parseLine(buf.subarray(0, nl));
	await readFully(fh, buf, size - n);
	if (buf[n - 1] !== 0x0a) return undefined;
	const prevNl = buf.lastIndexOf(0x0a, n - 2);
	const tail = parseLine(buf.subarray(prevNl + 1, n - 1));
	if (!head || !tail || !selfConsistent(head) || !selfConsistent(tail))
		return undefined;
	return { head, tail };
}

async function readFully(
	fh: FileHandle,
	buf: Buffer,
	position: number,
): Promise<void> {
	let off = 0;
	while (off < buf.length) {
		const { bytesRead } = await fh.read(
			buf,
			off,
			buf.length - off,
			position + off,
		);
		if (bytesRead === 0) break;
		off += bytesRead;
	}
}

/**
 * A file of the log as the reader sees it. The active file's offsets grow with each commit; a
 * rotated file's are built on first use (checking its whole chain). Readers count, so that a file
 * retention removes is closed only once no query reads it.
 */
export class Segment {
	path: string;
	readonly firstSeq: number;
	/** Offsets of its records; undefined for a rotated file not read yet. */
	offsets: number[] | undefined;
	size: number;
	/** The chain point before its first record. */
	readonly before: ChainPoint;
	last: ChainPoint;
	fh: FileHandle | undefined;
	readers = 0;
	/** Removed by retention: close once the last reader is done. */
	removed = false;

	constructor(o: {
		path: string;
		before: ChainPoint;
		last: ChainPoint;
		size: number;
		offsets?: number[];
		fh?: FileHandle;
	}) {
		this.path = o.path;
		this.before = o.before;
		this.firstSeq = o.before.seq + 1;
		this.last = o.last;
		this.size = o.size;
		this.offsets = o.offsets;
		this.fh = o.fh;
	}

	get count(): number {
		return this.last.seq - this.before.seq;
	}

	/** Opens (read-only) and indexes a rotated file on first use. */
	async ready(): Promise<void> {
		try {
			this.fh ??= await open(this.path, "r");
			if (this.offsets === undefined) {
				const scan = await scanSegment(
					this.fh,
					this.path,
					this.size,
					this.before,
				);
				if (
					scan.repairedBytes !== 0 ||
					scan.last.seq !== this.last.seq ||
					scan.last.hash !== this.last.hash
				)
					throw new DadiError(
						"FORMAT_INVALID",
						`audit log ${this.path} is damaged: its records do not chain from its first to its last`,
					);
				this.offsets = scan.offsets;
			}
		} catch (e) {
			throw fromSystemError(e, this.path, "reading the audit log");
		}
	}

	async release(): Promise<void> {
		this.readers--;
		if (this.removed && this.readers === 0) await this.closeFile();
	}

	async closeFile(): Promise<void> {
		const fh = this.fh;
		this.fh = undefined;
		await fh?.close().catch(() => {});
	}

	/** Local records [i, j) spanning about one read chunk (at least one record). */
	blockEnd(i: number, n: number): number {
		const o = this.offsets as number[];
		const start = o[i] as number;
		let j = i + 1;
		while (j < n && (o[j] as number) - start < READ_CHUNK) j++;
		return j;
	}

	/** Local records [i, j) spanning about `bytes` (at least one record). */
	blockStart(j: number, bytes: number): number {
		const o = this.offsets as number[];
		const end = o[j - 1] as number;
		let i = j - 1;
		while (i > 0 && end - (o[i - 1] as number) < bytes) i--;
		return i;
	}

	/** Local records [i, j) of the first `n` (whose bytes end at `endSize`). */
	async read(
		i: number,
		j: number,
		n: number,
		endSize: number,
	): Promise<StoredRecord[]> {
		const o = this.offsets as number[];
		const start = o[i] as number;
		const end = j < n ? (o[j] as number) : endSize;
		const buf = Buffer.alloc(end - start);
		try {
			await readFully(this.fh as FileHandle, buf, start);
		} catch (e) {
			throw fromSystemError(e, this.path, "reading the audit log");
		}
		const out: StoredRecord[] = [];
		let p = 0;
		for (let k = i; k < j; k++) {
			const nl = buf.indexOf(0x0a, p);
			const r = nl < 0 ? undefined : parseLine(buf.subarray(p, nl));
			if (!r || r.seq !== this.firstSeq + k)
				throw new DadiError(
					"FORMAT_INVALID",
					`audit log ${this.path} changed underneath the broker at line ${k + 1}`,
				);
			out.push(r);
			p = nl + 1;
		}
		return out;
	}
}
