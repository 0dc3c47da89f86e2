/**
 * Process helpers of the cold-start bench (issue 18): a command timed to its first byte of
 * output, background daemons stopped by pid, cache dropping and peak-memory readings.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { openSync, readFileSync } from "node:fs";
import { readFile, rm } from "node:fs/promises";

export function run(
	cmd: string,
	args: string[],
	env?: NodeJS.ProcessEnv,
): string {
	const r = spawnSync(cmd, args, {
		encoding: "utf8",
		maxBuffer: 64 << 20,
		env: env ?? process.env,
	});
	if (r.error !== undefined) throw r.error;
	if (r.status !== 0)
		throw new Error(
			`${cmd} ${args.join(" ")}: ${(r.stderr || r.stdout).trim().slice(-2000)}`,
		);
	return r.stdout;
}

export function dropCaches(): void {
	spawnSync("sync");
	spawnSync("sh", ["-c", "echo 3 > /proc/sys/vm/drop_caches"]);
}

/** VmHWM of a running process, bytes (undefined when it is gone). */
export function vmHwm(pid: number | undefined): number | undefined {
	if (pid === undefined) return undefined;
	try {
		const m = /^VmHWM:\s+(\d+)\s+kB$/m.exec(
			readFileSync(`/proc/${pid}/status`, "utf8"),
		);
		return m ? Number(m[1]) * 1024 : undefined;
	} catch {
		return undefined;
	}
}

export interface Timed {
	/** From spawn to the first byte on stdout, seconds (null: it printed nothing). */
	firstOutput: number | null;
	/** From spawn to exit, seconds. */
	total: number;
	code: number | null;
	stdout: string;
	stderr: string;
	/** GNU time's %M: the largest resident set of any process in the tree, bytes. */
	maxRss: number | undefined;
}

/**
 * Runs `cmd args` under `/usr/bin/time -f %M -o FILE` and times its first output. The clock starts
 * just before the spawn, so the tools' own start-up counts.
 */
export async function timedRun(
	cmd: string,
	args: string[],
	timeFile: string,
	timeoutMs = 600_000,
): Promise<Timed> {
	const t0 = performance.now();
	const child = spawn(
		"/usr/bin/time",
		["-f", "%M", "-o", timeFile, cmd, ...args],
		{
			stdio: ["ignore", "pipe", "pipe"],
		},
	);
	let firstOutput: number | null = null;
	let stdout = "";
	let stderr = "";
	child.stdout.on("data", (d: Buffer) => {
		if (firstOutput === null) firstOutput = (performance.now() - t0) / 1000;
		stdout += d;
	});
	child.stderr.on("data", (d: Buffer) => {
		stderr += d;
	});
	const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
	const code = await new Promise<number | null>((r) =>
		child.once("close", (c) => r(c)),
	);
	clearTimeout(timer);
	const total = (performance.now() - t0) / 1000;
	let maxRss: number | undefined;
	try {
		const lines = (await readFile(timeFile, "utf8")).trim().split("\n");
		const kb = Number(lines[lines.length - 1]);
		if (Number.isFinite(kb)) maxRss = kb * 1024;
	} catch {
		// no time file
	}
	await rm(timeFile, { force: true });
	return { firstOutput, total, code, stdout, stderr, maxRss };
}

export interface Daemon {
	child: ChildProcess;
	pid: number | undefined;
	log: () => string;
	stop(): Promise<void>;
}

/** Starts a daemon logging to `logFile` and waits until `ready()` (30 s at most). */
export async function startDaemonProcess(
	cmd: string,
	args: string[],
	logFile: string,
	ready: () => Promise<boolean>,
): Promise<Daemon> {
	const out = openSync(logFile, "a");
	const child = spawn(cmd, args, { stdio: ["ignore", out, out] });
	const log = () => {
		try {
			return readFileSync(logFile, "utf8");
		} catch {
			return "";
		}
	};
	const stop = async () => {
		if (child.exitCode !== null || child.signalCode !== null) return;
		const done = new Promise((r) => child.once("exit", r));
		child.kill("SIGTERM");
		const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
		await done;
		clearTimeout(t);
	};
	const deadline = Date.now() + 30_000;
	for (;;) {
		if (child.exitCode !== null)
			throw new Error(`${cmd} exited ${child.exitCode}: ${log().slice(-1500)}`);
		if (await ready()) break;
		if (Date.now() > deadline) {
			await stop();
			throw new Error(`${cmd} not ready in 30 s: ${log().slice(-1500)}`);
		}
		await new Promise((r) => setTimeout(r, 100));
	}
	return { child, pid: child.pid, log, stop };
}
