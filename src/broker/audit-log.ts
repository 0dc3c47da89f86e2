/**
 * The broker's audit log: an append-only JSON-lines file, one line per decision or admin action,
 *
 *   {"seq":n,"time":ISO,"prev":hex,"hash":hex,"event":...,"client":...,...}
 *
 * chained by hash = sha256hex(prev + "\n" + JSON of the record with seq and time, in a fixed key
 * order); the first record's prev is 64 zeros. Removing or editing a record in the middle breaks the
 * chain. (Cutting records off the end cannot be detected by a chain alone; it needs an anchor kept
 * elsewhere, e.g. the last hash shipped to a log collector.)
 *
 * Crash safety: `append` resolves only after its line is written and fsynced. A crash mid-append
 * leaves at most a torn tail — an incomplete last line or lines that are not records — which `open`
 * cuts back to the last good record. Damage followed by intact records is an edit or disk corruption
 * in the middle, and `open` refuses the file rather than silently dropping history.
 *
 * Throughput: appends made while a write+fsync is in flight are queued and then written together
 * with one write and one fsync (group commit), so many concurrent clients share each fsync.
 */
import { createHash } from "node:crypto";
import { type FileHandle, open } from "node:fs/promises";
import { dirname } from "node:path";
import { fsyncDir } from "../durable-file.js";
import { DadiError, fromSystemError } from "../errors.js";

export type AuditEvent = "auth" | "attest" | "release" | "deny" | "admin";

export interface AuditRecord {
	event: AuditEvent;
	client: string;
	tee?: string;
	evidenceDigest?: string;
	resource?: string;
	decision?: "allow" | "deny";
	policy?: string;
	reasons?: string[];
	status?: number;
	detail?: string;
}

export interface StoredRecord extends AuditRecord {
	seq: number;
	time: string;
	prev: string;
	hash: string;
}

export interface AuditQuery {
	/** only records with seq > sinceSeq; then the FIRST `limit` matches are returned (to page forward) */
	sinceSeq?: number;
	/** only records with time >= since (an ISO 8601 time) */
	since?: string;
	resource?: string;
	event?: string;
	decision?: string;
	/** 1..10000, default 100; without sinceSeq the NEWEST `limit` matches are returned */
	limit?: number;
}

export const MAX_AUDIT_STRING = 1024;
export const MAX_AUDIT_REASONS = 32;
export const MAX_QUERY_LIMIT = 10000;
const DEFAULT_QUERY_LIMIT = 100;
const ZERO_HASH = "0".repeat(64);
const HEX64 = /^[0-9a-f]{64}$/;
/** Far above the largest line `append` can produce (about 250 KB with every field at its cap). */
const MAX_LINE_BYTES = 1 << 20;
const READ_CHUNK = 1 << 20;
const EVENTS = new Set(["auth", "attest", "release", "deny", "admin"]);
const DECISIONS = new Set(["allow", "deny"]);
const STRING_FIELDS = [
	"client",
	"tee",
	"evidenceDigest",
	"resource",
	"policy",
	"detail",
] as const;
/** The fixed key order of the hashed body. */
const BODY_ORDER = [
	"seq",
	"time",
	"event",
	"client",
	"tee",
	"evidenceDigest",
	"resource",
	"decision",
	"policy",
	"reasons",
	"status",
	"detail",
] as const;
const STORED_KEYS = new Set<string>([...BODY_ORDER, "prev", "hash"]);

type Body = Omit<StoredRecord, "prev" | "hash">;

// --- records ---------------------------------------------------------------------------------

/** Caps a string at MAX_AUDIT_STRING code units without splitting a surrogate pair. */
function cap(v: unknown): string {
	const s = typeof v === "string" ? v : String(v);
	if (s.length <= MAX_AUDIT_STRING) return s;
	let end = MAX_AUDIT_STRING;
	const c = s.charCodeAt(end - 1);
	if (c >= 0xd800 && c <= 0xdbff) end--;
	return s.slice(0, end);
}

/** The record as stored: known fields only, strings and lists capped so no client bloats the log. */
function sanitize(r: AuditRecord): Omit<Body, "seq" | "time"> {
	if (typeof r !== "object" || r === null || !EVENTS.has(r.event))
		throw new DadiError(
			"INTERNAL",
			`audit record with an unknown event ${JSON.stringify(cap(String(r?.event)).slice(0, 40))}`,
		);
	const out: Record<string, unknown> = { event: r.event };
	for (const k of STRING_FIELDS) {
		const v = r[k];
		if (v !== undefined && v !== null) out[k] = cap(v);
		else if (k === "client") out[k] = "";
	}
	if (r.decision !== undefined && r.decision !== null) {
		if (!DECISIONS.has(r.decision))
			throw new DadiError(
				"INTERNAL",
				"audit record with a decision other than allow or deny",
			);
		out.decision = r.decision;
	}
	if (Array.isArray(r.reasons))
		out.reasons = r.reasons.slice(0, MAX_AUDIT_REASONS).map(cap);
	if (Number.isSafeInteger(r.status)) out.status = r.status;
	return out as Omit<Body, "seq" | "time">;
}

function bodyJson(r: Body): string {
	const o: Record<string, unknown> = {};
	for (const k of BODY_ORDER) if (r[k] !== undefined) o[k] = r[k];
	return JSON.stringify(o);
}

function chainHash(prev: string, body: string): string {
	return createHash("sha256").update(`${prev}\n${body}`, "utf8").digest("hex");
}

/** The one canonical line (without "\n") of a stored record. */
function serialize(r: StoredRecord): string {
	const o: Record<string, unknown> = {
		seq: r.seq,
		time: r.time,
		prev: r.prev,
		hash: r.hash,
	};
	for (const k of BODY_ORDER) if (r[k] !== undefined) o[k] = r[k];
	return JSON.stringify(o);
}

function validString(v: unknown): v is string {
	return typeof v === "string" && v.length <= MAX_AUDIT_STRING;
}

/** A line that is exactly a canonical stored record, else undefined. Does not check the hash. */
function parseLine(line: Buffer): StoredRecord | undefined {
	let o: unknown;
	try {
		o = JSON.parse(line.toString("utf8"));
	} catch {
		return undefined;
	}
	if (typeof o !== "object" || o === null || Array.isArray(o)) return undefined;
	const r = o as Record<string, unknown>;
	for (const k of Object.keys(r)) if (!STORED_KEYS.has(k)) return undefined;
	if (
		!Number.isSafeInteger(r.seq) ||
		(r.seq as number) < 1 ||
		typeof r.time !== "string" ||
		r.time.length > 64 ||
		Number.isNaN(Date.parse(r.time)) ||
		typeof r.prev !== "string" ||
		!HEX64.test(r.prev) ||
		typeof r.hash !== "string" ||
		!HEX64.test(r.hash) ||
		typeof r.event !== "string" ||
		!EVENTS.has(r.event) ||
		!validString(r.client)
	)
		return undefined;
	for (const k of STRING_FIELDS)
		if (r[k] !== undefined && !validString(r[k])) return undefined;
	if (
		r.decision !== undefined &&
		!(typeof r.decision === "string" && DECISIONS.has(r.decision))
	)
		return undefined;
	if (
		r.reasons !== undefined &&
		!(
			Array.isArray(r.reasons) &&
			r.reasons.length <= MAX_AUDIT_REASONS &&
			r.reasons.every(validString)
		)
	)
		return undefined;
	if (r.status !== undefined && !Number.isSafeInteger(r.status))
		return undefined;
	const rec = r as unknown as StoredRecord;
	// Only the exact bytes we write are a record: no reordered keys, spacing or escapes.
	if (serialize(rec) !== line.toString("utf8")) return undefined;
	return rec;
}

function selfConsistent(r: StoredRecord): boolean {
	return chainHash(r.prev, bodyJson(r)) === r.hash;
}

// --- reading lines ---------------------------------------------------------------------------

interface Line {
	offset: number;
	/** null when the line is longer than any record can be */
	bytes: Buffer | null;
	/** false for a last line without its "\n" */
	complete: boolean;
}

async function* readLines(
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

// --- the log ---------------------------------------------------------------------------------

interface Pending {
	body: Omit<Body, "seq">;
	resolve: (r: { seq: number }) => void;
	reject: (e: unknown) => void;
}

export class AuditLog {
	readonly file: string;
	readonly #fh: FileHandle;
	readonly #now: () => Date;
	/** byte offset of record seq i+1 */
	readonly #offsets: number[];
	/** bytes of durable records: the file length, save for a write in flight */
	#size: number;
	#lastHash: string;
	#pending: Pending[] = [];
	#flushing: Promise<void> = Promise.resolve();
	#flushActive = false;
	#broken: DadiError | undefined;
	#closed = false;
	#commits = 0;
	readonly #repairedBytes: number;

	private constructor(
		file: string,
		fh: FileHandle,
		now: () => Date,
		scan: {
			offsets: number[];
			size: number;
			lastHash: string;
			repairedBytes: number;
		},
	) {
		this.file = file;
		this.#fh = fh;
		this.#now = now;
		this.#offsets = scan.offsets;
		this.#size = scan.size;
		this.#lastHash = scan.lastHash;
		this.#repairedBytes = scan.repairedBytes;
	}

	/**
	 * Opens (creating, mode 0600) the log, verifies the whole chain, and cuts a torn tail back to the
	 * last good record. FORMAT_INVALID when intact records follow damage.
	 */
	static async open(
		file: string,
		o: { now?: () => Date } = {},
	): Promise<AuditLog> {
		let fh: FileHandle | undefined;
		try {
			try {
				fh = await open(file, "r+");
			} catch (e) {
				if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
				fh = await open(file, "wx+", 0o600);
				await fsyncDir(dirname(file));
			}
			const st = await fh.stat();
			if (!st.isFile())
				throw new DadiError(
					"INPUT_INVALID",
					`audit log ${file}: not a regular file`,
				);
			const scan = await scanLog(fh, file, st.size);
			if (scan.size < st.size) {
				await fh.truncate(scan.size);
				await fh.sync();
			}
			return new AuditLog(file, fh, o.now ?? (() => new Date()), scan);
		} catch (e) {
			await fh?.close().catch(() => {});
			throw fromSystemError(e, file, "opening the audit log");
		}
	}

	/** The seq of the last durable record (0 for an empty log). */
	get lastSeq(): number {
		return this.#offsets.length;
	}

	/** How many bytes of torn tail `open` cut off (0 normally); worth a line in the broker's log. */
	get repairedBytes(): number {
		return this.#repairedBytes;
	}

	/** How many write+fsync rounds have run: fewer than appends when they were group-committed. */
	get commits(): number {
		return this.#commits;
	}

	/** Appends one record; resolves with its seq once it is written and fsynced. */
	append(r: AuditRecord): Promise<{ seq: number }> {
		let fields: Omit<Body, "seq" | "time">;
		let time: string;
		try {
			if (this.#closed)
				throw new DadiError("INTERNAL", `audit log ${this.file} is closed`);
			if (this.#broken) throw this.#broken;
			fields = sanitize(r);
			time = this.#now().toISOString();
		} catch (e) {
			return Promise.reject(e);
		}
		return new Promise((resolve, reject) => {
			this.#pending.push({ body: { time, ...fields }, resolve, reject });
			if (!this.#flushActive) {
				this.#flushActive = true;
				this.#flushing = this.#flushLoop();
			}
		});
	}

	/**
	 * Writes queued appends batch by batch until none are left. `#flushActive` is cleared in the
	 * same synchronous step that finds the queue empty, so an append never waits on a loop that
	 * has already decided to stop.
	 */
	async #flushLoop(): Promise<void> {
		for (;;) {
			if (this.#pending.length === 0) {
				this.#flushActive = false;
				return;
			}
			const batch = this.#pending.splice(0);
			try {
				await this.#commit(batch);
			} catch (e) {
				// not expected (#commit reports its own failures); never leave an append hanging
				for (const p of batch) p.reject(e);
			}
		}
	}

	/** One write and one fsync for a whole batch. */
	async #commit(batch: Pending[]): Promise<void> {
		if (this.#broken) {
			for (const p of batch) p.reject(this.#broken);
			return;
		}
		// Seqs and hashes are assigned here, from the durable state, so a failed batch leaves
		// nothing to undo in memory and the next batch chains onto what is on disk.
		let seq = this.#offsets.length;
		let prev = this.#lastHash;
		const lines: string[] = [];
		const seqs: number[] = [];
		for (const p of batch) {
			seq++;
			const body = { seq, ...p.body } as Body;
			const hash = chainHash(prev, bodyJson(body));
			lines.push(`${serialize({ ...body, prev, hash })}\n`);
			seqs.push(seq);
			prev = hash;
		}
		const bytes = Buffer.from(lines.join(""), "utf8");
		try {
			let off = 0;
			while (off < bytes.length) {
				const { bytesWritten } = await this.#fh.write(
					bytes,
					off,
					bytes.length - off,
					this.#size + off,
				);
				off += bytesWritten;
			}
			await this.#fh.datasync();
		} catch (e) {
			const err = fromSystemError(e, this.file, "appending to the audit log");
			try {
				await this.#fh.truncate(this.#size);
				await this.#fh.datasync();
			} catch {
				this.#broken = new DadiError(
					"IO",
					`audit log ${this.file}: a failed append could not be undone; restart the broker`,
					{ cause: e },
				);
			}
			for (const p of batch) p.reject(err);
			return;
		}
		this.#commits++;
		let at = this.#size;
		for (const l of lines) {
			this.#offsets.push(at);
			at += Buffer.byteLength(l, "utf8");
		}
		this.#size += bytes.length;
		this.#lastHash = prev;
		batch.forEach((p, i) => {
			p.resolve({ seq: seqs[i] as number });
		});
	}

	/**
	 * Records matching every given filter, in seq order (newest last). With `sinceSeq` the first
	 * `limit` matches after it (page forward by passing the last seq seen); otherwise the newest
	 * `limit` matches.
	 */
	async query(f: AuditQuery = {}): Promise<StoredRecord[]> {
		this.#checkOpen();
		const limit = f.limit ?? DEFAULT_QUERY_LIMIT;
		if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_QUERY_LIMIT)
			throw new DadiError(
				"USAGE",
				`audit query limit must be an integer from 1 to ${MAX_QUERY_LIMIT}`,
			);
		if (
			f.sinceSeq !== undefined &&
			!(Number.isSafeInteger(f.sinceSeq) && f.sinceSeq >= 0)
		)
			throw new DadiError(
				"USAGE",
				"audit query sinceSeq must be a non-negative integer",
			);
		let sinceMs: number | undefined;
		if (f.since !== undefined) {
			sinceMs = typeof f.since === "string" ? Date.parse(f.since) : Number.NaN;
			if (Number.isNaN(sinceMs))
				throw new DadiError(
					"USAGE",
					"audit query since must be an ISO 8601 time",
				);
		}
		const match = (r: StoredRecord) =>
			(f.resource === undefined || r.resource === f.resource) &&
			(f.event === undefined || r.event === f.event) &&
			(f.decision === undefined || r.decision === f.decision) &&
			(sinceMs === undefined || Date.parse(r.time) >= sinceMs);

		// A snapshot of the durable records; appends during the scan are not included.
		const n = this.#offsets.length;
		const endSize = this.#size;
		const out: StoredRecord[] = [];
		if (f.sinceSeq !== undefined) {
			let i = Math.min(f.sinceSeq, n);
			while (i < n && out.length < limit) {
				const j = this.#blockEnd(i, n);
				for (const r of await this.#readRecords(i, j, n, endSize))
					if (match(r) && out.length < limit) out.push(r);
				i = j;
			}
			return out;
		}
		// Newest first, in blocks growing from 64 KiB, so "the last 100" reads only the file's end.
		let j = n;
		let blockBytes = 64 * 1024;
		while (j > 0 && out.length < limit) {
			const i = this.#blockStart(j, blockBytes);
			blockBytes = Math.min(blockBytes * 2, READ_CHUNK);
			const block = (await this.#readRecords(i, j, n, endSize)).filter(match);
			out.unshift(
				...block.slice(Math.max(0, block.length - (limit - out.length))),
			);
			j = i;
		}
		return out;
	}

	/** Re-reads the whole file and checks every record and link of the chain. */
	async verifyChain(): Promise<{
		records: number;
		ok: boolean;
		brokenAt?: number;
	}> {
		this.#checkOpen();
		const endSize = this.#size;
		let prev = ZERO_HASH;
		let records = 0;
		for await (const l of readLines(this.#fh, 0, endSize)) {
			const r = l.complete && l.bytes ? parseLine(l.bytes) : undefined;
			if (!r || r.seq !== records + 1 || r.prev !== prev || !selfConsistent(r))
				return { records, ok: false, brokenAt: records + 1 };
			prev = r.hash;
			records++;
		}
		return { records, ok: true };
	}

	/** Waits for queued appends, then closes the file. */
	async close(): Promise<void> {
		if (this.#closed) return;
		this.#closed = true;
		while (this.#flushActive) await this.#flushing;
		await this.#fh.close();
	}

	#checkOpen(): void {
		if (this.#closed)
			throw new DadiError("INTERNAL", `audit log ${this.file} is closed`);
	}

	#end(j: number, n: number, endSize: number): number {
		return j < n ? (this.#offsets[j] as number) : endSize;
	}

	/** Records [i, j) spanning about one read chunk (at least one record). */
	#blockEnd(i: number, n: number): number {
		const start = this.#offsets[i] as number;
		let j = i + 1;
		while (j < n && (this.#offsets[j] as number) - start < READ_CHUNK) j++;
		return j;
	}

	/** Records [i, j) spanning about `bytes` (at least one record). */
	#blockStart(j: number, bytes: number): number {
		const end = this.#offsets[j - 1] as number;
		let i = j - 1;
		while (i > 0 && end - (this.#offsets[i - 1] as number) < bytes) i--;
		return i;
	}

	async #readRecords(
		i: number,
		j: number,
		n: number,
		endSize: number,
	): Promise<StoredRecord[]> {
		const start = this.#offsets[i] as number;
		const end = this.#end(j, n, endSize);
		const buf = Buffer.alloc(end - start);
		let off = 0;
		try {
			while (off < buf.length) {
				const { bytesRead } = await this.#fh.read(
					buf,
					off,
					buf.length - off,
					start + off,
				);
				if (bytesRead === 0) break;
				off += bytesRead;
			}
		} catch (e) {
			throw fromSystemError(e, this.file, "reading the audit log");
		}
		const out: StoredRecord[] = [];
		let p = 0;
		for (let k = i; k < j; k++) {
			const nl = buf.indexOf(0x0a, p);
			const r = nl < 0 ? undefined : parseLine(buf.subarray(p, nl));
			if (!r || r.seq !== k + 1)
				throw new DadiError(
					"FORMAT_INVALID",
					`audit log ${this.file} changed underneath the broker at line ${k + 1}`,
				);
			out.push(r);
			p = nl + 1;
		}
		return out;
	}
}

/**
 * Walks the file: the chained prefix, and what follows it. What follows is a torn tail (cut off)
 * when it holds no complete, self-consistent record; otherwise the file was damaged in the middle.
 */
async function scanLog(
	fh: FileHandle,
	file: string,
	fileSize: number,
): Promise<{
	offsets: number[];
	size: number;
	lastHash: string;
	repairedBytes: number;
}> {
	const offsets: number[] = [];
	let lastHash = ZERO_HASH;
	let good = 0;
	let lineNo = 0;
	let badLine: number | undefined;
	for await (const l of readLines(fh, 0, fileSize)) {
		lineNo++;
		const r = l.complete && l.bytes ? parseLine(l.bytes) : undefined;
		if (badLine === undefined) {
			if (
				r &&
				r.seq === offsets.length + 1 &&
				r.prev === lastHash &&
				selfConsistent(r)
			) {
				offsets.push(l.offset);
				lastHash = r.hash;
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
	return { offsets, size: good, lastHash, repairedBytes: fileSize - good };
}
