/** Long-running CLI commands in tests (`dadi-guest serve`, `dadi-broker serve`): start, wait for the ready JSON, stop. */
import { type ChildProcess, spawn } from "node:child_process";

export interface Daemon {
	child: ChildProcess;
	ready: Record<string, unknown>;
	stderr: () => string;
	/** SIGTERM, then the exit code. */
	stop(): Promise<number | null>;
	/** Resolves with the exit code once the process has exited. */
	exited: Promise<number | null>;
}

const running = new Set<ChildProcess>();

/** Kills whatever a failed test left running (call from afterAll). */
export function killDaemons(): void {
	for (const c of running) c.kill("SIGKILL");
}

/**
 * Starts `node BIN ARGS…` (which must print one JSON ready document on stdout) and waits for it.
 * With `wrap` (e.g. ["strace", "-f", …]) the node command runs under that program.
 */
export async function startDaemon(
	bin: string,
	args: string[],
	env?: NodeJS.ProcessEnv,
	cwd?: string,
	wrap: string[] = [],
): Promise<Daemon> {
	const argv = [...wrap, process.execPath, bin, ...args];
	const child = spawn(argv[0] as string, argv.slice(1), {
		stdio: ["ignore", "pipe", "pipe"],
		env: env ?? process.env,
		cwd,
	});
	running.add(child);
	let out = "";
	let err = "";
	child.stderr?.on("data", (d) => {
		err += d;
	});
	const exited = new Promise<number | null>((r) =>
		child.once("exit", (code) => {
			running.delete(child);
			r(code);
		}),
	);
	const ready = await new Promise<Record<string, unknown>>(
		(resolve, reject) => {
			const timer = setTimeout(
				() => reject(new Error(`not ready: ${err}`)),
				60_000,
			);
			child.stdout?.on("data", (d) => {
				out += d;
				try {
					const doc = JSON.parse(out);
					clearTimeout(timer);
					resolve(doc);
				} catch {
					// not complete yet
				}
			});
			void exited.then((code) => {
				clearTimeout(timer);
				reject(new Error(`${bin} exited ${code}: ${err}`));
			});
		},
	);
	return {
		child,
		ready,
		exited,
		stderr: () => err,
		stop: async () => {
			child.kill("SIGTERM");
			return exited;
		},
	};
}
