/**
 * The tar reader: a streaming parser over the bytes of an uncompressed tar (`readTar`), and a
 * header-only indexer over a tar stored in a file (`indexTar`).
 *
 * Supported: ustar (prefix + name), GNU (long names and link targets in 'L'/'K' headers, base-256
 * numbers), PAX ('x' per entry and 'g' global headers: path, linkpath, size, uid, gid, fractional
 * mtime, SCHILY.xattr.*, LIBARCHIVE.xattr.*; uname, gname, atime, ctime and unknown keys are
 * ignored), star and v7 headers; entry types regular file ('0', NUL, '7'), hard link, symbolic
 * link, character and block device, directory, fifo. Refused with INPUT_INVALID: everything else
 * (GNU sparse files in either form, volume labels, multi-volume parts, ...), absolute member
 * paths and any ".." component (in member paths and hard link targets), names that are empty,
 * contain NUL or are not UTF-8, bad checksums, malformed numbers and PAX records, sizes over the
 * limits, and truncation anywhere. Symbolic link targets are passed through as stored.
 *
 * The end of the archive is two zero blocks; end of input after one zero block, or at a block
 * boundary with none, is accepted too. What follows the end marker is ignored.
 */
import { DadiError } from "../errors.js";
import type { RangeSource } from "../storage/source.js";
import type { TarEntry } from "./tar-entry.js";
import { BLOCK, isZeroBlock, paddingOf } from "./tar-header.js";
import {
	type HeaderStep,
	resolveLimits,
	TarParser,
	type TarReadOptions,
} from "./tar-parser.js";
import { entryError, quote, resolveInside } from "./tar-path.js";

export type { TarReadOptions } from "./tar-parser.js";
export { DEFAULT_LIMITS } from "./tar-parser.js";

export interface TarStreamOptions extends TarReadOptions {
	/**
	 * After the end-of-archive marker, read the input to its end and discard it (default true), so
	 * that whatever produces the bytes (a decompressor checking its trailer, a digest being
	 * computed on the way) sees all of them. False: stop reading at the marker.
	 */
	drain?: boolean;
}

const EMPTY = Buffer.alloc(0);

/** Pulls bytes from an async iterable of chunks, in any sizes the caller asks for. */
class ByteReader {
	/** Bytes consumed so far. */
	offset = 0;
	private chunk: Buffer = EMPTY;
	private ended = false;
	private failure: { error: unknown } | undefined;
	private readonly it: AsyncIterator<unknown>;

	constructor(chunks: AsyncIterable<Buffer>) {
		this.it = chunks[Symbol.asyncIterator]();
	}

	/** Makes `chunk` non-empty; false at the end of the input. */
	private async fill(): Promise<boolean> {
		while (this.chunk.length === 0) {
			if (this.failure) throw this.failure.error;
			if (this.ended) return false;
			let res: IteratorResult<unknown>;
			try {
				res = await this.it.next();
			} catch (error) {
				this.failure = { error };
				throw error;
			}
			if (res.done) {
				this.ended = true;
				return false;
			}
			const v = res.value;
			if (!(v instanceof Uint8Array)) {
				const error = new DadiError(
					"USAGE",
					`tar reader: the input must yield Buffers, not ${typeof v}`,
				);
				this.failure = { error };
				throw error;
			}
			this.chunk = Buffer.isBuffer(v)
				? v
				: Buffer.from(v.buffer, v.byteOffset, v.byteLength);
		}
		return true;
	}

	/** Up to `max` (> 0) bytes, as they come; empty only at the end of the input. */
	async readSome(max: number): Promise<Buffer> {
		if (!(await this.fill())) return EMPTY;
		const n = Math.min(max, this.chunk.length);
		const b = this.chunk.subarray(0, n);
		this.chunk = this.chunk.subarray(n);
		this.offset += n;
		return b;
	}

	/** Exactly `n` bytes, or fewer only at the end of the input. */
	async readExact(n: number): Promise<Buffer> {
		if (n === 0) return EMPTY;
		const first = await this.readSome(n);
		if (first.length === n || first.length === 0) return first;
		const parts = [first];
		let got = first.length;
		while (got < n) {
			const b = await this.readSome(n - got);
			if (b.length === 0) break;
			parts.push(b);
			got += b.length;
		}
		return Buffer.concat(parts, got);
	}

	/** Skips `n` bytes; returns how many there were (fewer only at the end of the input). */
	async discard(n: number): Promise<number> {
		let left = n;
		while (left > 0) {
			if (!(await this.fill())) break;
			const k = Math.min(left, this.chunk.length);
			this.chunk = this.chunk.subarray(k);
			this.offset += k;
			left -= k;
		}
		return n - left;
	}

	/** Reads and discards everything left. */
	async drain(): Promise<void> {
		while (await this.fill()) {
			this.offset += this.chunk.length;
			this.chunk = EMPTY;
		}
	}

	/** Stops the input early (lets a stream release its resources). */
	async close(): Promise<void> {
		if (this.ended || this.failure) return;
		this.ended = true;
		this.chunk = EMPTY;
		try {
			await this.it.return?.();
		} catch {
			// The input's own clean-up failed; nothing of ours depends on it.
		}
	}
}

function truncated(what: string, offset: number): DadiError {
	return new DadiError(
		"INPUT_INVALID",
		`tar archive truncated: it ends at byte ${offset}, inside ${what}`,
	);
}

function loneZeroBlock(offset: number): DadiError {
	return new DadiError(
		"INPUT_INVALID",
		`tar archive: a single zero block at byte ${offset} followed by more entries (corrupt archive)`,
	);
}

/** The content of the current entry, read from the shared reader. */
class EntryBody {
	remaining: number;
	/** Set once the reader has moved on to the next entry. */
	stale = false;
	/** The reader moved on before the consumer had read or skipped all of the content. */
	private abandoned = false;

	constructor(
		private readonly r: ByteReader,
		private readonly size: number,
		private readonly name: string,
	) {
		this.remaining = size;
	}

	async *chunks(): AsyncGenerator<Buffer> {
		while (this.remaining > 0 || this.abandoned) {
			if (this.stale)
				throw new DadiError(
					"USAGE",
					`tar entry ${quote(this.name)}: its content was read after the reader moved to the next entry`,
				);
			const b = await this.r.readSome(this.remaining);
			if (b.length === 0) throw this.truncated();
			this.remaining -= b.length;
			yield b;
		}
	}

	/** The reader moves on: discards what is left. */
	async moveOn(): Promise<void> {
		this.stale = true;
		this.abandoned = this.remaining > 0;
		await this.discard();
	}

	async discard(): Promise<void> {
		if (this.remaining === 0) return;
		const n = await this.r.discard(this.remaining);
		this.remaining -= n;
		if (this.remaining > 0) throw this.truncated();
	}

	private truncated(): DadiError {
		return entryError(
			this.name,
			`truncated: the archive ends after ${this.size - this.remaining} of its ${this.size} bytes of content`,
		);
	}
}

/**
 * The entries of an uncompressed tar, streaming: each entry's `body` yields its content as it
 * arrives; whatever of it the consumer has not read when it asks for the next entry is skipped.
 * A body must not be read after asking for the next entry, nor concurrently with that.
 */
export async function* readTar(
	chunks: AsyncIterable<Buffer>,
	opts?: TarStreamOptions,
): AsyncGenerator<TarEntry> {
	const parser = new TarParser(resolveLimits(opts));
	const r = new ByteReader(chunks);
	try {
		for (;;) {
			const at = r.offset;
			const block = await r.readExact(BLOCK);
			if (block.length === 0) break;
			if (block.length < BLOCK) throw truncated("a header", r.offset);
			if (isZeroBlock(block)) {
				const next = await r.readExact(BLOCK);
				if (next.length === 0) break;
				if (next.length < BLOCK)
					throw truncated("the end-of-archive marker", r.offset);
				if (!isZeroBlock(next)) throw loneZeroBlock(at);
				break;
			}
			const step = parser.header(block, at);
			if (step.kind === "meta") {
				const body = await r.readExact(step.size);
				if (body.length < step.size)
					throw truncated(`the extended header at byte ${at}`, r.offset);
				if ((await r.discard(paddingOf(step.size))) < paddingOf(step.size))
					throw truncated(`the extended header at byte ${at}`, r.offset);
				step.apply(body);
				continue;
			}
			const body = new EntryBody(r, step.dataSize, step.name);
			yield {
				...step.entry,
				body: { [Symbol.asyncIterator]: () => body.chunks() },
				skip: () => (body.stale ? Promise.resolve() : body.discard()),
			};
			await body.moveOn();
			const pad = paddingOf(step.dataSize);
			if ((await r.discard(pad)) < pad)
				throw entryError(
					step.name,
					"truncated: the archive ends inside the padding after its content",
				);
		}
		parser.finish(r.offset);
		if (opts?.drain ?? true) await r.drain();
	} finally {
		await r.close();
	}
}

export interface TarMember {
	/** Absolute byte offset of the member's content in the archive. */
	offset: number;
	size: number;
}

type Node =
	| { kind: "file"; member: TarMember }
	| { kind: "symlink"; target: string }
	| { kind: "other" };

/** Symlink hops followed before giving up (the Linux limit). */
const MAX_HOPS = 40;

/**
 * The regular-file members of an uncompressed tar stored in `src`, by normalised path, with the
 * absolute offset of their content; read by seeking from header to header, never reading content.
 * Validation is that of `readTar`. As extraction would leave them: a later member replaces an
 * earlier one of the same path; a hard link maps to its target's content; a symbolic link maps to
 * the content of the regular file it leads to, resolved within the archive (lexically: through
 * member paths, not through symlinked directories); members of other types are left out.
 */
export async function indexTar(
	src: RangeSource,
	opts?: TarReadOptions,
): Promise<Map<string, TarMember>> {
	const parser = new TarParser(resolveLimits(opts));
	const nodes = new Map<string, Node>();
	const end = src.size;
	let off = 0;
	for (;;) {
		if (off === end) break;
		if (end - off < BLOCK) throw truncated("a header", end);
		const block = await src.read(off, BLOCK);
		if (isZeroBlock(block)) {
			const rest = end - off - BLOCK;
			if (rest === 0) break;
			if (rest < BLOCK) throw truncated("the end-of-archive marker", end);
			if (!isZeroBlock(await src.read(off + BLOCK, BLOCK)))
				throw loneZeroBlock(off);
			break;
		}
		const step: HeaderStep = parser.header(block, off);
		const dataAt = off + BLOCK;
		if (step.kind === "meta") {
			if (dataAt + step.size + paddingOf(step.size) > end)
				throw truncated(`the extended header at byte ${off}`, end);
			step.apply(await src.read(dataAt, step.size));
			off = dataAt + step.size + paddingOf(step.size);
			continue;
		}
		const size = step.dataSize;
		if (dataAt + size > end)
			throw entryError(
				step.name,
				`truncated: the archive ends after ${end - dataAt} of its ${size} bytes of content`,
			);
		if (dataAt + size + paddingOf(size) > end)
			throw entryError(
				step.name,
				"truncated: the archive ends inside the padding after its content",
			);
		const e = step.entry;
		if (e.type === "file")
			nodes.set(e.path, { kind: "file", member: { offset: dataAt, size } });
		else if (e.type === "hardlink")
			nodes.set(e.path, nodes.get(e.linkname) ?? { kind: "other" });
		else if (e.type === "symlink")
			nodes.set(e.path, { kind: "symlink", target: e.linkname });
		else nodes.set(e.path, { kind: "other" });
		off = dataAt + size + paddingOf(size);
	}
	parser.finish(off);

	const index = new Map<string, TarMember>();
	for (const [path, first] of nodes) {
		let node: Node | undefined = first;
		let at = path;
		for (let hops = 0; node?.kind === "symlink" && hops < MAX_HOPS; hops++) {
			at = resolveInside(at, node.target);
			node = nodes.get(at);
		}
		if (node?.kind === "file") index.set(path, node.member);
	}
	return index;
}
