/**
 * Running a debugfs script against an ext4 image. debugfs echoes each command it reads from
 * `-f FILE` as "debugfs: COMMAND" on stdout before running it, so the echoes count the commands
 * done — the progress of a long script. Its complaints go to stderr without failing the exit code:
 * they are returned for the caller to judge.
 */
import { randomBytes } from "node:crypto";
import { rm, writeFile } from "node:fs/promises";
import { run } from "./tool.js";

export interface DebugfsOptions {
	/** Open the image read-write (`-w`). */
	writable?: boolean;
	/** E2FSPROGS_FAKE_TIME: keeps debugfs from stamping the image with the clock. */
	fakeTime?: number;
	/** Commands done so far, of the script's. */
	onProgress?: (done: number, total: number) => void;
}

export interface DebugfsResult {
	stdout: string;
	/** stderr lines that are not debugfs's own banner: what went wrong, if anything. */
	errors: string[];
}

const ECHO = "debugfs: ";

/** Counts the "debugfs: " echoes in a stream cut into arbitrary pieces. */
export function echoCounter(): (text: string) => number {
	let count = 0;
	let atLineStart = true;
	let partial = "";
	return (text) => {
		for (const ch of text) {
			if (atLineStart) {
				partial += ch;
				if (partial === ECHO) {
					count++;
					atLineStart = false;
					partial = "";
				} else if (!ECHO.startsWith(partial)) {
					atLineStart = false;
					partial = "";
				}
			}
			if (ch === "\n") {
				atLineStart = true;
				partial = "";
			}
		}
		return count;
	};
}

export async function runDebugfs(
	image: string,
	commands: readonly string[],
	o: DebugfsOptions = {},
): Promise<DebugfsResult> {
	const script = `${image}.${randomBytes(4).toString("hex")}.debugfs`;
	await writeFile(script, `${commands.join("\n")}\n`);
	const total = commands.length;
	const count = echoCounter();
	try {
		o.onProgress?.(0, total);
		const { stdout, stderr } = await run(
			"debugfs",
			[...(o.writable ? ["-w"] : []), "-f", script, image],
			{
				env:
					o.fakeTime === undefined
						? {}
						: { E2FSPROGS_FAKE_TIME: String(o.fakeTime) },
				onStdout: o.onProgress
					? (text) => o.onProgress?.(Math.min(total, count(text)), total)
					: undefined,
			},
		);
		o.onProgress?.(total, total);
		const errors = stderr
			.split("\n")
			.filter((l) => l.trim() !== "" && !l.startsWith("debugfs "));
		return { stdout, errors };
	} finally {
		await rm(script, { force: true });
	}
}
