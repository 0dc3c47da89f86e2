/**
 * Attaching a disk file read-only to a loop device and mounting its file system read-only, with
 * util-linux's losetup and mount; undone in reverse order, with a lazy unmount when busy.
 */
import { execFile } from "node:child_process";
import { DadiError } from "../errors.js";

function run(cmd: string, args: string[]): Promise<string> {
	return new Promise((resolve, reject) => {
		execFile(cmd, args, { timeout: 60_000 }, (err, stdout, stderr) => {
			if (err)
				reject(
					new DadiError(
						"IO",
						`${cmd} ${args.join(" ")}: ${(stderr || err.message).trim().split("\n")[0]}`,
					),
				);
			else resolve(stdout);
		});
	});
}

export interface LoopMount {
	device: string;
	dir: string;
	/** Unmounts (lazily when busy) and detaches; idempotent. */
	release(): Promise<void>;
}

/**
 * Attaches `file` read-only to a free loop device; returns the device and its detach. Direct I/O:
 * the guest's page cache above the loop device is the only cache (no second copy of the disk in
 * the backing file's cache), and reads reach FUSE whole (benchmarks.md).
 */
export async function attachLoop(
	file: string,
): Promise<{ device: string; detach(): Promise<void> }> {
	const device = (
		await run("losetup", [
			"--read-only",
			"--direct-io=on",
			"--find",
			"--show",
			file,
		])
	).trim();
	return {
		device,
		detach: async () => {
			// A lazily unmounted loop device may stay busy for a moment; autoclear detaches it then.
			await run("losetup", ["-d", device]).catch(() => {});
		},
	};
}

export async function loopMount(file: string, dir: string): Promise<LoopMount> {
	if (process.getuid?.() !== 0)
		throw new DadiError(
			"USAGE",
			"--mount-at needs root (loop devices and mount(2)); use --fuse or --nbd without it",
		);
	const { device } = await attachLoop(file);
	try {
		await run("mount", ["-o", "ro", device, dir]);
	} catch (e) {
		await run("losetup", ["-d", device]).catch(() => {});
		throw new DadiError(
			"INPUT_INVALID",
			`mounting the image's file system at ${dir} failed (${(e as Error).message}); the disk may hold no file system the kernel knows`,
		);
	}
	let released = false;
	return {
		device,
		dir,
		release: async () => {
			if (released) return;
			released = true;
			try {
				await run("umount", [dir]);
			} catch {
				await run("umount", ["-l", dir]).catch(() => {});
			}
			// A lazily unmounted loop device may stay busy for a moment; autoclear detaches it then.
			await run("losetup", ["-d", device]).catch(() => {});
		},
	};
}
