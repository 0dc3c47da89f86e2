/**
 * Where an ext4 file system keeps what a mount and a path walk read first, found from its
 * plaintext: the superblock, the group descriptors, the in-use part of every inode table, and the
 * blocks of directories (from the directory inodes' extent trees: depth-0 leaves in full, the
 * first level of index blocks of deeper trees; block maps of old-style inodes: the direct blocks
 * and the indirect block). For prefetch at open: the kernel otherwise asks for these one after
 * another as it mounts and walks paths.
 *
 * The bytes are the image's contents: every field is bounds checked, the work is capped
 * (MetaWalkOptions), and garbage gives a FORMAT_INVALID DadiError or fewer ranges, never a crash.
 * Layout: https://www.kernel.org/doc/html/latest/filesystems/ext4/ (super.c, ext4.h).
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
const SB_SIZE = 1024;
const MAGIC = 0xef53;
const INCOMPAT_META_BG = 0x10;
const INCOMPAT_64BIT = 0x80;
const RO_COMPAT_GDT_CSUM = 0x10;
const RO_COMPAT_METADATA_CSUM = 0x400;
const BG_INODE_UNINIT = 0x1;
const S_IFMT = 0xf000;
const S_IFDIR = 0x4000;
const EXT4_EXTENTS_FL = 0x80000;
const EXT4_INLINE_DATA_FL = 0x10000000;
const EXTENT_MAGIC = 0xf30a;
/** Inode tables are read in pieces of this size. */
const READ_PIECE = 1 << 20;

export interface Ext4Super {
	blockSize: number;
	blocksCount: number;
	firstDataBlock: number;
	blocksPerGroup: number;
	inodesPerGroup: number;
	inodeSize: number;
	descSize: number;
	groups: number;
	/** Whether bg_itable_unused and the INODE_UNINIT flag can be trusted (group checksums). */
	groupCsum: boolean;
	/** Groups whose descriptors follow the superblock (all, unless META_BG). */
	gdtGroups: number;
}

/** Parses the 1024-byte superblock (bytes 1024..2047 of the disk). */
export function parseExt4Super(sb: Buffer, diskSize: number): Ext4Super {
	const what = "ext4 superblock";
	if (sb.length < SB_SIZE) throw formatError(what, "too short");
	if (sb.readUInt16LE(0x38) !== MAGIC) throw formatError(what, "no ext4 magic");
	const logBlock = sb.readUInt32LE(0x18);
	if (logBlock > 6) throw formatError(what, `block size 2^${10 + logBlock}`);
	const blockSize = 1024 << logBlock;
	const incompat = sb.readUInt32LE(0x60);
	const roCompat = sb.readUInt32LE(0x64);
	const is64 = (incompat & INCOMPAT_64BIT) !== 0;
	const blocksCount =
		sb.readUInt32LE(0x4) + (is64 ? sb.readUInt32LE(0x150) * 2 ** 32 : 0);
	const firstDataBlock = sb.readUInt32LE(0x14);
	const blocksPerGroup = sb.readUInt32LE(0x20);
	const inodesPerGroup = sb.readUInt32LE(0x28);
	const rev = sb.readUInt32LE(0x4c);
	const inodeSize = rev >= 1 ? sb.readUInt16LE(0x58) : 128;
	const descSize = is64 ? sb.readUInt16LE(0xfe) : 32;
	if (blocksPerGroup < 8 || blocksPerGroup > blockSize * 8)
		throw formatError(what, `${blocksPerGroup} blocks per group`);
	if (inodesPerGroup < 1 || inodesPerGroup > blockSize * 8)
		throw formatError(what, `${inodesPerGroup} inodes per group`);
	if (
		inodeSize < 128 ||
		inodeSize > blockSize ||
		(inodeSize & (inodeSize - 1)) !== 0
	)
		throw formatError(what, `inode size ${inodeSize}`);
	if (descSize < 32 || descSize > 1024 || (descSize & (descSize - 1)) !== 0)
		throw formatError(what, `group descriptor size ${descSize}`);
	if (firstDataBlock >= blocksCount || blocksCount * blockSize > 2 ** 53)
		throw formatError(what, `${blocksCount} blocks`);
	// A disk holds at most this many groups (blocks past its end are not ours to read).
	const usable = Math.min(blocksCount, Math.floor(diskSize / blockSize));
	const groups = Math.max(
		0,
		Math.ceil((usable - firstDataBlock) / blocksPerGroup),
	);
	const perBlock = blockSize / descSize;
	const gdtGroups =
		(incompat & INCOMPAT_META_BG) !== 0
			? Math.min(groups, sb.readUInt32LE(0x104) * perBlock)
			: groups;
	return {
		blockSize,
		blocksCount,
		firstDataBlock,
		blocksPerGroup,
		inodesPerGroup,
		inodeSize,
		descSize,
		groups,
		groupCsum:
			(roCompat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM)) !== 0,
		gdtGroups,
	};
}

/** The group descriptor table's range (the descriptors that follow the superblock). */
export function ext4GdtRange(s: Ext4Super): DiskRange {
	return {
		offset: (s.firstDataBlock + 1) * s.blockSize,
		length: s.gdtGroups * s.descSize,
	};
}

/** One group's inode table: where it starts and how many of its bytes hold inodes in use. */
export interface InodeTable {
	group: number;
	offset: number;
	length: number;
}

/**
 * The in-use part of every group's inode table, from the descriptors: with group checksums, a
 * group flagged INODE_UNINIT has none and bg_itable_unused inodes at its end are unused.
 */
export function ext4InodeTables(
	s: Ext4Super,
	gdt: Buffer,
	diskSize: number,
): InodeTable[] {
	const out: InodeTable[] = [];
	const n = Math.min(s.gdtGroups, Math.floor(gdt.length / s.descSize));
	const tableBytes = s.inodesPerGroup * s.inodeSize;
	for (let g = 0; g < n; g++) {
		const d = g * s.descSize;
		const big = s.descSize >= 64;
		const block =
			gdt.readUInt32LE(d + 8) +
			(big ? gdt.readUInt32LE(d + 0x28) * 2 ** 32 : 0);
		const flags = gdt.readUInt16LE(d + 0x12);
		const unused =
			gdt.readUInt16LE(d + 0x1c) +
			(big ? gdt.readUInt16LE(d + 0x32) * 65536 : 0);
		let used = s.inodesPerGroup;
		if (s.groupCsum) {
			if (flags & BG_INODE_UNINIT) used = 0;
			else used = Math.max(0, s.inodesPerGroup - unused);
		}
		if (used === 0 || block === 0) continue;
		const offset = block * s.blockSize;
		const length = Math.min(used * s.inodeSize, tableBytes);
		if (!inside(offset, length, diskSize)) continue;
		out.push({ group: g, offset, length });
	}
	return out;
}

/**
 * The blocks of the directories among `count` inodes (raw bytes of an inode table, inode size
 * `s.inodeSize`): extent leaves of depth-0 trees, index-node blocks of deeper trees, the direct
 * and indirect blocks of block-mapped inodes; nothing for inline-data directories.
 */
export function ext4DirectoryBlocks(s: Ext4Super, table: Buffer): DiskRange[] {
	const out: DiskRange[] = [];
	const bs = s.blockSize;
	const blockRange = (block: number, n: number) => {
		if (block > 0 && n > 0 && block < s.blocksCount)
			out.push({
				offset: block * bs,
				length: Math.min(n, s.blocksCount - block) * bs,
			});
	};
	for (let at = 0; at + s.inodeSize <= table.length; at += s.inodeSize) {
		const mode = table.readUInt16LE(at);
		const links = table.readUInt16LE(at + 0x1a);
		if ((mode & S_IFMT) !== S_IFDIR || links === 0) continue;
		const flags = table.readUInt32LE(at + 0x20);
		if (flags & EXT4_INLINE_DATA_FL) continue;
		const ib = at + 0x28; // i_block, 60 bytes
		if (flags & EXT4_EXTENTS_FL) {
			if (table.readUInt16LE(ib) !== EXTENT_MAGIC) continue;
			const entries = Math.min(table.readUInt16LE(ib + 2), 4);
			const depth = table.readUInt16LE(ib + 6);
			for (let i = 0; i < entries; i++) {
				const e = ib + 12 + i * 12;
				if (depth === 0) {
					const raw = table.readUInt16LE(e + 4);
					const len = raw > 32768 ? raw - 32768 : raw;
					const start =
						table.readUInt16LE(e + 6) * 2 ** 32 + table.readUInt32LE(e + 8);
					blockRange(start, len);
				} else {
					const leaf =
						table.readUInt16LE(e + 8) * 2 ** 32 + table.readUInt32LE(e + 4);
					blockRange(leaf, 1);
				}
			}
		} else {
			// direct blocks, then the single indirect block itself
			for (let i = 0; i < 13; i++)
				blockRange(table.readUInt32LE(ib + i * 4), 1);
		}
	}
	return out;
}

/**
 * Walks an ext4 file system's metadata: superblock, descriptors, in-use inode tables (announced
 * to `beforeRead`, then read in pieces to find directories), directory blocks. Returns the ranges
 * in that order, clipped to the disk and capped. FORMAT_INVALID when there is no sane superblock.
 */
export async function ext4MetadataRanges(
	read: ReadDisk,
	o: MetaWalkOptions,
): Promise<DiskRange[]> {
	const size = o.diskSize;
	if (!inside(SB_OFFSET, SB_SIZE, size))
		throw formatError("ext4", "the disk is too small to hold a superblock");
	const s = parseExt4Super(await read(SB_OFFSET, SB_SIZE), size);
	const list = new RangeList(size, o.maxBytes ?? DEFAULT_META_BYTES);
	list.add(0, Math.max(SB_OFFSET + SB_SIZE, Math.min(s.blockSize, 4096)));
	let budget = o.maxReadBytes ?? DEFAULT_META_READ_BYTES;
	const gdt = ext4GdtRange(s);
	const gdtLength = Math.min(
		gdt.length,
		budget,
		Math.max(0, size - gdt.offset),
	);
	if (gdtLength < s.descSize) return list.ranges;
	list.add(gdt.offset, gdtLength);
	budget -= gdtLength;
	const tables = ext4InodeTables(s, await read(gdt.offset, gdtLength), size);
	for (const t of tables) list.add(t.offset, t.length);
	// Read the tables (what the budget allows) to find the directories.
	const toRead: DiskRange[] = [];
	for (const t of tables) {
		for (let at = 0; at < t.length && budget > 0; at += READ_PIECE) {
			const n = Math.min(READ_PIECE, t.length - at, budget);
			// whole inodes only
			const whole = n - (n % s.inodeSize);
			if (whole <= 0) break;
			toRead.push({ offset: t.offset + at, length: whole });
			budget -= whole;
		}
	}
	await o.beforeRead?.(toRead);
	let dirs = 0;
	const maxDirs = o.maxDirectories ?? DEFAULT_META_DIRECTORIES;
	for (const r of toRead) {
		if (list.full || dirs >= maxDirs) break;
		const blocks = ext4DirectoryBlocks(s, await read(r.offset, r.length));
		for (const b of blocks) {
			if (dirs++ >= maxDirs) break;
			if (!list.add(b.offset, b.length)) break;
		}
	}
	return list.ranges;
}
