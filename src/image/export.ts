/**
 * Writing the merged plaintext disk to a file. The output goes to a temporary file beside the
 * destination and is renamed into place only after every chunk, including chunks shadowed by
 * upper layers, has been authenticated: a failed export leaves nothing behind.
 */
import { randomBytes } from "node:crypto";
import { type FileHandle, open, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { DadiError, fromSystemError } from "../errors.js";
import type { Run, VirtualDisk } from "../storage/virtual-disk.js";
import { trackTemp, untrackTemp } from "../temp-files.js";

export interface ExportOptions {
	force?: boolean;
	onProgress?: (done: number, total: number) => void;
	/** Data runs read ahead of the one being written. */
	depth?: number;
	/** Stored bytes per read (default 4 MiB). */
	runBytes?: number;
}

export interface ExportResult {
	bytes: number;
	dataChunks: number;
	zeroChunks: number;
	shadowedChunks: number;
}

export async function exportDisk(
	disk: VirtualDisk,
	out: string,
	o: ExportOptions = {},
): Promise<ExportResult> {
	if (!o.force) {
		const exists = await stat(out).then(
			() => true,
			() => false,
		);
		if (exists)
			throw new DadiError(
				"OUTPUT_EXISTS",
				`${out}: already exists; choose another path or pass --force`,
			);
	}
	const tmp = join(
		dirname(out),
		`.${basename(out)}.${randomBytes(6).toString("hex")}.tmp`,
	);
	let fh: FileHandle | undefined;
	try {
		fh = await open(tmp, "wx", 0o600);
		trackTemp(tmp);
	} catch (e) {
		throw fromSystemError(e, tmp, "creating the output file");
	}
	try {
		const result = await writeRuns(disk, fh, o);
		result.shadowedChunks = await disk.authenticateShadowed();
		await fh.truncate(disk.size);
		await fh.sync();
		await fh.close();
		fh = undefined;
		await rename(tmp, out);
		return result;
	} catch (e) {
		await fh?.close().catch(() => {});
		await rm(tmp, { force: true });
		throw e instanceof DadiError ? e : fromSystemError(e, out, "exporting");
	} finally {
		untrackTemp(tmp);
	}
}

async function writeRuns(
	disk: VirtualDisk,
	fh: FileHandle,
	o: ExportOptions,
): Promise<ExportResult> {
	const cs = disk.chunkSize;
	const depth = o.depth ?? 4;
	const result: ExportResult = {
		bytes: disk.size,
		dataChunks: 0,
		zeroChunks: 0,
		shadowedChunks: 0,
	};
	const runs = disk.runs(0, disk.chunkCount, o.runBytes);
	const inFlight: { run: Run & { kind: "data" }; chunks: Promise<Buffer[]> }[] =
		[];
	const fill = (): void => {
		while (inFlight.length < depth) {
			const next = runs.next();
			if (next.done) return;
			const run = next.value;
			if (run.kind === "zero") {
				result.zeroChunks += run.count; // left as a hole in the output
				continue;
			}
			const chunks = disk.readRun(run);
			chunks.catch(() => {}); // awaited below; avoid an unhandled rejection meanwhile
			inFlight.push({ run, chunks });
		}
	};
	fill();
	while (inFlight.length > 0) {
		const { run, chunks } = inFlight.shift() as (typeof inFlight)[number];
		const plain = await chunks;
		fill();
		const start = run.first * cs;
		await writeAll(fh, plain, start, disk.size - start);
		result.dataChunks += run.count;
		o.onProgress?.(
			Math.min(disk.size, (run.first + run.count) * cs),
			disk.size,
		);
	}
	return result;
}

/**
 * Writes the chunks back to back at `position`, at most `limit` bytes (the last chunk of a disk
 * may be padded), with writev: no concatenation copy.
 */
async function writeAll(
	fh: FileHandle,
	chunks: Buffer[],
	position: number,
	limit: number,
): Promise<void> {
	let left = limit;
	const bufs: Buffer[] = [];
	for (const c of chunks) {
		if (left <= 0) break;
		const b = c.length > left ? c.subarray(0, left) : c;
		bufs.push(b);
		left -= b.length;
	}
	let at = position;
	while (bufs.length > 0) {
		const { bytesWritten } = await fh.writev(bufs.slice(0, 1024), at);
		at += bytesWritten;
		let n = bytesWritten;
		while (n > 0 && bufs.length > 0) {
			const head = bufs[0] as Buffer;
			if (head.length <= n) {
				n -= head.length;
				bufs.shift();
			} else {
				bufs[0] = head.subarray(n);
				n = 0;
			}
		}
		if (bytesWritten === 0 && bufs.length > 0)
			throw new DadiError("IO", "the output file accepted no more bytes");
	}
}
