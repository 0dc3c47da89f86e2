/**
 * Reading one layer blob of an ordinary image as an uncompressed tar stream, hashing as it goes:
 * the stored bytes against the blob digest (when known) and the uncompressed bytes against the
 * config's diff_id. A mismatch is DIGEST_MISMATCH when `finish()` has read everything.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { open } from "node:fs/promises";
import { pipeline, type Readable, Transform } from "node:stream";
import { createGunzip } from "node:zlib";
import { DecompressStream } from "zstd-napi";
import { DadiError, fromSystemError } from "../errors.js";
import type { LayerStream } from "./image-source.js";

export type LayerCompression = "none" | "gzip" | "zstd" | "auto";

export interface LayerBlob {
	path: string;
	/** Byte range of the blob inside `path` (a docker-archive member); the whole file otherwise. */
	start?: number;
	size: number;
	compression: LayerCompression;
	/** Expected sha256 of the stored bytes, when the source names one. */
	digest?: string;
	diffId: string;
	/** For messages. */
	name: string;
}

async function sniff(
	path: string,
	start: number,
): Promise<"none" | "gzip" | "zstd"> {
	const fh = await open(path, "r");
	try {
		const b = Buffer.alloc(4);
		await fh.read(b, 0, 4, start);
		if (b[0] === 0x1f && b[1] === 0x8b) return "gzip";
		if (b.readUInt32LE(0) === 0xfd2fb528) return "zstd";
		return "none";
	} finally {
		await fh.close();
	}
}

export async function openLayerBlob(blob: LayerBlob): Promise<LayerStream> {
	const start = blob.start ?? 0;
	let compression = blob.compression;
	try {
		if (compression === "auto") compression = await sniff(blob.path, start);
	} catch (e) {
		throw fromSystemError(e, blob.path, `reading ${blob.name}`);
	}
	const raw: Readable = createReadStream(blob.path, {
		start,
		end: start + blob.size - 1,
		highWaterMark: 1 << 20,
	});
	const stored = createHash("sha256");
	let storedBytes = 0;
	// Hash the stored bytes in a pass-through stage: a 'data' listener on `raw` would switch it to
	// flowing mode and race the async iterator for its chunks.
	const tap = new Transform({
		transform(chunk: Buffer, _enc, cb) {
			stored.update(chunk);
			storedBytes += chunk.length;
			cb(null, chunk);
		},
	});
	let decompressor: Transform | undefined;
	if (compression === "gzip") decompressor = createGunzip();
	else if (compression === "zstd") decompressor = new DecompressStream();
	const stages: (Readable | Transform)[] = decompressor
		? [raw, tap, decompressor]
		: [raw, tap];
	const out = stages[stages.length - 1] as Readable;
	pipeline(stages, () => {
		// errors surface through the iterator of the last stage
	});
	const plain = createHash("sha256");
	const iterator = out[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
	let done = false;
	const next = async (): Promise<IteratorResult<Buffer>> => {
		try {
			const r = await iterator.next();
			if (r.done) done = true;
			else plain.update(r.value);
			return r;
		} catch (e) {
			done = true;
			if (e instanceof DadiError) throw e;
			const code = (e as NodeJS.ErrnoException)?.code;
			if (code === "ENOENT" || code === "EACCES")
				throw fromSystemError(e, blob.path, `reading ${blob.name}`);
			throw new DadiError(
				"INPUT_INVALID",
				`${blob.name}: the layer is not valid ${compression === "none" ? "tar data" : compression} (${(e as Error).message})`,
			);
		}
	};
	return {
		chunks: { [Symbol.asyncIterator]: () => ({ next }) },
		bytesRead: () => storedBytes,
		finish: async () => {
			while (!done) await next();
			if (storedBytes !== blob.size)
				throw new DadiError(
					"DIGEST_MISMATCH",
					`${blob.name}: ${storedBytes} bytes, the manifest says ${blob.size}`,
				);
			if (blob.digest && `sha256:${stored.digest("hex")}` !== blob.digest)
				throw new DadiError(
					"DIGEST_MISMATCH",
					`${blob.name}: does not match its digest ${blob.digest}`,
				);
			if (`sha256:${plain.digest("hex")}` !== blob.diffId)
				throw new DadiError(
					"DIGEST_MISMATCH",
					`${blob.name}: its uncompressed content does not match the config's diff_id ${blob.diffId}`,
				);
		},
		close: async () => {
			done = true;
			for (const st of stages) st.destroy();
		},
	};
}
