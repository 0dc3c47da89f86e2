import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { TAG_SIZE } from "../src/format/constants.js";
import { exportDisk } from "../src/image/export.js";
import { openSealedImage } from "../src/image/open-image.js";
import {
	cleanupTempDirs,
	prng,
	sealInto,
	tempDir,
	texty,
	writeDisk,
	writeKey,
} from "./helpers.js";

afterAll(cleanupTempDirs);

async function exportOf(
	dir: string,
	tag: string,
	key: Awaited<ReturnType<typeof writeKey>>["key"],
	out: string,
) {
	const img = await openSealedImage({ transport: "oci", dir, tag }, key);
	try {
		const r = await exportDisk(img.disk, out);
		return { r, bytes: await readFile(out), img };
	} finally {
		await img.close();
	}
}

describe("seal → export round trip", () => {
	for (const chunkSize of [4096, 65536, 1 << 20]) {
		for (const compression of ["none", "zstd"] as const) {
			it(`random + sparse image, odd size, ${chunkSize / 1024} KiB chunks, ${compression}`, async () => {
				const dir = await tempDir();
				const { key } = await writeKey(dir);
				const size = 5 * (1 << 20) + 12_345; // not a multiple of any chunk size
				const image = await writeDisk(join(dir, "disk.img"), size, [
					{ at: 0, bytes: prng("a", 300_000) },
					{ at: 1 << 20, bytes: texty("b", 700_000) },
					{ at: 3 * (1 << 20) + 17, bytes: prng("c", 5000) }, // unaligned
					{ at: size - 4000, bytes: texty("d", 4000) }, // partial last chunk
				]);
				const sealed = await sealInto(
					join(dir, "disk.img"),
					join(dir, "oci"),
					"v1",
					key,
					{ chunkSize, compression },
				);
				const { r, bytes } = await exportOf(
					join(dir, "oci"),
					"v1",
					key,
					join(dir, "out.img"),
				);
				expect(bytes.equals(image)).toBe(true);
				expect(r.bytes).toBe(size);
				// holes are not stored
				expect(sealed.layer.storedChunks).toBeLessThan(
					Math.ceil(size / chunkSize),
				);
				if (compression === "zstd")
					expect(sealed.layer.size).toBeLessThan(300_000 + 700_000);
			});
		}
	}

	it("an all-zero image stores no chunk and exports as zeros", async () => {
		const dir = await tempDir();
		const { key } = await writeKey(dir);
		const image = await writeDisk(join(dir, "z.img"), 3 << 20, []);
		const sealed = await sealInto(
			join(dir, "z.img"),
			join(dir, "oci"),
			"z",
			key,
		);
		expect(sealed.layer.storedChunks).toBe(0);
		const { bytes } = await exportOf(
			join(dir, "oci"),
			"z",
			key,
			join(dir, "out.img"),
		);
		expect(bytes.equals(image)).toBe(true);
		// and the output is sparse
		expect((await stat(join(dir, "out.img"))).blocks * 512).toBeLessThan(
			1 << 20,
		);
	});

	it("a one-byte image round-trips", async () => {
		const dir = await tempDir();
		const { key } = await writeKey(dir);
		const image = await writeDisk(join(dir, "one.img"), 1, [
			{ at: 0, bytes: Buffer.from([0x42]) },
		]);
		await sealInto(join(dir, "one.img"), join(dir, "oci"), "one", key, {
			chunkSize: 4096,
		});
		const { bytes } = await exportOf(
			join(dir, "oci"),
			"one",
			key,
			join(dir, "out.img"),
		);
		expect(bytes.equals(image)).toBe(true);
	});
});

describe("layer stacks", () => {
	it("base + modified disk exports as the modified disk; the upper layer stores only what changed", async () => {
		const dir = await tempDir();
		const { key } = await writeKey(dir);
		const cs = 65536;
		const size = 8 << 20;
		const base = await writeDisk(join(dir, "base.img"), size, [
			{ at: 0, bytes: prng("base", size) },
		]);
		// change 10 chunks: 6 rewritten, 2 zeroed, 2 partially changed (one byte each)
		const mod = Buffer.from(base);
		for (const c of [3, 4, 5, 40, 41, 100]) prng(`m${c}`, cs).copy(mod, c * cs);
		mod.fill(0, 60 * cs, 62 * cs);
		mod[70 * cs + 5] = (mod[70 * cs + 5] as number) ^ 0xff;
		mod[127 * cs + cs - 1] = (mod[127 * cs + cs - 1] as number) ^ 0xff;
		await writeDisk(join(dir, "mod.img"), size, [{ at: 0, bytes: mod }]);
		const oci = join(dir, "oci");
		const s1 = await sealInto(join(dir, "base.img"), oci, "v1", key, {
			chunkSize: cs,
			compression: "none",
		});
		const s2 = await sealInto(join(dir, "mod.img"), oci, "v2", key, {
			base: "v1",
		});
		expect(s2.config.layers).toHaveLength(2);
		expect(s2.config.layers[0]?.digest).toBe(s1.layer.digest); // the base layer is reused as is
		expect(s2.layer.storedChunks).toBe(8);
		expect(s2.layer.zeroChunks).toBe(2);
		// stored bytes proportional to the change: 8 chunks plus fixed overhead
		expect(s2.layer.size).toBeLessThan(8 * (cs + TAG_SIZE) + 1024);
		expect(s2.layer.size).toBeGreaterThanOrEqual(8 * (cs + TAG_SIZE));
		const { bytes, r } = await exportOf(oci, "v2", key, join(dir, "out.img"));
		expect(bytes.equals(mod)).toBe(true);
		expect(r.shadowedChunks).toBe(10);
		// the base tag still exports the base
		const { bytes: b1 } = await exportOf(oci, "v1", key, join(dir, "out1.img"));
		expect(b1.equals(base)).toBe(true);
	});

	it("an upper layer may grow or shrink the disk", async () => {
		const dir = await tempDir();
		const { key } = await writeKey(dir);
		const oci = join(dir, "oci");
		const a = await writeDisk(join(dir, "a.img"), 1_000_000, [
			{ at: 0, bytes: prng("a", 1_000_000) },
		]);
		const grown = Buffer.concat([a, texty("g", 500_000)]);
		await writeDisk(join(dir, "b.img"), grown.length, [
			{ at: 0, bytes: grown },
		]);
		const shrunk = a.subarray(0, 300_001);
		await writeDisk(join(dir, "c.img"), shrunk.length, [
			{ at: 0, bytes: shrunk },
		]);
		await sealInto(join(dir, "a.img"), oci, "a", key, { chunkSize: 16384 });
		const sb = await sealInto(join(dir, "b.img"), oci, "b", key, { base: "a" });
		expect(sb.layer.storedChunks).toBeLessThanOrEqual(
			Math.ceil(500_000 / 16384) + 1,
		);
		const sc = await sealInto(join(dir, "c.img"), oci, "c", key, { base: "b" });
		expect(sc.config.layers).toHaveLength(3);
		expect(
			(await exportOf(oci, "b", key, join(dir, "ob"))).bytes.equals(grown),
		).toBe(true);
		expect(
			(await exportOf(oci, "c", key, join(dir, "oc"))).bytes.equals(shrunk),
		).toBe(true);
	});

	it("a layer that shrinks the disk hides lower data for good, even when a later layer grows it back", async () => {
		const dir = await tempDir();
		const { key } = await writeKey(dir);
		const oci = join(dir, "oci");
		const v0 = prng("v0", 4097);
		const v1 = v0.subarray(0, 1);
		const v2 = Buffer.concat([v1, Buffer.alloc(4096)]);
		for (const [i, d] of [v0, v1, v2].entries())
			await writeDisk(join(dir, `${i}.img`), d.length, [{ at: 0, bytes: d }]);
		await sealInto(join(dir, "0.img"), oci, "v0", key, {
			chunkSize: 4096,
			compression: "none",
		});
		await sealInto(join(dir, "1.img"), oci, "v1", key, { base: "v0" });
		await sealInto(join(dir, "2.img"), oci, "v2", key, { base: "v1" });
		expect(
			(await exportOf(oci, "v2", key, join(dir, "out.img"))).bytes.equals(v2),
		).toBe(true);
	});

	it("random stacks of random edits export exactly (property)", async () => {
		const dir = await tempDir();
		const { key } = await writeKey(dir);
		let run = 0;
		await fc.assert(
			fc.asyncProperty(
				fc.constantFrom(4096, 8192, 65536),
				fc.constantFrom("none" as const, "zstd" as const),
				fc.array(
					fc.record({
						size: fc.integer({ min: 1, max: 300_000 }),
						edits: fc.array(
							fc.record({
								at: fc.nat(300_000),
								len: fc.integer({ min: 1, max: 20_000 }),
								kind: fc.constantFrom("rand", "zero", "text"),
							}),
							{
								maxLength: 6,
							},
						),
					}),
					{ minLength: 1, maxLength: 4 },
				),
				async (chunkSize, compression, versions) => {
					const oci = join(dir, `oci${run}`);
					let disk = Buffer.alloc(0);
					let prev: string | undefined;
					for (const [v, spec] of versions.entries()) {
						const next = Buffer.alloc(spec.size);
						disk.copy(next, 0, 0, Math.min(disk.length, spec.size));
						for (const e of spec.edits) {
							const at = e.at % spec.size;
							const len = Math.min(e.len, spec.size - at);
							const bytes =
								e.kind === "zero"
									? Buffer.alloc(len)
									: e.kind === "rand"
										? prng(`${run}/${v}/${at}`, len)
										: texty(`${run}/${v}`, len);
							bytes.copy(next, at);
						}
						disk = next;
						const path = join(dir, `d${run}-${v}.img`);
						await writeDisk(path, disk.length, [{ at: 0, bytes: disk }]);
						await sealInto(path, oci, `v${v}`, key, {
							chunkSize,
							compression,
							base: prev,
						});
						prev = `v${v}`;
					}
					const { bytes } = await exportOf(
						oci,
						prev as string,
						key,
						join(dir, `out${run++}.img`),
					);
					expect(bytes.equals(disk)).toBe(true);
				},
			),
			{ numRuns: 60 },
		);
	});

	it("compressed chunks with different stored lengths are still read in large runs", async () => {
		const dir = await tempDir();
		const { key } = await writeKey(dir);
		const size = 8 << 20;
		const image = await writeDisk(join(dir, "t.img"), size, [
			{ at: 0, bytes: texty("runs", size) },
		]);
		await sealInto(join(dir, "t.img"), join(dir, "oci"), "t", key, {
			chunkSize: 4096,
			compression: "zstd",
		});
		const img = await openSealedImage(
			{ transport: "oci", dir: join(dir, "oci"), tag: "t" },
			key,
		);
		try {
			const layer = img.disk.layers[0];
			expect(layer?.extents.length).toBeGreaterThan(500); // nearly one extent per chunk
			const runs = [...img.disk.runs(0, img.disk.chunkCount)];
			const stored = layer?.trailer.dataLength ?? 0;
			expect(runs.length).toBeLessThanOrEqual(
				Math.ceil(stored / (4 << 20)) + 1,
			);
			let next = 0;
			for (const r of runs) {
				expect(r.first).toBe(next);
				next += r.count;
			}
			expect(next).toBe(img.disk.chunkCount);
			// small run limits split runs but keep every chunk, in order
			const small = [...img.disk.runs(0, img.disk.chunkCount, 10_000)];
			expect(small.length).toBeGreaterThan(runs.length);
			expect(small.reduce((n, r) => n + r.count, 0)).toBe(img.disk.chunkCount);
			const { bytes } = await exportOf(
				join(dir, "oci"),
				"t",
				key,
				join(dir, "out.img"),
			);
			expect(bytes.equals(image)).toBe(true);
		} finally {
			await img.close();
		}
	});

	it("random reads of the virtual disk return the plaintext", async () => {
		const dir = await tempDir();
		const { key } = await writeKey(dir);
		const size = 2_000_000;
		const image = await writeDisk(join(dir, "r.img"), size, [
			{ at: 0, bytes: prng("r", 700_000) },
			{ at: 1_200_000, bytes: texty("t", 500_000) },
		]);
		await sealInto(join(dir, "r.img"), join(dir, "oci"), "r", key, {
			chunkSize: 8192,
		});
		const img = await openSealedImage(
			{ transport: "oci", dir: join(dir, "oci"), tag: "r" },
			key,
		);
		try {
			await fc.assert(
				fc.asyncProperty(
					fc.nat(size - 1),
					fc.nat(100_000),
					async (off, len) => {
						const n = Math.min(len, size - off);
						expect(
							(await img.disk.read(off, n)).equals(
								image.subarray(off, off + n),
							),
						).toBe(true);
					},
				),
				{ numRuns: 200 },
			);
			await expect(img.disk.read(size - 1, 2)).rejects.toMatchObject({
				code: "OUT_OF_RANGE",
			});
			await expect(img.disk.read(-1, 1)).rejects.toMatchObject({
				code: "OUT_OF_RANGE",
			});
		} finally {
			await img.close();
		}
	});
});
