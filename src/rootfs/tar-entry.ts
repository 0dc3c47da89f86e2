/**
 * One entry of a tar stream as the rootfs builder sees it: produced by rootfs/tar.ts (the reader),
 * consumed by rootfs/apply.ts (which applies a layer to a staging directory with OCI semantics).
 */
export type TarEntryType =
	| "file"
	| "hardlink"
	| "symlink"
	| "chardev"
	| "blockdev"
	| "dir"
	| "fifo";

export interface TarEntry {
	/**
	 * The path inside the image, normalised by the reader: relative, "/"-separated, no "." or ".."
	 * components, no empty components, no leading "./" or "/", no trailing "/". The root directory
	 * itself is "." (some tars carry an entry for it).
	 */
	path: string;
	type: TarEntryType;
	/** Permission bits including setuid, setgid and sticky (mode & 0o7777). */
	mode: number;
	uid: number;
	gid: number;
	/** Modification time in seconds since the epoch (may have a fraction, from PAX). */
	mtime: number;
	/** Bytes of content; 0 for everything but regular files. */
	size: number;
	/**
	 * For a hardlink: the target's path, normalised like `path`. For a symlink: the link target
	 * exactly as stored (it may be absolute or contain ".."; it is resolved inside the image root).
	 * Otherwise "".
	 */
	linkname: string;
	devmajor: number;
	devminor: number;
	/** Extended attributes (PAX SCHILY.xattr.*), name → raw value. */
	xattrs: Record<string, Buffer>;
	/**
	 * The content of a regular file, exactly `size` bytes. The consumer must read it to the end (or
	 * call `skip`) before asking the reader for the next entry.
	 */
	body: AsyncIterable<Buffer>;
	/** Discards whatever of the body has not been read. */
	skip(): Promise<void>;
}
