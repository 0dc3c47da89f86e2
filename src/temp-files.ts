/**
 * Temporary files and directories that must not outlive the process. Writers register the temporary name while
 * they write and unregister it once renamed into place; on SIGINT/SIGTERM the CLI removes
 * whatever is still registered before exiting, so an interrupted seal or export leaves nothing.
 */
import { rmSync } from "node:fs";

const live = new Set<string>();
const children = new Set<{ kill(signal?: NodeJS.Signals): boolean }>();

/** A child process (mke2fs, debugfs, …) writing into tracked temporary places: killed first on a signal. */
export function trackChild(child: {
	kill(signal?: NodeJS.Signals): boolean;
	once(event: "exit", fn: () => void): unknown;
}): void {
	children.add(child);
	child.once("exit", () => children.delete(child));
}

export function trackTemp(path: string): void {
	live.add(path);
}

export function untrackTemp(path: string): void {
	live.delete(path);
}

export function removeTrackedTemps(): void {
	for (const c of children) c.kill("SIGKILL");
	for (const p of live) {
		try {
			// A child just killed may still create a file for a moment: retry the removal.
			rmSync(p, {
				force: true,
				recursive: true,
				maxRetries: 10,
				retryDelay: 50,
			});
		} catch {
			// best effort: the process is exiting
		}
	}
	live.clear();
}

let installed = false;
let onSignal: ((sig: NodeJS.Signals) => void) | undefined;

/**
 * A long-running command (`serve`) takes SIGINT/SIGTERM over to shut down in order; the second
 * signal still exits at once. `undefined` restores the default.
 */
export function handleSignals(
	fn: ((sig: NodeJS.Signals) => void) | undefined,
): void {
	onSignal = fn;
}

/** Removes tracked temporary files on SIGINT/SIGTERM, then exits 130/143 as shells expect. */
export function installSignalCleanup(): void {
	if (installed) return;
	installed = true;
	for (const [sig, code] of [
		["SIGINT", 130],
		["SIGTERM", 143],
	] as const) {
		process.on(sig, () => {
			const handler = onSignal;
			if (handler) {
				onSignal = undefined; // a second signal takes the default path
				handler(sig);
				return;
			}
			removeTrackedTemps();
			process.stderr.write(`\ninterrupted (${sig}); temporary files removed\n`);
			process.exit(code);
		});
	}
}
