/**
 * Which file system a disk holds, from its superblock (pure). dadi seals ext4 (mke2fs -d) or EROFS
 * (mkfs.erofs); the container root is mounted with the type found here rather than letting the
 * kernel probe every file system it knows.
 *
 * - ext2/3/4: the superblock starts at 1024; s_magic (le16) 0xEF53 at 1024 + 0x38 = 1080.
 * - EROFS: the superblock starts at 1024; its magic (le32) 0xE0F5E1E2 is its first field.
 */

export type FsType = "ext4" | "erofs";

/** Bytes of the disk's start needed to tell (the superblock areas of both). */
export const SUPERBLOCK_PROBE_BYTES = 4096;

export const EXT4_MAGIC_OFFSET = 1080;
export const EXT4_MAGIC = 0xef53;
export const EROFS_MAGIC_OFFSET = 1024;
export const EROFS_MAGIC = 0xe0f5e1e2;

/** The file system type of a disk starting with `head`, or undefined when neither magic is there. */
export function detectFsType(head: Uint8Array): FsType | undefined {
	const b = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
	if (
		b.length >= EROFS_MAGIC_OFFSET + 4 &&
		b.readUInt32LE(EROFS_MAGIC_OFFSET) === EROFS_MAGIC
	)
		return "erofs";
	if (
		b.length >= EXT4_MAGIC_OFFSET + 2 &&
		b.readUInt16LE(EXT4_MAGIC_OFFSET) === EXT4_MAGIC
	)
		return "ext4";
	return undefined;
}
