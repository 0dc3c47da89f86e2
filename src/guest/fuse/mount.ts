/**
 * Mounting and unmounting a FUSE file system without libfuse or fusermount (we run as root):
 * open /dev/fuse, then mount(2) with the device's fd in the options; the kernel then sends INIT on
 * that fd. Unmounting is umount2(2), lazily (MNT_DETACH) if the mount is busy.
 */
import { constants, openSync, readFileSync, writeFileSync } from "node:fs";
import { fromSystemError } from "../../errors.js";
import {
	MNT_DETACH,
	MS_NODEV,
	MS_NOSUID,
	MS_RDONLY,
	mount,
	umount2,
} from "../../rootfs/native.js";
import { mountAt, readMounts } from "../mountinfo.js";

export const FUSE_DEVICE = "/dev/fuse";
/** The file system type as /proc/mounts shows it. */
export const FS_TYPE = "fuse.dadi";

/** Opens the FUSE device for one mount (non-blocking: the reader polls; close-on-exec). */
export function openFuseDevice(): number {
	try {
		return openSync(FUSE_DEVICE, constants.O_RDWR | constants.O_NONBLOCK);
	} catch (e) {
		throw fromSystemError(e, FUSE_DEVICE, "opening the FUSE device");
	}
}

/**
 * The mount(2) data string. `allow_other`: every user may read the file (it is 0444 and the
 * guest's loop device or container runtime may not run as the mounting user);
 * `default_permissions`: the kernel checks the mode bits itself; `max_read`: no READ larger than
 * the size negotiated in INIT.
 */
export function mountOptions(fd: number, maxRead: number): string {
	const uid = process.getuid?.() ?? 0;
	const gid = process.getgid?.() ?? 0;
	return [
		`fd=${fd}`,
		"rootmode=40000",
		`user_id=${uid}`,
		`group_id=${gid}`,
		"allow_other",
		"default_permissions",
		`max_read=${maxRead}`,
	].join(",");
}

/** mount(2)s the FUSE file system served on `fd` at `dir`: read-only, nosuid, nodev. */
export function mountFuse(dir: string, fd: number, maxRead: number): void {
	try {
		mount(
			"dadi",
			dir,
			FS_TYPE,
			MS_RDONLY | MS_NOSUID | MS_NODEV,
			mountOptions(fd, maxRead),
		);
	} catch (e) {
		throw fromSystemError(e, dir, "mounting the FUSE file system");
	}
}

/**
 * Unmounts `dir`: a plain unmount if nothing uses it, else a lazy detach (the mount disappears
 * from the name space now and is torn down when its last user lets go). "gone" if it was not
 * mounted (any more).
 */
export function unmountFuse(dir: string): "unmounted" | "detached" | "gone" {
	try {
		umount2(dir, 0);
		return "unmounted";
	} catch (e) {
		const code = (e as NodeJS.ErrnoException).code;
		if (code === "EINVAL" || code === "ENOENT") return "gone";
		if (code !== "EBUSY") throw fromSystemError(e, dir, "unmounting");
	}
	try {
		umount2(dir, MNT_DETACH);
		return "detached";
	} catch (e) {
		const code = (e as NodeJS.ErrnoException).code;
		if (code === "EINVAL" || code === "ENOENT") return "gone";
		throw fromSystemError(e, dir, "detaching the mount");
	}
}

/** Best effort, synchronous, never throws: for process exit. */
export function detachQuietly(dir: string): void {
	try {
		umount2(dir, MNT_DETACH);
	} catch {
		// not mounted any more, or nothing more we could do
	}
}

/** The "major:minor" of the file system mounted at `dir` (ours, type fuse.dadi), if any. */
export function mountedDevice(dir: string): string | undefined {
	const top = mountAt(readMounts(), dir);
	return top?.fsType === FS_TYPE ? top.device : undefined;
}

/** Whether `dir` is a mount point of ours in this process's mount name space. */
export function isFuseMounted(dir: string): boolean {
	return mountedDevice(dir) !== undefined;
}

/**
 * Raises the kernel's readahead window for the mount (its backing_dev_info) to `kb`: INIT can only
 * lower the kernel's default of 128 KiB, and buffered sequential reads then arrive as 128 KiB READs
 * however large max_pages is. Never lowers it. Returns the window in effect, undefined if unknown.
 */
export function raiseReadahead(dir: string, kb: number): number | undefined {
	const dev = mountedDevice(dir);
	if (dev === undefined) return undefined;
	const file = `/sys/class/bdi/${dev}/read_ahead_kb`;
	try {
		const now = Number(readFileSync(file, "utf8").trim());
		if (now >= kb) return now;
		writeFileSync(file, `${kb}\n`);
		return kb;
	} catch {
		return undefined;
	}
}
