/** Finding and decompressing the kernel inside a bzImage (src/sandbox/vmlinux.ts), on synthetic images. */
import { execFileSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import {
	bzImagePayload,
	configHasPvh,
	extractVmlinux,
} from "../src/sandbox/vmlinux.js";
import { cleanupTempDirs, prng, tempDir, thrown } from "./helpers.js";

afterAll(cleanupTempDirs);

/** A bzImage-shaped file: setup header (2 setup sectors) then `payload` at payload_offset 100. */
function bzImage(payload: Buffer): Buffer {
	const setupSects = 2;
	const at = (setupSects + 1) * 512 + 100;
	const b = Buffer.alloc(at + payload.length + 4);
	b[0x1f1] = setupSects;
	b.write("HdrS", 0x202, "latin1");
	b.writeUInt16LE(0x20f, 0x206);
	b.writeUInt32LE(100, 0x248);
	b.writeUInt32LE(payload.length, 0x24c);
	payload.copy(b, at);
	return b;
}

const elf = Buffer.concat([
	Buffer.from([0x7f, 0x45, 0x4c, 0x46]),
	prng("vmlinux", 200_000),
]);

describe("vmlinux from a bzImage", () => {
	it("finds and decompresses an xz, zstd or gzip payload", async () => {
		const dir = await tempDir();
		const payloads = {
			xz: execFileSync("xz", ["-c", "--check=crc32"], { input: elf }),
			zstd: execFileSync("zstd", ["-c", "-q"], { input: elf }),
			gzip: gzipSync(elf),
		};
		for (const [codec, payload] of Object.entries(payloads)) {
			const image = bzImage(payload);
			expect(bzImagePayload(image)).toEqual({
				offset: 3 * 512 + 100,
				length: payload.length,
				codec,
			});
			const out = join(dir, `vmlinux.${codec}`);
			await extractVmlinux(image, out);
			expect((await readFile(out)).equals(elf)).toBe(true);
		}
	});

	it("refuses other files with DadiError only (fuzz)", () => {
		expect(thrown(() => bzImagePayload(Buffer.alloc(4096))).code).toBe(
			"FORMAT_INVALID",
		);
		expect(
			thrown(() => bzImagePayload(bzImage(Buffer.from("plain text payload"))))
				.code,
		).toBe("FORMAT_UNSUPPORTED");
		const good = bzImage(gzipSync(elf.subarray(0, 100)));
		fc.assert(
			fc.property(
				fc.array(fc.tuple(fc.nat(0x260), fc.nat(255)), { maxLength: 6 }),
				fc.nat(good.length),
				(edits, len) => {
					const b = Buffer.from(good);
					for (const [at, v] of edits) b[at] = v;
					try {
						bzImagePayload(b.subarray(0, len));
					} catch (e) {
						expect(e).toBeInstanceOf(DadiError);
					}
				},
			),
			{ numRuns: 2000 },
		);
		expect(configHasPvh("CONFIG_X=y\nCONFIG_PVH=y\n")).toBe(true);
		expect(configHasPvh("# CONFIG_PVH is not set\n")).toBe(false);
	});
});
