/**
 * What a `dadi-guest serve` killed without a chance to clean up (SIGKILL, OOM, a crash) leaves
 * behind, and undoing it. Serving with --mount-at stacks three things: a FUSE mount (type
 * fuse.dadi) holding the file `disk`, a loop device backed by that file, and the disk's file system
 * mounted from the loop device. When the server dies the FUSE connection is aborted (its file
 * answers ENOTCONN) but all three stay. `findChains` is a pure function of the mount table, the
 * loop devices and a liveness probe; `cleanupChain` undoes one chain, top down.
 */
import { execFile } from "node:child_process";
import { readdirSync, readFileSync, rmdirSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { DadiError } from "../errors.js";
import { MNT_DETACH, umount2 } from "../rootfs/native.js";
import { FS_TYPE } from "./fuse/mount.js";
import type { MountEntry } from "./mountinfo.js";

export interface LoopDevice {
	device: string;
	/** The file behind it, as the kernel reports it. */
	backingFile: string;
}

export interface DadiChain {
	/** Where the FUSE file system is mounted (its file is `disk`). */
	fuseDir: string;
	/** A server still answers on it. */
	alive: boolean;
	/** The directory is a private one `serve --mount-at` made (removed with the mount). */
	privateDir: boolean;
	loops: { device: string; mounts: string[] }[];
}

/** Private FUSE directories `serve --mount-at` makes: `$TMPDIR/dadi-fuse-XXXXXX`. */
export function isPrivateFuseDir(dir: string, tmp = tmpdir()): boolean {
	return (
		dirname(dir) === tmp && /^dadi-fuse-[A-Za-z0-9]{6}$/.test(basename(dir))
	);
}

/** Every dadi FUSE mount with the loop devices on its file and the mounts of those devices. */
export function findChains(
	mounts: readonly MountEntry[],
	loops: readonly LoopDevice[],
	isAlive: (fuseDir: string) => boolean,
	tmp = tmpdir(),
): DadiChain[] {
	const chains: DadiChain[] = [];
	const seen = new Set<string>();
	for (const m of mounts) {
		if (m.fsType !== FS_TYPE || seen.has(m.mountPoint)) continue;
		seen.add(m.mountPoint);
		const file = join(m.mountPoint, "disk");
		chains.push({
			fuseDir: m.mountPoint,
			alive: isAlive(m.mountPoint),
			privateDir: isPrivateFuseDir(m.mountPoint, tmp),
			loops: loops
				.filter((l) => l.backingFile === file)
				.map((l) => ({
					device: l.device,
					mounts: mounts
						.filter((x) => x.source === l.device)
						.map((x) => x.mountPoint),
				})),
		});
	}
	return chains;
}

/** A FUSE mount whose server is gone answers ENOTCONN ("transport endpoint is not connected"). */
export function fuseAlive(dir: string): boolean {
	try {
		statSync(join(dir, "disk"));
		return true;
	} catch (e) {
		return (e as NodeJS.ErrnoException).code !== "ENOTCONN";
	}
}

/** Attached loop devices and their backing files, from /sys/block. */
export function readLoopDevices(): LoopDevice[] {
	const out: LoopDevice[] = [];
	let names: string[];
	try {
		names = readdirSync("/sys/block").filter((n) => /^loop\d+$/.test(n));
	} catch {
		return out;
	}
	for (const n of names) {
		try {
			const backingFile = readFileSync(
				`/sys/block/${n}/loop/backing_file`,
				"utf8",
			).replace(/\n$/, "");
			// A deleted backing file is reported with " (deleted)" appended.
			out.push({
				device: `/dev/${n}`,
				backingFile: backingFile.replace(/ \(deleted\)$/, ""),
			});
		} catch {
			// not attached
		}
	}
	return out;
}

export interface CleanupStep {
	what: "unmount" | "detach-loop" | "unmount-fuse" | "remove-dir";
	target: string;
	/** "done", "lazy" (detached, torn down when its last user lets go) or why it failed. */
	result: string;
}

/** Undoes one dead chain, top down: file-system mounts, loop devices, the FUSE mount, its dir. */
export async function cleanupChain(chain: DadiChain): Promise<CleanupStep[]> {
	if (chain.alive)
		throw new DadiError(
			"INPUT_INVALID",
			`${chain.fuseDir} is served by a running dadi-guest; stop it with SIGTERM (or Ctrl-C) and it cleans up itself`,
		);
	const steps: CleanupStep[] = [];
	for (const loop of chain.loops) {
		// Topmost first (mountinfo lists later mounts later).
		for (const dir of [...loop.mounts].reverse())
			steps.push({ what: "unmount", target: dir, result: unmount(dir) });
		steps.push({
			what: "detach-loop",
			target: loop.device,
			result: await losetupDetach(loop.device),
		});
	}
	steps.push({
		what: "unmount-fuse",
		target: chain.fuseDir,
		result: unmount(chain.fuseDir),
	});
	if (chain.privateDir) {
		let result = "done";
		try {
			rmdirSync(chain.fuseDir);
		} catch (e) {
			result = (e as Error).message;
		}
		steps.push({ what: "remove-dir", target: chain.fuseDir, result });
	}
	return steps;
}

function unmount(dir: string): string {
	try {
		umount2(dir, 0);
		return "done";
	} catch (e) {
		const code = (e as NodeJS.ErrnoException).code;
		if (code === "EINVAL" || code === "ENOENT") return "not mounted";
		if (code !== "EBUSY") return (e as Error).message;
	}
	try {
		umount2(dir, MNT_DETACH);
		return "lazy";
	} catch (e) {
		return (e as Error).message;
	}
}

function losetupDetach(device: string): Promise<string> {
	return new Promise((resolve) =>
		execFile(
			"losetup",
			["-d", device],
			{ timeout: 30_000 },
			(err, _o, stderr) =>
				resolve(
					err
						? ((stderr || err.message).trim().split("\n")[0] ?? "failed")
						: "done",
				),
		),
	);
}
