/** Reproducible sealing (--seal-id) must stay safe when a seal id is reused with other inputs. */
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import { exportDisk } from "../src/image/export.js";
import { openSealedImage } from "../src/image/open-image.js";
import { sealDisk } from "../src/seal/seal-disk.js";
import { DEFAULT_WRITER_POLICY } from "../src/seal/writer-policy.js";
import {
	cleanupTempDirs,
	prng,
	sealInto,
	tempDir,
	writeDisk,
	writeKey,
} from "./helpers.js";

afterAll(cleanupTempDirs);

describe("reproducible sealing", () => {
	it("the same disk, key and seal id over two different bases gives different layer ids and keys; blobs cannot be swapped", async () => {
		const dir = await tempDir();
		const { key } = await writeKey(dir);
		const cs = 4096;
		const a = prng("A", 64 * cs);
		const b = Buffer.from(a);
		prng("B", 8 * cs).copy(b, 10 * cs); // B differs from A in chunks 10..17
		const d = Buffer.from(a);
		prng("D", 4 * cs).copy(d, 12 * cs); // D differs from A in 12..15 and from B in 10..17
		await writeDisk(join(dir, "a.img"), a.length, [{ at: 0, bytes: a }]);
		await writeDisk(join(dir, "b.img"), b.length, [{ at: 0, bytes: b }]);
		await writeDisk(join(dir, "d.img"), d.length, [{ at: 0, bytes: d }]);
		const baseId = Buffer.alloc(16, 1);
		const topId = Buffer.alloc(16, 2);
		await sealInto(join(dir, "a.img"), join(dir, "X"), "base", key, {
			chunkSize: cs,
			compression: "none",
			sealId: baseId,
		});
		await sealInto(join(dir, "b.img"), join(dir, "Y"), "base", key, {
			chunkSize: cs,
			compression: "none",
			sealId: baseId,
		});
		const x = await sealInto(join(dir, "d.img"), join(dir, "X"), "top", key, {
			base: "base",
			compression: "none",
			sealId: topId,
		});
		const y = await sealInto(join(dir, "d.img"), join(dir, "Y"), "top", key, {
			base: "base",
			compression: "none",
			sealId: topId,
		});
		expect(x.layer.layerId).not.toBe(y.layer.layerId);
		expect(x.layer.wrappedKey).not.toBe(y.layer.wrappedKey);
		// an attacker puts Y's top layer where X's is expected (pad or cut to the same size)
		const xPath = join(dir, "X/blobs/sha256", x.layer.digest.slice(7));
		const yBytes = await readFile(
			join(dir, "Y/blobs/sha256", y.layer.digest.slice(7)),
		);
		const xLen = (await readFile(xPath)).length;
		await writeFile(
			xPath,
			yBytes.length >= xLen
				? yBytes.subarray(0, xLen)
				: Buffer.concat([yBytes, Buffer.alloc(xLen - yBytes.length)]),
		);
		const img = await openSealedImage(
			{ transport: "oci", dir: join(dir, "X"), tag: "top" },
			key,
		).catch((e) => e);
		if (img instanceof DadiError) {
			expect(["LAYER_MISMATCH", "FORMAT_INVALID", "AUTH_FAILED"]).toContain(
				img.code,
			);
		} else {
			try {
				await expect(
					exportDisk(img.disk, join(dir, "out.img")),
				).rejects.toBeInstanceOf(DadiError);
			} finally {
				await img.close();
			}
		}
	});

	it("the same inputs and seal id give identical bytes; another codec gives another key", async () => {
		const dir = await tempDir();
		const { key } = await writeKey(dir);
		await writeDisk(join(dir, "d.img"), 300_000, [
			{ at: 0, bytes: prng("d", 300_000) },
		]);
		const id = Buffer.alloc(16, 9);
		const r1 = await sealInto(join(dir, "d.img"), join(dir, "one"), "t", key, {
			sealId: id,
		});
		const r2 = await sealInto(join(dir, "d.img"), join(dir, "two"), "t", key, {
			sealId: id,
		});
		const r3 = await sealInto(
			join(dir, "d.img"),
			join(dir, "three"),
			"t",
			key,
			{ sealId: id, compression: "none" },
		);
		expect(r2.manifest.digest).toBe(r1.manifest.digest);
		expect(r2.layer.digest).toBe(r1.layer.digest);
		expect(r3.layer.layerId).not.toBe(r1.layer.layerId);
	});

	it("two writers that differ only in their compression threshold never encrypt two payloads under one (chunk key, nonce)", async () => {
		// Issue 14: the reproducible layer key did not depend on the 1/16 threshold, so a writer
		// keeping zstd output only when it saves half the chunk stored chunk 0 raw where this writer
		// stores it compressed — under the same key and nonce.
		const dir = await tempDir();
		const { key } = await writeKey(dir);
		const cs = 4096;
		const disk = Buffer.alloc(4 * cs);
		for (let c = 0; c < 4; c++) prng(`c${c}`, (3 * cs) / 4).copy(disk, c * cs); // saves ~1/4
		await writeDisk(join(dir, "d.img"), disk.length, [{ at: 0, bytes: disk }]);
		const sealId = Buffer.alloc(16, 7);
		const seal = (tag: string, minSavingShift: number) =>
			sealDisk({
				disk: join(dir, "d.img"),
				dest: { transport: "oci", dir: join(dir, "oci"), tag },
				key,
				chunkSize: cs,
				compression: "zstd",
				sealId,
				writerPolicy: { minSavingShift },
			});
		await seal("sixteenth", DEFAULT_WRITER_POLICY.minSavingShift);
		await seal("half", 1);
		const open = (tag: string) =>
			openSealedImage({ transport: "oci", dir: join(dir, "oci"), tag }, key);
		const a = await open("sixteenth");
		const b = await open("half");
		try {
			const [la, lb] = [a.disk.layers[0], b.disk.layers[0]];
			// the policies did store chunk 0 differently: compressed here, raw there
			expect(la?.extents[0]?.flags).toBe(2);
			expect(lb?.extents[0]?.flags).toBe(0);
			// so they must not share the layer key (hence the chunk key): (key, nonce) never repeats
			expect(a.layerKeys[0]?.equals(b.layerKeys[0] as Buffer)).toBe(false);
			expect(a.config.layers[0]?.layerId).not.toBe(b.config.layers[0]?.layerId);
		} finally {
			await a.close();
			await b.close();
		}
	});
});
