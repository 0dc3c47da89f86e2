/**
 * Opening is not a chain of round trips: openLayers fetches every layer's header, trailer and index
 * at once, and VirtualDisk.read reads the runs of one read (several layers) at once. Checked on a
 * real three-layer sealed image with sources that count reads in flight; the error and close
 * semantics stay those of the sequential open.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ImageKey, parseImageKey } from "../src/crypto/image-key.js";
import { DadiError } from "../src/errors.js";
import {
	loadSealedImage,
	openLayers,
	type SealedImageRef,
} from "../src/image/open-image.js";
import type { OciLayout } from "../src/oci/layout.js";
import { parseReference } from "../src/oci/reference.js";
import type { RangeSource } from "../src/storage/source.js";
import { BIN, cleanupTempDirs, must, runCli, tempDir } from "./helpers.js";
import { buildTestImage } from "./image-fixtures.js";

let image: SealedImageRef;
let key: ImageKey;

beforeAll(async () => {
	const dir = await tempDir();
	const img = await buildTestImage(dir);
	const keyPath = join(dir, "k.jwk");
	await must(runCli(BIN.seal, ["keygen", "--out", keyPath]));
	const layout = join(dir, "sealed");
	await must(
		runCli(BIN.seal, [
			"seal",
			`oci:${img}:v3`,
			`oci:${layout}:t`,
			"--key",
			keyPath,
			"--quiet",
		]),
	);
	key = parseImageKey(await readFile(keyPath, "utf8"), keyPath);
	const ref = parseReference(`oci:${layout}:t`);
	image = await loadSealedImage(ref);
}, 180_000);

afterAll(cleanupTempDirs);

/** Sources whose reads take 20 ms and are counted while in flight. */
function counting() {
	const c = { now: 0, max: 0, closed: 0 };
	const wrap = (s: RangeSource): RangeSource => ({
		name: s.name,
		size: s.size,
		read: async (o, n) => {
			c.now++;
			c.max = Math.max(c.max, c.now);
			try {
				await new Promise((r) => setTimeout(r, 20));
				return await s.read(o, n);
			} finally {
				c.now--;
			}
		},
		close: async () => {
			c.closed++;
			await s.close();
		},
	});
	return { c, wrap };
}

describe("concurrent open and reads", () => {
	it("fetches every layer's metadata at once, and reads the runs of one read at once", async () => {
		expect(image.config.layers.length).toBe(3);
		const layout = image.layout as OciLayout;
		const { c, wrap } = counting();
		const opened = await openLayers(
			image,
			key,
			async (desc, i) => wrap(await layout.openBlob(desc, `layer ${i}`)),
			async () => {},
		);
		try {
			expect(c.max).toBe(3); // one read per layer in flight together
			// a read spanning chunks of several layers: its runs are read together
			const d = opened.disk;
			const layersSeen = new Set<number>();
			let end = 0;
			for (; end < d.chunkCount && layersSeen.size < 3; end++) {
				const l = d.layerOf(end);
				if (l >= 0) layersSeen.add(l);
			}
			expect(layersSeen.size).toBeGreaterThan(1);
			c.max = 0;
			await d.read(0, end * d.chunkSize);
			expect(c.max).toBeGreaterThan(1);
		} finally {
			await opened.close();
		}
		expect(c.closed).toBe(3);
	});

	it("reports the first failing layer in layer order and closes every source it opened", async () => {
		const layout = image.layout as OciLayout;
		const { c, wrap } = counting();
		const e = await openLayers(
			image,
			key,
			async (desc, i) => {
				if (i === 2) {
					await new Promise((r) => setTimeout(r, 5));
					throw new DadiError("NETWORK", "layer 2 unreachable");
				}
				const s = wrap(await layout.openBlob(desc, `layer ${i}`));
				if (i === 1)
					return {
						...s,
						read: async () => {
							await new Promise((r) => setTimeout(r, 50));
							throw new DadiError("FORMAT_INVALID", "layer 1 garbled");
						},
					};
				return s;
			},
			async () => {},
		).catch((x: unknown) => x);
		expect(e).toBeInstanceOf(DadiError);
		expect((e as DadiError).message).toBe("layer 1 garbled");
		expect(c.closed).toBe(2); // layers 0 and 1 were opened; layer 2's source never was
	});
});
