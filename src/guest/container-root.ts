/**
 * The container's root file system inside the sandbox: the image's block device mounted read-only
 * (the file system type from its superblock, fs-detect.ts), an overlay on top whose upper and work
 * directories are on a tmpfs (writes stay in the sandbox's memory and vanish with the container;
 * the image's file system is never written), and inside it /proc, /sys (read-only), a minimal /dev
 * (a tmpfs with bind-mounted null, zero, full, random, urandom, tty; devpts; shm) and /tmp (tmpfs),
 * plus the sandbox's /etc/resolv.conf and /etc/hostname. Every mount is pushed on the caller's undo
 * stack as it is made, so a failure half-way undoes exactly what was done.
 *
 * Paths the image controls are never followed out of the root: a mount point or /etc file that is
 * a symbolic link in the image is refused (mount points) or replaced (files written by us), since
 * the kernel would resolve an absolute link against the sandbox's own root.
 */
import {
	lstat,
	mkdir,
	readFile,
	rmdir,
	symlink,
	unlink,
	writeFile,
} from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { DadiError } from "../errors.js";
import {
	MNT_DETACH,
	MS_BIND,
	MS_NODEV,
	MS_NOEXEC,
	MS_NOSUID,
	MS_RDONLY,
} from "../rootfs/native.js";
import type { FsType } from "./fs-detect.js";
import type { MountWorker } from "./mount-worker.js";
import type { UndoStack } from "./undo-stack.js";

export interface ContainerRootOptions {
	/** The block device holding the image's file system. */
	device: string;
	fsType: FsType;
	/** A private, empty directory for the lower mount and the tmpfs (created by the caller). */
	workDir: string;
	/** Where the container's root is mounted (an empty directory). */
	root: string;
	undo: UndoStack;
	/** Every mount(2) and umount2(2) goes through it: never synchronously on the serving thread. */
	mounts: MountWorker;
	log: (line: string) => void;
}

/** Device nodes bind-mounted into the container's /dev when the sandbox has them. */
const DEVICES = ["null", "zero", "full", "random", "urandom", "tty"];

/** Unmounts; lazily when busy (a process the container left behind). */
async function unmount(
	m: MountWorker,
	target: string,
	log: (line: string) => void,
): Promise<void> {
	try {
		await m.umount2(target, 0);
	} catch (e) {
		const code = (e as NodeJS.ErrnoException).code;
		if (code === "EINVAL" || code === "ENOENT") return; // not mounted (any more)
		if (code !== "EBUSY") throw e;
		log(`${target} is busy; detaching it lazily`);
		await m.umount2(target, MNT_DETACH);
	}
}

async function mounted(
	o: ContainerRootOptions,
	source: string,
	target: string,
	fstype: string,
	flags: number,
	data: string,
): Promise<void> {
	try {
		await o.mounts.mount(source, target, fstype, flags, data);
	} catch (e) {
		throw new DadiError(
			"IO",
			`mounting ${fstype || "a bind mount"} at ${target} failed (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
		);
	}
	o.undo.push(`unmount ${target}`, () => unmount(o.mounts, target, o.log));
}

/** A directory of the image to mount on: made when missing, refused when a link or a file. */
async function mountPoint(root: string, rel: string): Promise<string> {
	const path = join(root, rel);
	try {
		const st = await lstat(path);
		if (st.isDirectory()) return path;
		throw new DadiError(
			"INPUT_INVALID",
			`the image's /${rel} is ${st.isSymbolicLink() ? "a symbolic link" : "not a directory"}: cannot mount on it`,
		);
	} catch (e) {
		if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
	}
	await mkdir(path, { mode: 0o755 });
	return path;
}

/** Mounts the container's root; returns the lower (read-only image) mount's directory. */
export async function mountContainerRoot(
	o: ContainerRootOptions,
): Promise<{ lower: string }> {
	if (/[,:\\]/.test(o.workDir))
		throw new DadiError(
			"USAGE",
			`${o.workDir}: the work directory's path must not contain , : or \\ (overlay options)`,
		);
	const lower = join(o.workDir, "lower");
	const rw = join(o.workDir, "rw");
	for (const d of [lower, rw]) {
		await mkdir(d, { mode: 0o700 });
		o.undo.push(`remove ${d}`, () => rmdir(d).catch(() => {}));
	}
	await mounted(o, o.device, lower, o.fsType, MS_RDONLY, "");
	await mounted(o, "tmpfs", rw, "tmpfs", MS_NODEV | MS_NOSUID, "mode=0700");
	await mkdir(join(rw, "upper"), { mode: 0o755 });
	await mkdir(join(rw, "work"), { mode: 0o700 });
	await mounted(
		o,
		"overlay",
		o.root,
		"overlay",
		0,
		`lowerdir=${lower},upperdir=${join(rw, "upper")},workdir=${join(rw, "work")}`,
	);
	const r = o.root;
	await mounted(
		o,
		"proc",
		await mountPoint(r, "proc"),
		"proc",
		MS_NOSUID | MS_NODEV | MS_NOEXEC,
		"",
	);
	await mounted(
		o,
		"sysfs",
		await mountPoint(r, "sys"),
		"sysfs",
		MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
		"",
	);
	const dev = await mountPoint(r, "dev");
	await mounted(
		o,
		"tmpfs",
		dev,
		"tmpfs",
		MS_NOSUID | MS_NOEXEC,
		"mode=0755,size=65536k",
	);
	for (const name of DEVICES) {
		const host = `/dev/${name}`;
		try {
			if (!(await lstat(host)).isCharacterDevice()) continue;
		} catch {
			continue; // the sandbox has no such device
		}
		const target = join(dev, name);
		await writeFile(target, "", { mode: 0o666 });
		await mounted(o, host, target, "", MS_BIND, "");
	}
	for (const [name, to] of [
		["fd", "/proc/self/fd"],
		["stdin", "/proc/self/fd/0"],
		["stdout", "/proc/self/fd/1"],
		["stderr", "/proc/self/fd/2"],
		["ptmx", "pts/ptmx"],
	] as const)
		await symlink(to, join(dev, name));
	await mkdir(join(dev, "pts"), { mode: 0o755 });
	try {
		await o.mounts.mount(
			"devpts",
			join(dev, "pts"),
			"devpts",
			MS_NOSUID | MS_NOEXEC,
			"newinstance,ptmxmode=0666,mode=0620",
		);
		o.undo.push("unmount /dev/pts", () =>
			unmount(o.mounts, join(dev, "pts"), o.log),
		);
	} catch (e) {
		o.log(
			`no /dev/pts in the container (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
		);
	}
	await mkdir(join(dev, "shm"), { mode: 0o1777 });
	await mounted(
		o,
		"shm",
		join(dev, "shm"),
		"tmpfs",
		MS_NOSUID | MS_NODEV,
		"mode=1777,size=65536k",
	);
	await mounted(
		o,
		"tmpfs",
		await mountPoint(r, "tmp"),
		"tmpfs",
		MS_NOSUID | MS_NODEV,
		"mode=1777",
	);
	await sandboxEtc(r, o.log);
	return { lower };
}

/** /etc/resolv.conf (the sandbox's, if it has one) and /etc/hostname, written into the overlay. */
async function sandboxEtc(
	root: string,
	log: (line: string) => void,
): Promise<void> {
	const etc = join(root, "etc");
	try {
		if (!(await lstat(etc)).isDirectory()) {
			log(
				"the image's /etc is not a directory: resolv.conf and hostname left alone",
			);
			return;
		}
	} catch {
		await mkdir(etc, { mode: 0o755 });
	}
	const put = async (name: string, text: string) => {
		const path = join(etc, name);
		try {
			await unlink(path); // a link in the image must not be followed (out of the root)
		} catch {
			// not there
		}
		await writeFile(path, text, { mode: 0o644 });
	};
	const resolv = await readFile("/etc/resolv.conf", "utf8").catch(
		() => undefined,
	);
	if (resolv !== undefined) await put("resolv.conf", resolv);
	await put("hostname", `${hostname()}\n`);
}

/** A file of the image read without following a symbolic link (for /etc/passwd and /etc/group). */
export async function readImageFile(
	root: string,
	rel: string,
): Promise<string | undefined> {
	const parts = rel.split("/");
	let path = root;
	for (const p of parts) {
		path = join(path, p);
		try {
			const st = await lstat(path);
			if (st.isSymbolicLink()) return undefined;
		} catch {
			return undefined;
		}
	}
	const text = await readFile(path, "utf8").catch(() => undefined);
	return text !== undefined && text.length <= 4 * 1024 * 1024
		? text
		: undefined;
}
