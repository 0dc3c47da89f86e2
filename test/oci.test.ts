import { mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import { OciLayout } from "../src/oci/layout.js";
import { parseSealedManifest } from "../src/oci/manifest.js";
import { parseReference } from "../src/oci/reference.js";
import { parseSealedConfig } from "../src/oci/sealed-config.js";
import { type FinishOptions, ImageWriter } from "../src/seal/image-writer.js";
import { sealDisk } from "../src/seal/seal-disk.js";
import { cleanupTempDirs, tempDir, writeKey } from "./helpers.js";

afterAll(cleanupTempDirs);

const codeOf = (fn: () => unknown) => {
	try {
		fn();
		return "ok";
	} catch (e) {
		if (e instanceof DadiError) return e.code;
		throw e;
	}
};

describe("references", () => {
	it("parses the transports", () => {
		expect(parseReference("oci:/a/b:v1")).toEqual({
			transport: "oci",
			dir: "/a/b",
			tag: "v1",
		});
		expect(parseReference("oci:/a/b")).toEqual({
			transport: "oci",
			dir: "/a/b",
		});
		const d = `sha256:${"a".repeat(64)}`;
		expect(parseReference(`oci:/a/b@${d}`)).toEqual({
			transport: "oci",
			dir: "/a/b",
			digest: d,
		});
		expect(parseReference("raw:/x/disk.img")).toEqual({
			transport: "raw",
			path: "/x/disk.img",
		});
	});

	it("refuses malformed digests instead of reading them as tags", () => {
		expect(codeOf(() => parseReference("oci:d@sha256:abc"))).toBe("USAGE");
		expect(codeOf(() => parseReference("oci:d:bad/tag"))).toBe("USAGE");
		expect(codeOf(() => parseReference("ftp://x"))).toBe("USAGE");
		expect(codeOf(() => parseReference("nocolon"))).toBe("USAGE");
	});

	it("never crashes on arbitrary text (property)", () => {
		fc.assert(
			fc.property(fc.string(), (t) => {
				expect(codeOf(() => parseReference(t))).toMatch(/^(ok|USAGE)$/);
			}),
			{ numRuns: 2000 },
		);
	});
});

describe("sealed config parser", () => {
	it("never crashes on arbitrary JSON (property)", () => {
		fc.assert(
			fc.property(fc.jsonValue(), (v) => {
				expect(codeOf(() => parseSealedConfig(v))).toMatch(
					/^(LAYOUT_INVALID|FORMAT_UNSUPPORTED)$/,
				);
			}),
			{ numRuns: 2000 },
		);
	});
});

describe("manifest parser", () => {
	it("never crashes on arbitrary JSON (property)", () => {
		fc.assert(
			fc.property(fc.jsonValue(), (v) => {
				expect(codeOf(() => parseSealedManifest(v, "m"))).toMatch(
					/^(LAYOUT_INVALID|INPUT_INVALID|FORMAT_UNSUPPORTED)$/,
				);
			}),
			{ numRuns: 2000 },
		);
	});

	it("values whose String() throws are reported, not crashed on", () => {
		const hostile = { toString: [] };
		const cfg = {
			mediaType: "application/vnd.oci.image.config.v1+json",
			digest: hostile,
			size: 1,
		};
		expect(
			codeOf(() => parseSealedManifest({ schemaVersion: 2, config: cfg }, "m")),
		).toBe("LAYOUT_INVALID");
		expect(
			codeOf(() =>
				parseSealedManifest({ schemaVersion: 2, mediaType: hostile }, "m"),
			),
		).toBe("LAYOUT_INVALID");
		expect(codeOf(() => parseSealedConfig({ schemaVersion: hostile }))).toBe(
			"FORMAT_UNSUPPORTED",
		);
	});
});

describe("layouts", () => {
	it("the writer refuses a platform or labels a reader would refuse (INPUT_INVALID), and moves no tag", async () => {
		const dir = await tempDir();
		const { key } = await writeKey(dir);
		await writeFile(join(dir, "d.img"), "x");
		const cases: Partial<FinishOptions>[] = [
			{ platform: { os: "linux", architecture: "amd 64" } },
			{
				platform: { os: "linux", architecture: "amd64" },
				publicLabels: Object.fromEntries(
					Array.from({ length: 1025 }, (_, i) => [`l${i}`, "v"]),
				),
			},
		];
		for (const c of cases) {
			const w = await ImageWriter.start({ destDir: join(dir, "out"), key });
			try {
				await w.addDisk(join(dir, "d.img"));
				await expect(
					w.finish({
						tag: "t",
						fsType: "raw",
						platform: { os: "linux", architecture: "amd64" },
						...c,
					}),
				).rejects.toMatchObject({ code: "INPUT_INVALID" });
			} finally {
				await w.close();
			}
		}
		const index = JSON.parse(
			await readFile(join(dir, "out", "index.json"), "utf8"),
		);
		expect(index.manifests).toEqual([]);
	});

	it("a config a reader would refuse as too large is not written (INPUT_INVALID), and no tag moves", async () => {
		const dir = await tempDir();
		const { key } = await writeKey(dir);
		await writeFile(join(dir, "d.img"), "x");
		await expect(
			sealDisk({
				disk: join(dir, "d.img"),
				dest: { transport: "oci", dir: join(dir, "out"), tag: "big" },
				key,
				imageConfig: Buffer.alloc(13 << 20, 0x61),
			}),
		).rejects.toMatchObject({ code: "INPUT_INVALID" });
		const index = JSON.parse(
			await readFile(join(dir, "out", "index.json"), "utf8"),
		);
		expect(index.manifests).toEqual([]);
	});

	it("refuses to turn a directory with an index.json but no oci-layout into a layout", async () => {
		const dir = await tempDir();
		await writeFile(join(dir, "index.json"), '{"precious":true}');
		await expect(OciLayout.openOrCreate(dir)).rejects.toMatchObject({
			code: "LAYOUT_INVALID",
		});
	});

	it("a seal whose disk is missing, or whose destination names a digest, creates nothing", async () => {
		const dir = await tempDir();
		const { key } = await writeKey(dir);
		await expect(
			sealDisk({
				disk: join(dir, "missing.img"),
				dest: { transport: "oci", dir: join(dir, "out") },
				key,
			}),
		).rejects.toMatchObject({
			code: "INPUT_NOT_FOUND",
		});
		await expect(stat(join(dir, "out"))).rejects.toThrow();
		await writeFile(join(dir, "d.img"), "x");
		await expect(
			sealDisk({
				disk: join(dir, "d.img"),
				dest: {
					transport: "oci",
					dir: join(dir, "out"),
					digest: `sha256:${"b".repeat(64)}`,
				},
				key,
			}),
		).rejects.toMatchObject({ code: "USAGE" });
		await mkdir(join(dir, "adir"));
		await expect(
			sealDisk({
				disk: join(dir, "adir"),
				dest: { transport: "oci", dir: join(dir, "out") },
				key,
			}),
		).rejects.toMatchObject({
			code: "INPUT_INVALID",
		});
		await expect(stat(join(dir, "out"))).rejects.toThrow();
	});
});
