/**
 * Starting the container's process in its root. Node cannot chroot a child it spawns, so
 * `dadi-guest run` spawns itself — `process.execPath` on its own script or single-file bundle,
 * with the hidden first argument EXEC_IN_ROOT — as soon as it starts (spawnStarter: node's own
 * start-up and loading libc then overlap attestation, fetching and mounting), and that starter:
 *
 *   loads koffi and libc → reads the process spec from fd 3 (a pipe: the image's env may hold secrets, so it is in no
 *   argv or environment the sandbox's `ps` shows) → chroot(2) + chdir into the root → makes the working directory if the image lacks it (as runc does) →
 *   drops to the container's user: setgroups, setgid, setuid → spawns the process with exactly
 *   the image's env (libuv's execvp looks the command up in that env's PATH, inside the new root)
 *   and inherited stdio → forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 → exits with
 *   its exit code, or 128 + the signal number that killed it (as a shell reports it).
 *
 * The starter is spawned as a new process group (detached), which the container's process joins,
 * so `run` can kill both at once when a container ignores SIGTERM or `run` itself has to exit.
 * A command that cannot be found exits 127, one that cannot be executed 126, with one line naming
 * the command (never its env).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import { constants as osConstants } from "node:os";
import { chroot, preloadChroot } from "../rootfs/native.js";

/** The hidden first argument of the starter. */
export const EXEC_IN_ROOT = "__dadi-exec-in-root";

export interface ExecSpec {
	root: string;
	args: string[];
	/** KEY=VALUE entries. */
	env: string[];
	cwd: string;
	uid: number;
	gid: number;
	additionalGids: number[];
}

const FORWARDED: NodeJS.Signals[] = [
	"SIGINT",
	"SIGTERM",
	"SIGHUP",
	"SIGQUIT",
	"SIGUSR1",
	"SIGUSR2",
];

export interface StartedProcess {
	pid: number;
	/** The exit code as a shell would report it (128 + N for signal N). */
	exited: Promise<number>;
	/** Sends a signal to the starter (it forwards it to the container's process). */
	signal(sig: NodeJS.Signals): void;
	/** SIGKILL to the starter's process group: the container's process too. */
	killAll(): void;
}

/** The code a shell reports for a process that ended with `code` or was killed by `signal`. */
export function shellExitCode(
	code: number | null,
	signal: NodeJS.Signals | null,
): number {
	if (code !== null) return code;
	const n = signal ? osConstants.signals[signal] : undefined;
	return 128 + (n ?? 0);
}

/**
 * A starter spawned ahead of time: node starts and loads libc through koffi while the image is
 * being opened and mounted, then waits for its spec on fd 3. `start` hands it the spec; `cancel`
 * (a no-op once started) kills it when no container will run.
 */
export interface Starter {
	start(spec: ExecSpec): StartedProcess;
	cancel(): void;
}

/** Spawns a starter now; stdio is inherited. */
export function spawnStarter(): Starter {
	const script = process.argv[1];
	if (!script)
		throw new Error("cannot find this program's script to start the container");
	const child: ChildProcess = spawn(process.execPath, [script, EXEC_IN_ROOT], {
		stdio: ["inherit", "inherit", "inherit", "pipe"],
		env: {},
		detached: true,
	});
	const pipe = child.stdio[3] as NodeJS.WritableStream | null;
	pipe?.on("error", () => {}); // a starter that died early: its exit says why
	const exited = new Promise<number>((resolve) => {
		child.once("error", () => resolve(127));
		child.once("exit", (code, signal) => resolve(shellExitCode(code, signal)));
	});
	const pid = child.pid ?? -1;
	const killAll = () => {
		if (pid > 0)
			try {
				process.kill(-pid, "SIGKILL");
			} catch {
				// already gone
			}
	};
	let used = false;
	return {
		start: (spec) => {
			if (used) throw new Error("a starter starts one process");
			used = true;
			pipe?.end(JSON.stringify(spec));
			return {
				pid,
				exited,
				signal: (sig) => {
					try {
						child.kill(sig);
					} catch {
						// already gone
					}
				},
				killAll,
			};
		},
		cancel: () => {
			if (used) return;
			used = true;
			killAll();
			pipe?.end();
		},
	};
}

/** Spawns the starter for `spec` at once; stdio is inherited. */
export function startInRoot(spec: ExecSpec): StartedProcess {
	return spawnStarter().start(spec);
}

function fail(code: number, message: string): never {
	process.stderr.write(`dadi-guest run: ${message}\n`);
	process.exit(code);
}

function isSpec(v: unknown): v is ExecSpec {
	const s = v as ExecSpec;
	const strings = (a: unknown) =>
		Array.isArray(a) && a.every((x) => typeof x === "string");
	const id = (n: unknown) =>
		Number.isSafeInteger(n) && (n as number) >= 0 && (n as number) < 2 ** 32;
	return (
		typeof s === "object" &&
		s !== null &&
		typeof s.root === "string" &&
		strings(s.args) &&
		s.args.length > 0 &&
		strings(s.env) &&
		typeof s.cwd === "string" &&
		s.cwd.startsWith("/") &&
		id(s.uid) &&
		id(s.gid) &&
		Array.isArray(s.additionalGids) &&
		s.additionalGids.every(id)
	);
}

/** The starter's main: never returns (exits with the container's code). */
export function execInRootMain(): void {
	// Loaded before the spec arrives: a starter spawned ahead of time does this meanwhile.
	let preloaded: unknown;
	try {
		preloadChroot();
	} catch (e) {
		preloaded = e;
	}
	let spec: unknown;
	try {
		spec = JSON.parse(readFileSync(3, "utf8"));
	} catch {
		fail(125, "the container's process spec could not be read");
	}
	if (!isSpec(spec)) fail(125, "the container's process spec is malformed");
	try {
		if (preloaded) throw preloaded;
		chroot(spec.root);
		process.chdir("/");
		mkdirSync(spec.cwd, { recursive: true, mode: 0o755 });
		process.chdir(spec.cwd);
		process.setgroups?.(spec.additionalGids);
		process.setgid?.(spec.gid);
		process.setuid?.(spec.uid);
	} catch (e) {
		fail(
			125,
			`cannot enter the container's root as ${spec.uid}:${spec.gid} in ${spec.cwd} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
		);
	}
	const env: Record<string, string> = {};
	for (const e of spec.env) {
		const eq = e.indexOf("=");
		env[e.slice(0, eq)] = e.slice(eq + 1);
	}
	const [cmd, ...args] = spec.args as [string, ...string[]];
	const child = spawn(cmd, args, { env, stdio: "inherit" });
	for (const sig of FORWARDED)
		process.on(sig, () => {
			try {
				child.kill(sig);
			} catch {
				// gone already
			}
		});
	child.once("error", (e: NodeJS.ErrnoException) => {
		if (e.code === "ENOENT")
			fail(
				127,
				`${JSON.stringify(cmd)}: no such file in the image${cmd.includes("/") ? "" : " (searched the image's PATH)"}`,
			);
		fail(
			126,
			`${JSON.stringify(cmd)}: cannot execute (${e.code ?? e.message})`,
		);
	});
	child.once("exit", (code, signal) =>
		process.exit(shellExitCode(code, signal)),
	);
}
