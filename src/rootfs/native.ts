/**
 * The few libc calls Node has no binding for (mknod, extended attributes), made through koffi.
 *
 * koffi and libc are loaded on first use, so importing this module costs nothing and a platform
 * without them fails only when a layer actually needs a device node or an xattr. Every failure is
 * thrown as a Node-style errno error (`code` "ENOENT", `errno`, `syscall`, `path`), the same shape
 * node:fs throws, so callers handle both with one error path.
 */
import { getSystemErrorMap } from "node:util";
import { DadiError } from "../errors.js";
import { type Koffi, loadKoffi } from "../native/addons.js";

interface Libc {
	koffi: Koffi;
	mknod: (path: string, mode: number, dev: bigint) => number;
	lsetxattr: (
		path: string,
		name: string,
		value: Buffer,
		size: number,
		flags: number,
	) => number;
	lgetxattr: (
		path: string,
		name: string,
		value: Buffer | null,
		size: number,
	) => number;
	llistxattr: (path: string, list: Buffer | null, size: number) => number;
}

let libc: Libc | undefined;

function load(): Libc {
	if (libc) return libc;
	let koffi: Koffi;
	try {
		koffi = loadKoffi();
	} catch (e) {
		if (e instanceof DadiError) throw e;
		throw new DadiError(
			"INTERNAL",
			`cannot load koffi (needed for device nodes and extended attributes): ${(e as Error).message}`,
			{ cause: e },
		);
	}
	let lib: ReturnType<Koffi["load"]>;
	try {
		lib = koffi.load("libc.so.6");
	} catch (e) {
		throw new DadiError(
			"INTERNAL",
			`cannot load libc.so.6 (device nodes and extended attributes need glibc on Linux): ${(e as Error).message}`,
			{ cause: e },
		);
	}
	let mknod: Libc["mknod"];
	try {
		mknod = lib.func(
			"int mknod(const char *path, uint32_t mode, uint64_t dev)",
		);
	} catch (e) {
		throw new DadiError(
			"INTERNAL",
			`libc.so.6 has no mknod (glibc 2.33 or later is needed): ${(e as Error).message}`,
			{ cause: e },
		);
	}
	libc = {
		koffi,
		mknod,
		lsetxattr: lib.func(
			"int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)",
		),
		lgetxattr: lib.func(
			"intptr_t lgetxattr(const char *path, const char *name, _Out_ void *value, size_t size)",
		),
		llistxattr: lib.func(
			"intptr_t llistxattr(const char *path, _Out_ char *list, size_t size)",
		),
	};
	return libc;
}

/** A Node-style errno error for the errno libc left after a failed call. */
function errnoError(
	c: Libc,
	syscall: string,
	path: string,
	detail?: string,
): NodeJS.ErrnoException {
	const errno = c.koffi.errno();
	const [code, message] = getSystemErrorMap().get(-errno) ?? [
		`E${errno}`,
		`errno ${errno}`,
	];
	const e = new Error(
		`${code}: ${message}, ${syscall} '${path}'${detail ? ` (${detail})` : ""}`,
	) as NodeJS.ErrnoException;
	e.code = code;
	e.errno = -errno;
	e.syscall = syscall;
	e.path = path;
	return e;
}

/** The file type bits of mknod's mode argument. */
export const S_IFIFO = 0o010000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;

/** glibc's makedev(3): the 64-bit dev_t for a major/minor pair. */
export function makedev(major: number, minor: number): bigint {
	const ma = BigInt(major >>> 0);
	const mi = BigInt(minor >>> 0);
	return (
		((ma & 0xfffff000n) << 32n) |
		((ma & 0xfffn) << 8n) |
		((mi & 0xffffff00n) << 12n) |
		(mi & 0xffn)
	);
}

/** The major and minor numbers of a dev_t as Node's stat reports it (`rdev`, a number). */
export function splitDev(dev: number | bigint): {
	major: number;
	minor: number;
} {
	const d = BigInt(dev);
	return {
		major: Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn)),
		minor: Number((d & 0xffn) | ((d >> 12n) & ~0xffn)),
	};
}

/**
 * mknod(2): creates a FIFO, character or block device at `path` (never following a symlink there:
 * mknod fails with EEXIST on any existing entry). `mode` is the type bits | permission bits; the
 * process umask applies, so callers chmod afterwards.
 */
export function mknod(path: string, mode: number, major = 0, minor = 0): void {
	const c = load();
	if (c.mknod(path, mode, makedev(major, minor)) !== 0)
		throw errnoError(c, "mknod", path);
}

/** lsetxattr(2): sets one extended attribute on `path` itself (a symlink is not followed). */
export function lsetxattr(path: string, name: string, value: Buffer): void {
	const c = load();
	if (c.lsetxattr(path, name, value, value.length, 0) !== 0)
		throw errnoError(c, "lsetxattr", path, name);
}

/** lgetxattr(2): one extended attribute of `path` itself, or undefined if it has none by that name. */
export function lgetxattr(path: string, name: string): Buffer | undefined {
	const c = load();
	for (;;) {
		const size = c.lgetxattr(path, name, null, 0);
		if (size < 0) {
			if (c.koffi.errno() === (c.koffi.os.errno.ENODATA ?? 61))
				return undefined;
			throw errnoError(c, "lgetxattr", path, name);
		}
		const buf = Buffer.alloc(size);
		const n = c.lgetxattr(path, name, buf, size);
		if (n >= 0) return buf.subarray(0, n);
		// ERANGE: the value grew between the two calls; ask again.
		if (c.koffi.errno() !== (c.koffi.os.errno.ERANGE ?? 34))
			throw errnoError(c, "lgetxattr", path, name);
	}
}

/** llistxattr(2): the names of the extended attributes of `path` itself. */
export function llistxattr(path: string): string[] {
	const c = load();
	for (;;) {
		const size = c.llistxattr(path, null, 0);
		if (size < 0) throw errnoError(c, "llistxattr", path);
		if (size === 0) return [];
		const buf = Buffer.alloc(size);
		const n = c.llistxattr(path, buf, size);
		if (n >= 0)
			return buf
				.subarray(0, n)
				.toString("utf8")
				.split("\0")
				.filter((s) => s !== "");
		if (c.koffi.errno() !== (c.koffi.os.errno.ERANGE ?? 34))
			throw errnoError(c, "llistxattr", path);
	}
}

/**
 * mount(2) flags and umount2(2) flags used by the FUSE mount (src/guest/fuse/mount.ts) and the
 * container root (src/guest/container-root.ts).
 */
export const MS_RDONLY = 1;
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MS_NOEXEC = 8;
export const MS_BIND = 4096;
export const MNT_DETACH = 2;
/** eventfd(2) flags. */
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;

interface MountCalls {
	mount: (
		source: string,
		target: string,
		fstype: string,
		flags: number,
		data: string,
	) => number;
	umount2: (target: string, flags: number) => number;
	eventfd: (initval: number, flags: number) => number;
	chroot: (path: string) => number;
}

let mountCalls: MountCalls | undefined;

function loadMountCalls(): { c: Libc; m: MountCalls } {
	const c = load();
	if (!mountCalls) {
		const lib = c.koffi.load("libc.so.6");
		mountCalls = {
			mount: lib.func(
				"int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)",
			),
			umount2: lib.func("int umount2(const char *target, int flags)"),
			eventfd: lib.func("int eventfd(unsigned int initval, int flags)"),
			chroot: lib.func("int chroot(const char *path)"),
		};
	}
	return { c, m: mountCalls };
}

/** mount(2). Throws a Node-style errno error naming the target and the file system type. */
export function mount(
	source: string,
	target: string,
	fstype: string,
	flags: number,
	data: string,
): void {
	const { c, m } = loadMountCalls();
	if (m.mount(source, target, fstype, flags, data) !== 0)
		throw errnoError(c, "mount", target, fstype);
}

/** umount2(2): `flags` 0 or MNT_DETACH (lazy: detach now, clean up when no longer busy). */
export function umount2(target: string, flags: number): void {
	const { c, m } = loadMountCalls();
	if (m.umount2(target, flags) !== 0) throw errnoError(c, "umount2", target);
}

/** eventfd(2): a new event counter file descriptor (write 8 bytes to signal, poll for POLLIN). */
export function eventfd(initval: number, flags: number): number {
	const { c, m } = loadMountCalls();
	const fd = m.eventfd(initval, flags);
	if (fd < 0) throw errnoError(c, "eventfd", "eventfd");
	return fd;
}

/**
 * chroot(2) for this process (the container's process starter, src/guest/exec-in-root.ts). koffi
 * and libc are loaded first, so nothing needs loading from the old root afterwards.
 */
export function chroot(path: string): void {
	const { c, m } = loadMountCalls();
	if (m.chroot(path) !== 0) throw errnoError(c, "chroot", path);
}

/** Loads what chroot() needs now, while the files are still reachable. */
export function preloadChroot(): void {
	loadMountCalls();
}
