/**
 * One process per directory: a lock file created exclusively ("wx") holding the owner's pid. A lock
 * naming a live process means the directory is in use; one naming a dead process (a crashed or
 * SIGKILLed owner) is taken over. Used by the key broker's state directory and the snapshotter's
 * root.
 */
import { type FileHandle, open, readFile, rm, stat } from "node:fs/promises";
import { DadiError, fromSystemError } from "./errors.js";

/** A lock file with no pid yet is another process starting up, unless it is older than this. */
const LOCK_STARTUP_MS = 10_000;

function pidAlive(pid: number): boolean {
	try {
		process.kill(pid, 0);
		return true;
	} catch (e) {
		return (e as NodeJS.ErrnoException).code === "EPERM";
	}
}

/** The pid in a lock file; undefined if the file is gone, null if it holds no pid. */
async function readLock(
	lock: string,
): Promise<{ pid: number | null; mtimeMs: number } | undefined> {
	try {
		const [text, st] = await Promise.all([readFile(lock, "utf8"), stat(lock)]);
		const m = /^\s*(\d{1,10})\s*$/.exec(text.slice(0, 64));
		const pid = m ? Number(m[1]) : null;
		return { pid: pid && pid > 0 ? pid : null, mtimeMs: st.mtimeMs };
	} catch (e) {
		if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
		throw fromSystemError(e, lock, "reading a lock file");
	}
}

/**
 * Creates `lock` with our pid inside, or fails with IO naming the process that holds it. `what`
 * names the locked thing in messages ("state directory /var/lib/x").
 */
export async function acquirePidLock(
	lock: string,
	what: string,
): Promise<string> {
	for (let attempt = 0; attempt < 5; attempt++) {
		let fh: FileHandle | undefined;
		try {
			fh = await open(lock, "wx", 0o600);
		} catch (e) {
			if ((e as NodeJS.ErrnoException).code !== "EEXIST")
				throw fromSystemError(e, lock, `locking ${what}`);
		}
		if (fh) {
			try {
				await fh.writeFile(`${process.pid}\n`);
				await fh.close();
			} catch (e) {
				await fh.close().catch(() => {});
				await rm(lock, { force: true }).catch(() => {});
				throw fromSystemError(e, lock, `locking ${what}`);
			}
			return lock;
		}
		const held = await readLock(lock);
		if (held === undefined) continue; // released meanwhile: try again
		if (held.pid !== null && pidAlive(held.pid))
			throw new DadiError(
				"IO",
				`${what} is in use by process ${held.pid} (if it is not running, remove ${lock})`,
			);
		if (held.pid === null && Date.now() - held.mtimeMs < LOCK_STARTUP_MS)
			throw new DadiError(
				"IO",
				`${what} is being opened by another process (${lock} has no pid yet)`,
			);
		// An owner that died without unlocking: take the lock over.
		try {
			await rm(lock, { force: true });
		} catch (e) {
			throw fromSystemError(e, lock, "taking over a stale lock");
		}
	}
	throw new DadiError(
		"IO",
		`${what}: could not take ${lock} (other processes keep taking it)`,
	);
}

/** Removes the lock if it is still ours. */
export async function releasePidLock(lock: string): Promise<void> {
	const held = await readLock(lock).catch(() => undefined);
	if (held?.pid === process.pid)
		await rm(lock, { force: true }).catch(() => {});
}
