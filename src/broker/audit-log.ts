import {
	type FileHandle,
	open,
	readdir,
	readFile,
	rename,
	stat,
	unlink,
} from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { fsyncDir } from "../durable-file.js";
import { DadiError, fromSystemError } from "../errors.js";
import {
	type AuditQuery,
	type AuditRecord,
	type Body,
	bodyJson,
	chainHash,
	DEFAULT_QUERY_LIMIT,
	MAX_QUERY_LIMIT,
	parseLine,
	type StoredRecord,
	sanitize,
	selfConsistent,
	serialize,
	ZERO_HASH,
} from "./audit-record.js";
import {
	type ChainPoint,
	headAndTail,
	readLines,
	Segment,
	scanSegment,
} from "./audit-segment.js";
import { writeViaTemp } from "./keystore.js";

export {
	type AuditEvent,
	type AuditQuery,
	type AuditRecord,
	MAX_AUDIT_REASONS,
	MAX_AUDIT_STRING,
	MAX_QUERY_LIMIT,
	type StoredRecord,
} from "./audit-record.js";

export interface AuditLogOptions {
	now?: () => Date;
	/** Rotate the active file once it holds this many bytes (default 64 MiB; 0: never). */
	rotateBytes?: number;
	/** Rotated files kept (default 15); older ones are removed. */
	keep?: number;
	/** Told about rotations and removals (the broker's log). */
	log?: (line: string) => void;
}

export const DEFAULT_ROTATE_BYTES = 64 << 20;
export const DEFAULT_KEEP = 15;
const HEX64 = /^[0-9a-f]{64}$/;

interface Pending {
	body: Omit<Body, "seq">;
	resolve: (r: { seq: number }) => void;
	reject: (e: unknown) => void;
}

export class AuditLog {
	/** The active file. */
	readonly file: string;
	readonly #dir: string;
	readonly #now: () => Date;
	readonly #rotateBytes: number;
	readonly #keep: number;
	readonly #log: (line: string) => void;
	#active: Segment;
	/** Rotated files, oldest first. */
	readonly #rotated: Segment[];
	/** Where the kept chain starts, once retention removed files (else undefined). */
	#anchor: ChainPoint | undefined;
	#pending: Pending[] = [];
	#flushing: Promise<void> = Promise.resolve();
	#flushActive = false;
	#broken: DadiError | undefined;
	#closed = false;
	#commits = 0;
	readonly #repairedBytes: number;

	private constructor(
		file: string,
		o: AuditLogOptions,
		state: {
			active: Segment;
			rotated: Segment[];
			anchor: ChainPoint | undefined;
			repairedBytes: number;
		},
	) {
		this.file = file;
		this.#dir = dirname(file);
		this.#now = o.now ?? (() => new Date());
		this.#rotateBytes = o.rotateBytes ?? DEFAULT_ROTATE_BYTES;
		this.#keep = Math.max(0, o.keep ?? DEFAULT_KEEP);
		this.#log = o.log ?? (() => {});
		this.#active = state.active;
		this.#rotated = state.rotated;
		this.#anchor = state.anchor;
		this.#repairedBytes = state.repairedBytes;
	}

	/**
	 * Opens (creating, mode 0600) the log: checks that the rotated files continue the chain, verifies
	 * the whole active file, and cuts a torn tail back to the last good record. FORMAT_INVALID when
	 * intact records follow damage, or a file does not continue the chain.
	 */
	static async open(file: string, o: AuditLogOptions = {}): Promise<AuditLog> {
		const dir = dirname(file);
		let anchor: ChainPoint | undefined;
		const rotated: Segment[] = [];
		let fh: FileHandle | undefined;
		try {
			anchor = await readAnchor(file);
			let expected: ChainPoint = anchor ?? { seq: 0, hash: ZERO_HASH };
			for (const { path, firstSeq } of await rotatedFiles(file)) {
				const seg = await checkRotated(path, firstSeq, expected, anchor);
				if (seg === "removed") continue;
				rotated.push(seg);
				expected = seg.last;
			}
			try {
				fh = await open(file, "r+");
			} catch (e) {
				if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
				fh = await open(file, "wx+", 0o600);
				await fsyncDir(dir);
			}
			const st = await fh.stat();
			if (!st.isFile())
				throw new DadiError(
					"INPUT_INVALID",
					`audit log ${file}: not a regular file`,
				);
			const scan = await scanSegment(fh, file, st.size, expected);
			if (scan.size < st.size) {
				await fh.truncate(scan.size);
				await fh.sync();
			}
			const active = new Segment({
				path: file,
				before: expected,
				last: scan.last,
				size: scan.size,
				offsets: scan.offsets,
				fh,
			});
			const log = new AuditLog(file, o, {
				active,
				rotated,
				anchor,
				repairedBytes: scan.repairedBytes,
			});
			// a crash between a rotation and its retention left one file too many
			await log.#retain();
			return log;
		} catch (e) {
			await fh?.close().catch(() => {});
			throw fromSystemError(e, file, "opening the audit log");
		}
	}

	/** The seq of the last durable record (0 for an empty log). */
	get lastSeq(): number {
		return this.#active.last.seq;
	}

	/** How many bytes of torn tail `open` cut off (0 normally); worth a line in the broker's log. */
	get repairedBytes(): number {
		return this.#repairedBytes;
	}

	/** How many write+fsync rounds have run: fewer than appends when they were group-committed. */
	get commits(): number {
		return this.#commits;
	}

	/** The files of the log, oldest first (the active file last). */
	get files(): string[] {
		return [...this.#rotated.map((s) => s.path), this.#active.path];
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
	 * Writes queued appends batch by batch until none are left, rotating between batches. The
	 * flag is cleared in the same synchronous step that finds the queue empty, so an append never
	 * waits on a loop that has already decided to stop.
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
				if (
					this.#rotateBytes > 0 &&
					this.#active.size >= this.#rotateBytes &&
					!this.#broken
				)
					await this.#rotate();
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
		const a = this.#active;
		// Seqs and hashes are assigned here, from the durable state, so a failed batch leaves
		// nothing to undo in memory and the next batch chains onto what is on disk.
		let seq = a.last.seq;
		let prev = a.last.hash;
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
		const fh = a.fh as FileHandle;
		try {
			let off = 0;
			while (off < bytes.length) {
				const { bytesWritten } = await fh.write(
					bytes,
					off,
					bytes.length - off,
					a.size + off,
				);
				off += bytesWritten;
			}
			await fh.datasync();
		} catch (e) {
			const err = fromSystemError(e, this.file, "appending to the audit log");
			try {
				await fh.truncate(a.size);
				await fh.datasync();
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
		const offsets = a.offsets as number[];
		let at = a.size;
		for (const l of lines) {
			offsets.push(at);
			at += Buffer.byteLength(l, "utf8");
		}
		a.size += bytes.length;
		a.last = { seq, hash: prev };
		batch.forEach((p, i) => {
			p.resolve({ seq: seqs[i] as number });
		});
	}

	/**
	 * The active file becomes `audit.log.<first seq>` and a new, empty one continues the chain;
	 * then retention. A failure leaves the log refusing appends (fail closed) until a restart.
	 */
	async #rotate(): Promise<void> {
		const old = this.#active;
		if (old.count === 0) return;
		const to = rotatedName(this.file, old.firstSeq);
		let fh: FileHandle | undefined;
		try {
			await rename(this.file, to);
			old.path = to;
			await fsyncDir(this.#dir);
			fh = await open(this.file, "wx+", 0o600);
			await fsyncDir(this.#dir);
		} catch (e) {
			await fh?.close().catch(() => {});
			this.#broken = new DadiError(
				"IO",
				`audit log ${this.file}: rotating it failed (${(e as Error).message}); restart the broker`,
				{ cause: e },
			);
			this.#log(this.#broken.message);
			return;
		}
		this.#rotated.push(old);
		this.#active = new Segment({
			path: this.file,
			before: old.last,
			last: old.last,
			size: 0,
			offsets: [],
			fh,
		});
		this.#log(
			`audit log: records ${old.firstSeq}-${old.last.seq} moved to ${basename(to)}`,
		);
		await this.#retain();
	}

	/** Removes the oldest rotated files beyond `keep`, anchoring the chain first. */
	async #retain(): Promise<void> {
		while (this.#rotated.length > this.#keep) {
			const s = this.#rotated[0] as Segment;
			try {
				await writeAnchor(this.file, s.last);
				this.#anchor = s.last;
				await unlink(s.path);
				await fsyncDir(this.#dir);
			} catch (e) {
				this.#log(
					`audit log: could not remove ${basename(s.path)} (${(e as Error).message}); kept`,
				);
				return;
			}
			this.#rotated.shift();
			s.removed = true;
			if (s.readers === 0) await s.closeFile();
			this.#log(
				`audit log: removed ${basename(s.path)} (records ${s.firstSeq}-${s.last.seq}; retention keeps ${this.#keep} rotated files)`,
			);
		}
	}

	/**
	 * Records matching every given filter, in seq order (newest last), across all kept files. With
	 * `sinceSeq` the first `limit` matches after it (page forward by passing the last seq seen);
	 * otherwise the newest `limit` matches (with `since`, reading back stops at older records).
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
		const snap = [...this.#rotated, this.#active].map((seg) => ({
			seg,
			n: seg.count,
			endSize: seg.size,
		}));
		for (const s of snap) s.seg.readers++;
		try {
			const out: StoredRecord[] = [];
			if (f.sinceSeq !== undefined) {
				const since = f.sinceSeq;
				for (const { seg, n, endSize } of snap) {
					if (out.length >= limit) break;
					if (seg.firstSeq + n - 1 <= since || n === 0) continue;
					if (seg.removed && !seg.fh) continue; // retention took it meanwhile
					await seg.ready();
					let i = Math.max(0, since - seg.firstSeq + 1);
					while (i < n && out.length < limit) {
						const j = seg.blockEnd(i, n);
						for (const r of await seg.read(i, j, n, endSize))
							if (match(r) && out.length < limit) out.push(r);
						i = j;
					}
				}
				return out;
			}
			// Newest first, in blocks growing from 64 KiB, so "the last 100" reads only the end.
			let older = false;
			for (
				let k = snap.length - 1;
				k >= 0 && out.length < limit && !older;
				k--
			) {
				const { seg, n, endSize } = snap[k] as (typeof snap)[0];
				if (n === 0 || (seg.removed && !seg.fh)) continue;
				await seg.ready();
				let j = n;
				let blockBytes = 64 * 1024;
				while (j > 0 && out.length < limit) {
					const i = seg.blockStart(j, blockBytes);
					blockBytes = Math.min(blockBytes * 2, 1 << 20);
					const block = await seg.read(i, j, n, endSize);
					const hits = block.filter(match);
					out.unshift(
						...hits.slice(Math.max(0, hits.length - (limit - out.length))),
					);
					if (
						sinceMs !== undefined &&
						Date.parse((block[0] as StoredRecord).time) < sinceMs
					) {
						older = true;
						break;
					}
					j = i;
				}
			}
			return out;
		} finally {
			for (const s of snap) await s.seg.release();
		}
	}

	/** Re-reads every kept file and checks every record and link of the chain. */
	async verifyChain(): Promise<{
		records: number;
		ok: boolean;
		brokenAt?: number;
		/** The first kept record's seq, when retention removed older files. */
		firstSeq?: number;
	}> {
		this.#checkOpen();
		const start = this.#anchor ?? { seq: 0, hash: ZERO_HASH };
		const snap = [...this.#rotated, this.#active].map((seg) => ({
			seg,
			endSize: seg.size,
		}));
		for (const s of snap) s.seg.readers++;
		let prev = start;
		let records = 0;
		try {
			for (const { seg, endSize } of snap) {
				try {
					seg.fh ??= await open(seg.path, "r");
				} catch (e) {
					throw fromSystemError(e, seg.path, "reading the audit log");
				}
				for await (const l of readLines(seg.fh, 0, endSize)) {
					const r = l.complete && l.bytes ? parseLine(l.bytes) : undefined;
					if (
						!r ||
						r.seq !== prev.seq + 1 ||
						r.prev !== prev.hash ||
						!selfConsistent(r)
					)
						return { records, ok: false, brokenAt: prev.seq + 1 };
					prev = { seq: r.seq, hash: r.hash };
					records++;
				}
			}
		} finally {
			for (const s of snap) await s.seg.release();
		}
		return this.#anchor
			? { records, ok: true, firstSeq: start.seq + 1 }
			: { records, ok: true };
	}

	/** Waits for queued appends, then closes the files. */
	async close(): Promise<void> {
		if (this.#closed) return;
		this.#closed = true;
		while (this.#flushActive) await this.#flushing;
		for (const s of [...this.#rotated, this.#active]) await s.closeFile();
	}

	#checkOpen(): void {
		if (this.#closed)
			throw new DadiError("INTERNAL", `audit log ${this.file} is closed`);
	}
}

function rotatedName(file: string, firstSeq: number): string {
	return `${file}.${String(firstSeq).padStart(12, "0")}`;
}

/** The rotated files beside `file`, by first seq. */
async function rotatedFiles(
	file: string,
): Promise<{ path: string; firstSeq: number }[]> {
	const base = basename(file);
	const out: { path: string; firstSeq: number }[] = [];
	let names: string[];
	try {
		names = await readdir(dirname(file));
	} catch (e) {
		if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
		throw e;
	}
	for (const n of names) {
		if (!n.startsWith(`${base}.`)) continue;
		const digits = n.slice(base.length + 1);
		if (!/^\d{12,16}$/.test(digits)) continue;
		out.push({ path: join(dirname(file), n), firstSeq: Number(digits) });
	}
	return out.sort((a, b) => a.firstSeq - b.firstSeq);
}

/**
 * A rotated file that must continue the chain after `expected` (a rotated file is complete: its
 * first and last records are checked here, the rest when it is first read). A file wholly before
 * the anchor is what a crash left of a removal: removed now.
 */
async function checkRotated(
	path: string,
	firstSeq: number,
	expected: ChainPoint,
	anchor: ChainPoint | undefined,
): Promise<Segment | "removed"> {
	const fh = await open(path, "r");
	let ends: Awaited<ReturnType<typeof headAndTail>>;
	let size: number;
	try {
		const st = await fh.stat();
		if (!st.isFile())
			throw new DadiError("FORMAT_INVALID", `audit log ${path}: not a file`);
		size = st.size;
		ends = await headAndTail(fh, size);
	} finally {
		await fh.close();
	}
	if (!ends)
		throw new DadiError(
			"FORMAT_INVALID",
			`audit log ${path} is damaged: the first or last record of a rotated file is not intact; move the log files aside to start a new chain`,
		);
	if (anchor && ends.tail.seq <= anchor.seq) {
		await unlink(path);
		await fsyncDir(dirname(path));
		return "removed";
	}
	if (
		ends.head.seq !== firstSeq ||
		ends.head.seq !== expected.seq + 1 ||
		ends.head.prev !== expected.hash ||
		ends.tail.seq < ends.head.seq
	)
		throw new DadiError(
			"FORMAT_INVALID",
			`audit log ${path} does not continue the chain (it should start at record ${expected.seq + 1}); a file was removed, edited or put in its place`,
		);
	return new Segment({
		path,
		before: expected,
		last: { seq: ends.tail.seq, hash: ends.tail.hash },
		size,
	});
}

/** Where the kept chain starts after retention: `FILE.anchor`, {"seq","hash"}; undefined if none. */
async function readAnchor(file: string): Promise<ChainPoint | undefined> {
	const path = `${file}.anchor`;
	let text: string;
	try {
		const st = await stat(path);
		if (!st.isFile() || st.size > 4096)
			throw new DadiError("FORMAT_INVALID", `${path}: not an audit anchor`);
		text = await readFile(path, "utf8");
	} catch (e) {
		if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
		throw e;
	}
	let v: unknown;
	try {
		v = JSON.parse(text);
	} catch {
		v = undefined;
	}
	const a = v as { seq?: unknown; hash?: unknown } | undefined;
	if (
		typeof a !== "object" ||
		a === null ||
		!Number.isSafeInteger(a.seq) ||
		(a.seq as number) < 1 ||
		typeof a.hash !== "string" ||
		!HEX64.test(a.hash)
	)
		throw new DadiError(
			"FORMAT_INVALID",
			`${path}: not an audit anchor ({"seq","hash"} of the last removed record)`,
		);
	return { seq: a.seq as number, hash: a.hash };
}

function writeAnchor(file: string, at: ChainPoint): Promise<void> {
	const path = `${file}.anchor`;
	return writeViaTemp(
		path,
		Buffer.from(`${JSON.stringify({ seq: at.seq, hash: at.hash })}\n`),
		async (tmp) => {
			await rename(tmp, path);
			await fsyncDir(dirname(path));
		},
	);
}
