/**
 * Hostile storage under a reader (issue 14): an unauthenticated trailer that announces a huge
 * index, cache entries and layout files that are huge, endless (/dev/zero) or FIFOs. Each must end
 * in a coded error or a cache miss, quickly, without allocating what the attacker asks for.
 */
import { execFile } from "node:child_process";
import { readFile, rm, symlink, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ImageKey } from "../src/crypto/image-key.js";
import {
	EXTENT_SIZE,
	HEADER_SIZE,
	INDEX_NONCE_SIZE,
	TAG_SIZE,
	TRAILER_SIZE,
} from "../src/format/constants.js";
import { loadSealedImage, openSealedImage } from "../src/image/open-image.js";
import { DiskChunkCache } from "../src/lazy/chunk-cache.js";
import { entryName } from "../src/lazy/chunk-cache-file.js";
import {
	cleanupTempDirs,
	prng,
	rejection,
	sealInto,
	tempDir,
	writeDisk,
	writeKey,
} from "./helpers.js";

const sh = promisify(execFile);
const MiB = 1 << 20;
let dir: string;
let oci: string;
let key: ImageKey;

beforeAll(async () => {
	dir = await tempDir();
	oci = join(dir, "oci");
	key = (await writeKey(dir)).key;
	await writeDisk(join(dir, "d.img"), 16 * MiB, [
		{ at: 0, bytes: prng("s", 12 * MiB) },
	]);
	await sealInto(join(dir, "d.img"), oci, "v1", key, { compression: "none" });
});
afterAll(cleanupTempDirs);

async function layerPath(): Promise<string> {
	const image = await loadSealedImage({
		transport: "oci",
		dir: oci,
		tag: "v1",
	});
	return join(
		oci,
		"blobs/sha256",
		(image.manifest.layers[0]?.digest ?? "").slice(7),
	);
}

describe("a trailer rewritten to announce a huge index", () => {
	it("is refused before the index is read (FORMAT_INVALID), bounded by the authenticated chunk counts", async () => {
		const path = await layerPath();
		const orig = await readFile(path);
		const size = orig.length;
		// Keep the trailer self-consistent with the blob size: index from byte HEADER_SIZE + d to
		// the trailer, as many extents as fit.
		let d = 0;
		while (
			(size - HEADER_SIZE - d - TRAILER_SIZE - INDEX_NONCE_SIZE - TAG_SIZE) %
				EXTENT_SIZE !==
			0
		)
			d++;
		const extents =
			(size - HEADER_SIZE - d - TRAILER_SIZE - INDEX_NONCE_SIZE - TAG_SIZE) /
			EXTENT_SIZE;
		const bad = Buffer.from(orig);
		const t = size - TRAILER_SIZE;
		bad.writeBigUInt64LE(BigInt(HEADER_SIZE + d), t);
		bad.writeUInt32LE(
			INDEX_NONCE_SIZE + extents * EXTENT_SIZE + TAG_SIZE,
			t + 8,
		);
		bad.writeUInt32LE(extents, t + 12);
		bad.writeBigUInt64LE(BigInt(d), t + 16);
		await writeFile(path, bad);
		try {
			const e = await rejection(
				openSealedImage({ transport: "oci", dir: oci, tag: "v1" }, key),
			);
			expect(e.code).toBe("FORMAT_INVALID");
			expect(e.message).toMatch(
				new RegExp(`announces ${extents} index extents, more than the \\d+`),
			);
		} finally {
			await writeFile(path, orig);
		}
		// The untouched layer still opens.
		const img = await openSealedImage(
			{ transport: "oci", dir: oci, tag: "v1" },
			key,
		);
		await img.close();
	});
});

describe("layout files that are not what they claim", () => {
	it("index.json, oci-layout, a manifest or config as a symlink to /dev/zero or as a FIFO: a coded error, fast", async () => {
		for (const [file, how] of [
			["index.json", "zero"],
			["oci-layout", "zero"],
			["index.json", "fifo"],
			["oci-layout", "fifo"],
		] as const) {
			const copy = join(await tempDir(), "oci");
			await sh("cp", ["-a", oci, copy]);
			await rm(join(copy, file));
			if (how === "zero") await symlink("/dev/zero", join(copy, file));
			else await sh("mkfifo", [join(copy, file)]);
			const started = Date.now();
			const e = await rejection(
				loadSealedImage({ transport: "oci", dir: copy, tag: "v1" }),
			);
			expect(
				["LAYOUT_INVALID", "INPUT_INVALID"],
				`${file} ${how}: ${e.message}`,
			).toContain(e.code);
			expect(e.message).toMatch(/not a regular file/);
			expect(Date.now() - started).toBeLessThan(2000);
		}
		const image = await loadSealedImage({
			transport: "oci",
			dir: oci,
			tag: "v1",
		});
		for (const blob of [
			image.manifestDesc.digest,
			image.manifest.config.digest,
		]) {
			const copy = join(await tempDir(), "oci");
			await sh("cp", ["-a", oci, copy]);
			const p = join(copy, "blobs/sha256", blob.slice(7));
			await rm(p);
			await symlink("/dev/zero", p);
			const e = await rejection(
				loadSealedImage({ transport: "oci", dir: copy, tag: "v1" }),
			);
			expect(e.message).toMatch(/not a regular file/);
		}
	});
});

describe("a planted chunk-cache entry", () => {
	it("over 2 GiB (sparse) is a miss when the reader knows the length, quickly and without allocating it", async () => {
		const cdir = join(await tempDir(), "cache");
		const cache = await DiskChunkCache.open(cdir, 10 * 2 ** 30);
		const key = `sha256:${"ab".repeat(32)}/65536+4096`;
		await cache.put(key, prng("c", 4096));
		expect((await cache.get(key, 4096))?.length).toBe(4096);
		const n = entryName(key);
		const file = join(cdir, "v1", n.slice(0, 2), n.slice(2));
		await truncate(file, 3 * 2 ** 30);
		const started = Date.now();
		const rss = process.memoryUsage().rss;
		expect(await cache.get(key, 4096)).toBeUndefined();
		expect(Date.now() - started).toBeLessThan(2000);
		expect(process.memoryUsage().rss - rss).toBeLessThan(256 * MiB);
		await cache.close();
	});
});
