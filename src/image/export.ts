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
		const plain = Buffer.concat(await chunks);
		fill();
		const start = run.first * cs;
		const len = Math.min(plain.length, disk.size - start);
		let off = 0;
		while (off < len) {
			const { bytesWritten } = await fh.write(
				plain,
				off,
				len - off,
				start + off,
			);
			off += bytesWritten;
		}
		result.dataChunks += run.count;
		o.onProgress?.(
			Math.min(disk.size, (run.first + run.count) * cs),
			disk.size,
		);
	}
	return result;
}
