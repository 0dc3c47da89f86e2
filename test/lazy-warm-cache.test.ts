/**
 * A restart over a warm --cache-dir: everything read before comes from the disk cache, read-ahead
 * included, so the second run fetches no chunk bytes from the registry (the stats prove it).
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ImageKey } from "../src/crypto/image-key.js";
import { openRemoteSealedImage } from "../src/lazy/open-remote.js";
import { parseReference } from "../src/oci/reference.js";
import {
	cleanupTempDirs,
	prng,
	sealDiskToRegistry,
	tempDir,
	texty,
} from "./helpers.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";

const MiB = 1 << 20;
let reg: RunningRegistry;
let key: ImageKey;
let disk: Buffer;

beforeAll(async () => {
	reg = await startRegistry();
	({ key, disk } = await sealDiskToRegistry(
		reg.host,
		"warm/disk:v1",
		16 * MiB,
		[
			{ at: 0, bytes: prng("a", 6 * MiB) },
			{ at: 8 * MiB, bytes: texty("b", 6 * MiB) },
		],
	));
});

afterAll(async () => {
	await reg?.stop();
	await cleanupTempDirs();
});

/** Reads the whole disk front to back in 128 KiB reads (read-ahead kicks in), checking bytes. */
async function readAll(cacheDir: string) {
	const ref = parseReference(`docker://${reg.host}/warm/disk:v1`);
	if (ref.transport !== "docker") throw new Error("ref");
	const image = await openRemoteSealedImage(ref, key, {
		insecure: true,
		cacheDir,
	});
	try {
		const step = 128 * 1024;
		for (let at = 0; at < disk.length; at += step) {
			const got = await image.disk.read(at, step);
			expect(got.equals(disk.subarray(at, at + step))).toBe(true);
		}
		return image.stats.toJSON();
	} finally {
		await image.close();
	}
}

describe("a warm disk cache", () => {
	it("serves a second sequential run without fetching a chunk, read-ahead included", async () => {
		const cacheDir = join(await tempDir(), "cache");
		const first = await readAll(cacheDir);
		expect(first.chunksFetched).toBeGreaterThan(100);
		expect(first.readAheadChunks).toBeGreaterThan(0);
		const second = await readAll(cacheDir);
		expect(second.chunkBytesFetched).toBe(0);
		expect(second.chunksFetched).toBe(0);
		expect(second.rangeRequests).toBe(0);
		expect(second.metadataBytesFetched).toBe(0);
		expect(second.diskHits).toBeGreaterThanOrEqual(first.chunksFetched);
	});
});
