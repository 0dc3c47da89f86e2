/**
 * Where an EROFS image keeps what a mount and a path walk read first, found from its plaintext:
 * the superblock, then a breadth-first walk of the directory tree from the root inode: every
 * directory's inode and blocks (plain and inline layouts) and the inode of every entry. For
 * prefetch at open. On-disk format: the kernel's fs/erofs/erofs_fs.h.
 *
 * The bytes are the image's contents: every field is bounds checked, the work is capped
 * (MetaWalkOptions), and garbage gives a FORMAT_INVALID DadiError or fewer ranges, never a crash.
 */
import {
	DEFAULT_META_BYTES,
	DEFAULT_META_DIRECTORIES,
	DEFAULT_META_READ_BYTES,
	type DiskRange,
	formatError,
	inside,
	type MetaWalkOptions,
	RangeList,
	type ReadDisk,
} from "./ranges.js";

const SB_OFFSET = 1024;
const SB_SIZE = 128;
const MAGIC = 0xe0f5e1e2;
const LAYOUT_FLAT_PLAIN = 0;
const LAYOUT_FLAT_INLINE = 2;
const S_IFMT = 0xf000;
const S_IFDIR = 0x4000;
const FT_DIR = 2;
const DIRENT_SIZE = 12;
/** Largest directory read whole (bytes); bigger ones are read up to this. */
const MAX_DIR_BYTES = 4 << 20;

export interface ErofsSuper {
	blockSize: number;
	rootNid: number;
	/** Byte offset of the metadata area (inode nid n is at metaBase + 32 n). */
	metaBase: number;
}

/** Parses the superblock (128 bytes at 1024). */
export function parseErofsSuper(sb: Buffer, diskSize: number): ErofsSuper {
	const what = "EROFS superblock";
	if (sb.length < SB_SIZE) throw formatError(what, "too short");
	if (sb.readUInt32LE(0) !== MAGIC) throw formatError(what, "no EROFS magic");
	const bits = sb.readUInt8(12);
	if (bits < 9 || bits > 16) throw formatError(what, `block size 2^${bits}`);
	const blockSize = 2 ** bits;
	const metaBase = sb.readUInt32LE(40) * blockSize;
	if (metaBase >= diskSize)
		throw formatError(what, "the metadata area is past the disk's end");
	return { blockSize, rootNid: sb.readUInt16LE(14), metaBase };
}

/** What a directory walk needs of one inode. */
export interface ErofsInode {
	/** Where the inode starts on the disk. */
	offset: number;
	/** Its on-disk size (32 compact, 64 extended) plus inline xattrs. */
	headLength: number;
	isDir: boolean;
	size: number;
	/** The data's ranges (plain blocks, then the inline tail); empty for other layouts. */
	data: DiskRange[];
}

/** Parses an inode from at least its first 64 bytes (fewer at the disk's end: then compact). */
export function parseErofsInode(
	s: ErofsSuper,
	offset: number,
	b: Buffer,
): ErofsInode | undefined {
	if (b.length < 32) return undefined;
	const format = b.readUInt16LE(0);
	const extended = (format & 1) === 1;
	if (extended && b.length < 64) return undefined;
	const layout = (format >> 1) & 7;
	const icount = b.readUInt16LE(2);
	const mode = b.readUInt16LE(4);
	const size = extended
		? b.readUInt32LE(8) + b.readUInt32LE(12) * 2 ** 32
		: b.readUInt32LE(8);
	const rawBlk = b.readUInt32LE(16);
	const inodeSize = extended ? 64 : 32;
	const xattrs = icount === 0 ? 0 : 12 + (icount - 1) * 4;
	const headLength = inodeSize + xattrs;
	const bs = s.blockSize;
	const data: DiskRange[] = [];
	if (size > 0 && size <= 2 ** 40) {
		if (layout === LAYOUT_FLAT_PLAIN)
			data.push({ offset: rawBlk * bs, length: Math.ceil(size / bs) * bs });
		else if (layout === LAYOUT_FLAT_INLINE) {
			const full = Math.floor(size / bs) * bs;
			if (full > 0) data.push({ offset: rawBlk * bs, length: full });
			const tail = size - full;
			if (tail > 0) data.push({ offset: offset + headLength, length: tail });
		}
	}
	return {
		offset,
		headLength,
		isDir: (mode & S_IFMT) === S_IFDIR,
		size,
		data,
	};
}

export interface ErofsEntry {
	nid: number;
	isDir: boolean;
	/** "." and ".." */
	dot: boolean;
}

/**
 * The entries of one directory block (or inline tail): 12-byte dirents (nid, name offset, type)
 * then the names; the first name's offset says how many dirents there are.
 */
export function parseErofsDirBlock(b: Buffer): ErofsEntry[] {
	if (b.length < DIRENT_SIZE) return [];
	const first = b.readUInt16LE(8);
	if (first % DIRENT_SIZE !== 0 || first < DIRENT_SIZE || first > b.length)
		return [];
	const n = first / DIRENT_SIZE;
	const out: ErofsEntry[] = [];
	for (let i = 0; i < n; i++) {
		const d = i * DIRENT_SIZE;
		const nid = b.readUInt32LE(d) + b.readUInt32LE(d + 4) * 2 ** 32;
		const nameAt = b.readUInt16LE(d + 8);
		const nameEnd = i + 1 < n ? b.readUInt16LE(d + 8 + DIRENT_SIZE) : b.length;
		if (nameAt < first || nameEnd > b.length || nameEnd <= nameAt) continue;
		let end = nameEnd;
		// the last name of a block may be padded with NULs
		while (end > nameAt && b[end - 1] === 0) end--;
		const name = b.subarray(nameAt, end);
		const dot =
			(name.length === 1 && name[0] === 0x2e) ||
			(name.length === 2 && name[0] === 0x2e && name[1] === 0x2e);
		if (nid > 2 ** 40) continue;
		out.push({ nid, isDir: b.readUInt8(d + 10) === FT_DIR, dot });
	}
	return out;
}

/**
 * Walks an EROFS image's directory tree breadth first from the root: the superblock, then each
 * directory's inode and blocks (announced to `beforeRead` level by level, then read) and the
 * inodes of its entries. Returns the ranges in that order, clipped to the disk and capped.
 */
export async function erofsMetadataRanges(
	read: ReadDisk,
	o: MetaWalkOptions,
): Promise<DiskRange[]> {
	const size = o.diskSize;
	if (!inside(SB_OFFSET, SB_SIZE, size))
		throw formatError("EROFS", "the disk is too small to hold a superblock");
	const s = parseErofsSuper(await read(SB_OFFSET, SB_SIZE), size);
	const list = new RangeList(size, o.maxBytes ?? DEFAULT_META_BYTES);
	list.add(0, Math.max(SB_OFFSET + SB_SIZE, Math.min(s.blockSize, 4096)));
	let budget = o.maxReadBytes ?? DEFAULT_META_READ_BYTES;
	let dirsLeft = o.maxDirectories ?? DEFAULT_META_DIRECTORIES;
	const seen = new Set<number>([s.rootNid]);
	const inodeAt = (nid: number) => s.metaBase + nid * 32;
	const readClipped = async (r: DiskRange): Promise<Buffer | undefined> => {
		const length = Math.min(r.length, size - r.offset, budget);
		if (!inside(r.offset, length, size)) return undefined;
		budget -= length;
		return read(r.offset, length);
	};
	let level = [s.rootNid];
	while (level.length > 0 && budget > 0 && !list.full) {
		const nids = level.slice(0, Math.max(0, dirsLeft));
		dirsLeft -= nids.length;
		const heads = nids.map((nid) => ({ offset: inodeAt(nid), length: 64 }));
		await o.beforeRead?.(heads);
		const inodes: ErofsInode[] = [];
		for (const h of heads) {
			const b = await readClipped(h);
			const ino = b && parseErofsInode(s, h.offset, b);
			if (!ino?.isDir) continue;
			inodes.push(ino);
			list.add(ino.offset, ino.headLength);
		}
		const data = inodes.flatMap((ino) => {
			let left = MAX_DIR_BYTES;
			return ino.data.flatMap((r) => {
				const length = Math.min(r.length, left);
				left -= length;
				return length > 0 ? [{ offset: r.offset, length }] : [];
			});
		});
		for (const r of data) list.add(r.offset, r.length);
		await o.beforeRead?.(data);
		const next: number[] = [];
		for (const r of data) {
			if (budget <= 0 || list.full) break;
			const b = await readClipped(r);
			if (!b) continue;
			for (let at = 0; at < b.length; at += s.blockSize) {
				for (const e of parseErofsDirBlock(b.subarray(at, at + s.blockSize))) {
					if (e.dot || seen.has(e.nid)) continue;
					seen.add(e.nid);
					list.add(inodeAt(e.nid), 64);
					if (e.isDir) next.push(e.nid);
				}
			}
		}
		level = next;
	}
	return list.ranges;
}
