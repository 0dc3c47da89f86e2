/**
 * Durable, atomic file writes shared by every layer that keeps state on disk (the broker's key
 * store and state directory, the snapshotter's metadata): a complete temporary file beside the
 * target (fsynced), renamed into place, then the directory fsynced so the rename itself survives a
 * power loss. A crash at any point leaves either the old file or the new one, never a torn file;
 * the temporary name is removed on failure and on SIGINT/SIGTERM (temp-files.ts).
 */
import { randomBytes } from "node:crypto";
import { type FileHandle, open, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";
import { fromSystemError } from "./errors.js";
import { trackTemp, untrackTemp } from "./temp-files.js";

/** fsync of a directory, so a rename or new entry in it survives a crash. */
export async function fsyncDir(dir: string): Promise<void> {
	const fh = await open(dir, "r");
	try {
		await fh.sync();
	} finally {
		await fh.close();
	}
}

/**
 * Writes `data` to a new temporary file beside `file` (fsynced), then lets `place` move it into
 * position; the temporary file never outlives a failure or a signal.
 */
export async function writeViaTemp(
	file: string,
	data: Buffer,
	place: (tmp: string) => Promise<void>,
	mode = 0o600,
): Promise<void> {
	const tmp = `${file}.${randomBytes(6).toString("hex")}.tmp`;
	let fh: FileHandle | undefined;
	trackTemp(tmp);
	try {
		fh = await open(tmp, "wx", mode);
		await fh.writeFile(data);
		await fh.sync();
		await fh.close();
		fh = undefined;
		await place(tmp);
	} catch (e) {
		await fh?.close().catch(() => {});
		await rm(tmp, { force: true }).catch(() => {});
		throw e;
	} finally {
		untrackTemp(tmp);
	}
}

/** Atomic, durable replacement of `file` with `data` (mode 0600 unless given). */
export function writeFileDurable(
	file: string,
	data: Buffer,
	doing: string,
	mode = 0o600,
): Promise<void> {
	return writeViaTemp(
		file,
		data,
		async (tmp) => {
			await rename(tmp, file);
			await fsyncDir(dirname(file));
		},
		mode,
	).catch((e) => {
		throw fromSystemError(e, file, doing);
	});
}
