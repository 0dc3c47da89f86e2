/**
 * Debian's containerd 1.6 for tests: its own root, state, sockets and config in a temporary
 * directory, with dadi-snapshotter configured as the proxy snapshotter "dadi". `stop()` ends
 * containerd and every shim it started (found by their -address argument, which names this
 * containerd's unique socket) by pid, and unmounts whatever is left under the directory.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { openSync, readdirSync, readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { unmountUnder } from "./unmount.js";

const sh = promisify(execFile);
export const PATH =
	"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

export interface Containerd {
	socket: string;
	logFile: string;
	/** `ctr -a SOCKET ARGS…`; rejects with its stderr on failure. */
	ctr(args: string[], timeoutMs?: number): Promise<string>;
	/** Polls `ctr snapshots --snapshotter dadi ls` until the proxy snapshotter answers. */
	waitForSnapshotter(): Promise<void>;
	restart(): Promise<void>;
	/** containerd and its shims, by pid. Idempotent. */
	stop(): Promise<void>;
	/** Pids of shims started by this containerd that are still running. */
	shims(): number[];
}

/**
 * `extraProxies`: more proxy snapshotters by name → socket (e.g. one whose process is not running).
 */
export async function startContainerd(
	dir: string,
	snapshotterSocket: string,
	extraProxies: Record<string, string> = {},
): Promise<Containerd> {
	const socket = join(dir, "containerd.sock");
	const logFile = join(dir, "containerd.log");
	const config = join(dir, "config.toml");
	await mkdir(dir, { recursive: true });
	await writeFile(
		config,
		[
			"version = 2",
			`root = "${join(dir, "root")}"`,
			`state = "${join(dir, "state")}"`,
			// Only what the tests use: no CRI (it would want CNI), no other snapshotters to probe.
			'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]',
			"[grpc]",
			`  address = "${socket}"`,
			"[ttrpc]",
			`  address = "${socket}.ttrpc"`,
			"[debug]",
			`  address = "${join(dir, "debug.sock")}"`,
			'  level = "info"',
			"[proxy_plugins.dadi]",
			'  type = "snapshot"',
			`  address = "${snapshotterSocket}"`,
			...Object.entries(extraProxies).flatMap(([name, address]) => [
				`[proxy_plugins.${name}]`,
				'  type = "snapshot"',
				`  address = "${address}"`,
			]),
			"",
		].join("\n"),
	);
	let child: ChildProcess | undefined;
	const ctr = async (args: string[], timeoutMs = 120_000): Promise<string> => {
		try {
			const { stdout } = await sh("ctr", ["-a", socket, ...args], {
				timeout: timeoutMs,
				env: { ...process.env, PATH },
				maxBuffer: 16 << 20,
			});
			return stdout;
		} catch (e) {
			const err = e as { stderr?: string; message: string };
			throw new Error(`ctr ${args.join(" ")}: ${err.stderr || err.message}`);
		}
	};
	const start = async () => {
		const log = openSync(logFile, "a");
		child = spawn("containerd", ["--config", config], {
			stdio: ["ignore", log, log],
			env: { ...process.env, PATH },
		});
		const deadline = Date.now() + 30_000;
		for (;;) {
			if (child.exitCode !== null)
				throw new Error(
					`containerd exited ${child.exitCode}: ${readFileSync(logFile, "utf8").slice(-2000)}`,
				);
			try {
				await ctr(["version"], 5000);
				return;
			} catch (e) {
				if (Date.now() > deadline) throw e;
				await new Promise((r) => setTimeout(r, 200));
			}
		}
	};
	const shims = (): number[] => {
		const out: number[] = [];
		for (const p of readdirSync("/proc")) {
			if (!/^\d+$/.test(p)) continue;
			try {
				const cmd = readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0");
				if (cmd[0]?.endsWith("containerd-shim-runc-v2") && cmd.includes(socket))
					out.push(Number(p));
			} catch {
				// gone
			}
		}
		return out;
	};
	const stopContainerd = async () => {
		const c = child;
		child = undefined;
		if (!c || c.exitCode !== null) return;
		const exited = new Promise((r) => c.once("exit", r));
		c.kill("SIGTERM");
		const t = setTimeout(() => c.kill("SIGKILL"), 10_000);
		await exited;
		clearTimeout(t);
	};
	await start();
	return {
		socket,
		logFile,
		ctr,
		shims,
		async waitForSnapshotter() {
			const deadline = Date.now() + 30_000;
			for (;;) {
				try {
					await ctr(["snapshots", "--snapshotter", "dadi", "ls"], 10_000);
					return;
				} catch (e) {
					if (Date.now() > deadline) throw e;
					await new Promise((r) => setTimeout(r, 250));
				}
			}
		},
		async restart() {
			await stopContainerd();
			await start();
		},
		async stop() {
			await stopContainerd();
			for (const pid of shims())
				try {
					process.kill(pid, "SIGKILL");
				} catch {
					// gone
				}
			await unmountUnder(dir);
		},
	};
}
