/**
 * `dadi-guest run`, after the image is open (key released, indexes read): the decrypted disk
 * attached as a block device (the kernel's nbd driver, or FUSE + loop), its file system mounted
 * read-only under a tmpfs-backed overlay (container-root.ts), and the image's own process — the
 * entrypoint, command, env, working directory and user of the encrypted image config, merged as a
 * runtime would (runtime/process-merge.ts) — run chrooted in it (exec-in-root.ts). Every step is
 * pushed on the caller's undo stack, so the caller tears down in reverse order whatever happened.
 */
import { mkdir, mkdtemp, open, rmdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { DadiError } from "../errors.js";
import { DEFAULT_PATH, mergeProcess } from "../runtime/process-merge.js";
import {
	type RunConfig,
	runConfigOf,
	SEALED_ENTRYPOINT,
} from "../runtime/run-config.js";
import type { BlockSource } from "./block-source.js";
import { mountContainerRoot, readImageFile } from "./container-root.js";
import {
	type StartedProcess,
	type Starter,
	spawnStarter,
} from "./exec-in-root.js";
import { detectFsType, SUPERBLOCK_PROBE_BYTES } from "./fs-detect.js";
import { FuseServer } from "./fuse/server.js";
import { attachLoop } from "./loop-mount.js";
import { MountWorker } from "./mount-worker.js";
import { NbdServer } from "./nbd/server.js";
import { attachNbd } from "./nbd-device.js";
import { ms, type RunReport } from "./run-report.js";
import type { UndoStack } from "./undo-stack.js";

export interface RunContainerOptions {
	source: BlockSource;
	/** The decrypted original image config (null: a raw disk, which names no process). */
	imageConfig: Record<string, unknown> | null;
	name: string;
	block: "nbd" | "loop";
	/** /dev/nbdN's number; undefined: the first free one. */
	nbdDevice?: number;
	nbdTimeoutSec?: number;
	/** Where to mount the container's root (an empty directory); default a private one. */
	rootfs?: string;
	/** Arguments after `--`: replace the image's Cmd (the Entrypoint stays), as `docker run` does. */
	args: string[];
	undo: UndoStack;
	/** Throws when a signal asked to stop (checked between steps). */
	checkpoint: () => void;
	/** Filled in as the run goes (device, file system, timings). */
	report: RunReport;
	onStarted: (p: StartedProcess) => void;
	/** A starter spawned ahead of time (spawnStarter); one is spawned here without it. */
	starter?: Starter;
	log: (line: string) => void;
}

/** Runs the container; resolves to its exit code. Teardown is the caller's `undo.unwind()`. */
export async function runContainer(o: RunContainerOptions): Promise<number> {
	const { undo, report, log } = o;
	const run: RunConfig = o.imageConfig
		? runConfigOf(o.imageConfig, "the image config")
		: { entrypoint: [], cmd: [], env: [], workingDir: "", user: "" };
	if (
		run.entrypoint.length === 0 &&
		run.cmd.length === 0 &&
		o.args.length === 0
	)
		throw new DadiError(
			"USAGE",
			o.imageConfig
				? "the image's config names no Entrypoint or Cmd: give the command after --"
				: "the image is a raw disk with no image config: give the command after --",
		);
	const work = await mkdtemp(join(tmpdir(), "dadi-run-"));
	// Directories only, never recursively: a mount that failed to come off must not be walked into.
	undo.push(`remove ${work}`, () => rmdir(work));
	// The first read's completion after attaching (the first chunk fetched, for a registry image).
	let attachedAt: number | undefined;
	const source: BlockSource = {
		size: o.source.size,
		read: async (offset, length) => {
			const b = await o.source.read(offset, length);
			report.read ??= { bytes: 0, reads: 0 };
			report.read.bytes += length;
			report.read.reads++;
			if (attachedAt !== undefined && report.timingsMs.firstRead === undefined)
				report.timingsMs.firstRead = ms(performance.now() - attachedAt);
			return b;
		},
	};
	o.checkpoint();
	attachedAt = performance.now();
	const device =
		o.block === "nbd"
			? await attachNbdDevice(o, source)
			: await attachLoopDevice(o, source, work);
	report.blockDevice = device;
	o.checkpoint();
	const mountStart = performance.now();
	const fsType = await probeFsType(device);
	report.fsType = fsType;
	let root = o.rootfs;
	if (!root) {
		const dir = join(work, "root");
		await mkdir(dir, { mode: 0o755 });
		undo.push(`remove ${dir}`, () => rmdir(dir));
		root = dir;
	}
	const mounts = new MountWorker();
	undo.push("mount(2) worker", () => mounts.close());
	await mountContainerRoot({
		device,
		fsType,
		workDir: work,
		root,
		undo,
		mounts,
		log,
	});
	const accounts = {
		passwd: await readImageFile(root, "etc/passwd"),
		group: await readImageFile(root, "etc/group"),
	};
	const proc = mergeProcess(
		{
			args: [SEALED_ENTRYPOINT, ...o.args],
			env: [DEFAULT_PATH],
			cwd: "/",
			user: { uid: 0, gid: 0 },
		},
		run,
		accounts,
	);
	report.timingsMs.mount = ms(performance.now() - mountStart);
	o.checkpoint();
	const execStart = performance.now();
	const started = (o.starter ?? spawnStarter()).start({
		root,
		args: proc.args ?? [],
		env: proc.env ?? [],
		cwd: proc.cwd,
		uid: proc.user.uid,
		gid: proc.user.gid,
		additionalGids: proc.user.additionalGids ?? [],
	});
	// On any exit of ours (a second signal), the container's processes go too.
	const killAll = () => started.killAll();
	process.once("exit", killAll);
	undo.push("stop the container's processes", () => {
		killAll();
		process.off("exit", killAll);
	});
	o.onStarted(started);
	const code = await started.exited;
	report.timingsMs.exec = ms(performance.now() - execStart);
	report.exitCode = code;
	return code;
}

async function attachNbdDevice(
	o: RunContainerOptions,
	source: BlockSource,
): Promise<string> {
	const server = new NbdServer({
		source,
		description: o.name,
		log: (l) => o.log(`nbd: ${l}`),
	});
	o.undo.push("NBD server", () => server.close());
	const a = await attachNbd({
		server,
		size: source.size,
		device: o.nbdDevice,
		timeoutSec: o.nbdTimeoutSec,
		log: (l) => o.log(`nbd: ${l}`),
	});
	o.undo.push(`disconnect ${a.device}`, () => a.detach());
	return a.device;
}

async function attachLoopDevice(
	o: RunContainerOptions,
	source: BlockSource,
	work: string,
): Promise<string> {
	const dir = join(work, "fuse");
	await mkdir(dir, { mode: 0o700 });
	o.undo.push(`remove ${dir}`, () => rmdir(dir));
	const fuse = await FuseServer.mount(dir, { source, log: o.log });
	o.undo.push("FUSE mount", () => fuse.close());
	const loop = await attachLoop(fuse.path);
	o.undo.push(`detach ${loop.device}`, () => loop.detach());
	return loop.device;
}

/** The file system on the device, from its superblock. */
async function probeFsType(device: string) {
	const fh = await open(device, "r").catch((e: NodeJS.ErrnoException) => {
		throw new DadiError(
			"IO",
			`${device}: cannot open (${e.code ?? e.message})`,
		);
	});
	try {
		const buf = Buffer.alloc(SUPERBLOCK_PROBE_BYTES);
		const { bytesRead } = await fh
			.read(buf, 0, buf.length, 0)
			.catch((e: NodeJS.ErrnoException) => {
				throw new DadiError(
					"IO",
					`${device}: reading the superblock failed (${e.code ?? e.message})`,
				);
			});
		const t = detectFsType(buf.subarray(0, bytesRead));
		if (!t)
			throw new DadiError(
				"INPUT_INVALID",
				"the image's disk holds neither ext4 nor EROFS (no superblock magic): nothing to mount",
			);
		return t;
	} finally {
		await fh.close();
	}
}
