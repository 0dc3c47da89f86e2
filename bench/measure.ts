/**
 * Sealing and exporting the test image with the real library code, one configuration
 * (compression x chunk size) at a time: sealDisk() into a fresh OCI layout, then
 * openSealedImage() + exportDisk() to a file, each timed with performance.now().
 */
import { createHash } from "node:crypto";
import { open, rm } from "node:fs/promises";
import { join } from "node:path";
import type { ImageKey } from "../src/crypto/image-key.js";
import type { CompressionName } from "../src/format/constants.js";
import { exportDisk } from "../src/image/export.js";
import { openSealedImage } from "../src/image/open-image.js";
import type { Reference } from "../src/oci/reference.js";
import { sealDisk } from "../src/seal/seal-disk.js";
import { type Timing, timingOf } from "./baseline.js";
import type { TestImage } from "./image.js";

export interface Config {
	compression: CompressionName;
	chunkSize: number;
}

export interface ConfigResult extends Config {
	seal: Timing;
	export: Timing;
	/** Size of the sealed layer blob (header, chunks, encrypted index, trailer). */
	layerBytes: number;
	storedChunks: number;
	/** Extents in the layer index; every extent is read (and written out) separately on export. */
	extents: number;
}

export interface MeasureContext {
	image: TestImage;
	/** SHA-256 of the image, to check that every export gives the same bytes back. */
	imageSha256: string;
	key: ImageKey;
	workDir: string;
	reps: number;
}

/** Seals and exports `reps` times; keeps each phase's timings. Leaves nothing in workDir. */
export async function measureConfig(
	ctx: MeasureContext,
	cfg: Config,
): Promise<ConfigResult> {
	const sealTimes: number[] = [];
	const exportTimes: number[] = [];
	let layerBytes = 0;
	let storedChunks = 0;
	let extents = 0;
	for (let rep = 0; rep < ctx.reps; rep++) {
		const dir = join(
			ctx.workDir,
			`oci-${cfg.compression}-${cfg.chunkSize}-${rep}`,
		);
		const out = join(ctx.workDir, `export-${rep}.img`);
		const ref: Reference & { transport: "oci" } = {
			transport: "oci",
			dir,
			tag: "bench",
		};
		try {
			let t0 = performance.now();
			const sealed = await sealDisk({
				disk: ctx.image.path,
				dest: ref,
				key: ctx.key,
				chunkSize: cfg.chunkSize,
				compression: cfg.compression,
				fsType: ctx.image.kind === "ext4" ? "ext4" : "raw",
			});
			sealTimes.push((performance.now() - t0) / 1000);
			layerBytes = sealed.layer.size;
			storedChunks = sealed.layer.storedChunks;

			t0 = performance.now();
			const image = await openSealedImage(ref, ctx.key);
			try {
				extents = image.disk.layers[0]?.extents.length ?? 0;
				await exportDisk(image.disk, out, { force: true });
			} finally {
				await image.close();
			}
			exportTimes.push((performance.now() - t0) / 1000);

			if (rep === 0) await checkRoundTrip(out, ctx.imageSha256, cfg);
		} finally {
			await rm(dir, { recursive: true, force: true });
			await rm(out, { force: true });
		}
	}
	return {
		...cfg,
		seal: timingOf(ctx.image.size, sealTimes),
		export: timingOf(ctx.image.size, exportTimes),
		layerBytes,
		storedChunks,
		extents,
	};
}

/** Throws unless the exported disk is byte-for-byte the original image (checked untimed). */
async function checkRoundTrip(
	path: string,
	expected: string,
	cfg: Config,
): Promise<void> {
	const actual = await sha256File(path);
	if (actual !== expected)
		throw new Error(
			`export with ${cfg.compression}/${cfg.chunkSize} does not match the original image`,
		);
}

export async function sha256File(path: string): Promise<string> {
	const h = createHash("sha256");
	const fh = await open(path, "r");
	try {
		const buf = Buffer.allocUnsafe(8 << 20);
		for (;;) {
			const { bytesRead } = await fh.read(buf, 0, buf.length, null);
			if (bytesRead === 0) break;
			h.update(buf.subarray(0, bytesRead));
		}
	} finally {
		await fh.close();
	}
	return h.digest("hex");
}
