import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { checkConfigMac, openRecord } from "../src/crypto/config-auth.js";
import { thumbprint } from "../src/crypto/image-key.js";
import { unwrapLayerKey } from "../src/crypto/keywrap.js";
import { DadiError } from "../src/errors.js";
import { loadSealedImage } from "../src/image/open-image.js";
import { sha256Digest } from "../src/oci/digest.js";
import { parseSealedManifest } from "../src/oci/manifest.js";
import { parsePublicConfig } from "../src/oci/public-config.js";
import { parseSealedConfig } from "../src/oci/sealed-config.js";
import { openSealParams } from "../src/seal/seal-params.js";
import { SealedLayer } from "../src/storage/sealed-layer.js";
import { BufferSource } from "../src/storage/source.js";
import { VirtualDisk } from "../src/storage/virtual-disk.js";
import { cleanupTempDirs, tempDir } from "./helpers.js";
import {
	buildVectors,
	type ImageVector,
	type LayerVector,
	VECTOR_IMAGE_CONFIG,
	type Vectors,
} from "./vectors/build.js";

const frozen = JSON.parse(
	await readFile(new URL("./vectors/v2.json", import.meta.url), "utf8"),
) as Vectors;
/** Format v1's vectors, frozen when v1 was: its layers are still the layer encoding; its image is refused. */
const v1 = JSON.parse(
	await readFile(new URL("./vectors/v1.json", import.meta.url), "utf8"),
) as {
	format: 1;
	layers: LayerVector[];
	image: { config: string; manifest: string; manifestDigest: string };
};

async function open(v: LayerVector): Promise<SealedLayer> {
	const blob = Buffer.from(v.blob, "base64");
	return SealedLayer.open(
		new BufferSource(v.name, blob),
		Buffer.from(v.layerKey, "hex"),
		{
			layerId: Buffer.from(v.layerId, "hex"),
			chunkSize: v.chunkSize,
			virtualSize: Buffer.from(v.disk, "base64").length,
			compression: v.compression,
		},
	);
}

function codeOf(fn: () => unknown): string {
	try {
		fn();
		return "ok";
	} catch (e) {
		if (e instanceof DadiError) return `${e.code}: ${e.message}`;
		throw e;
	}
}

describe("format v2 frozen vectors", () => {
	it("the writer still produces exactly the frozen bytes", async () => {
		const now = await buildVectors();
		expect(now.format).toBe(2);
		for (const [i, v] of now.layers.entries()) {
			const f = frozen.layers[i] as LayerVector;
			expect(v.header, `${v.name} header`).toBe(f.header);
			expect(v.trailer, `${v.name} trailer`).toBe(f.trailer);
			expect(v.index, `${v.name} index`).toBe(f.index);
			expect(v.chunk0Aad, `${v.name} chunk AAD`).toBe(f.chunk0Aad);
			expect(v.blobSha256, `${v.name} blob`).toBe(f.blobSha256);
		}
		expect(now.derivations).toEqual(frozen.derivations);
		expect(now.records).toEqual(frozen.records);
		expect(now.fsIdentity).toEqual(frozen.fsIdentity);
		expect(now.image).toEqual(frozen.image);
		expect(now.containerImage).toEqual(frozen.containerImage);
	});

	it("the layer encoding did not change: the v2 layer vectors are byte for byte the v1 ones", () => {
		expect(frozen.layers.map((l) => l.blobSha256)).toEqual(
			v1.layers.map((l) => l.blobSha256),
		);
		expect(frozen.layers.map((l) => l.header)).toEqual(
			v1.layers.map((l) => l.header),
		);
	});

	it("the reader still reads the frozen layers", async () => {
		for (const v of frozen.layers.filter((x) => x.lowerDisk === null)) {
			const disk = new VirtualDisk([await open(v)]);
			const plain = Buffer.from(v.disk, "base64");
			expect((await disk.read(0, disk.size)).equals(plain), v.name).toBe(true);
		}
		const [base, , upper] = frozen.layers as [
			LayerVector,
			unknown,
			LayerVector,
		];
		const stack = new VirtualDisk([await open(base), await open(upper)]);
		expect(
			(await stack.read(0, stack.size)).equals(
				Buffer.from(upper.disk, "base64"),
			),
		).toBe(true);
		// the upper layer holds a zero extent (chunk 0) and only the changed chunks (2, 4)
		const layer = await open(upper);
		expect(layer.zeroChunks).toBe(1);
		expect(layer.storedChunks).toBe(2);
	});

	const checkImage = (v: ImageVector) => {
		const key = Buffer.from(v.imageKey, "hex");
		expect(thumbprint(key)).toBe(v.kid);
		expect(sha256Digest(Buffer.from(v.manifest))).toBe(v.manifestDigest);
		const manifest = parseSealedManifest(JSON.parse(v.manifest), "manifest");
		expect(sha256Digest(Buffer.from(v.config))).toBe(manifest.config.digest);
		const config = parsePublicConfig(Buffer.from(v.config));
		checkConfigMac(key, config);
		expect(
			openRecord(
				key,
				"image-config",
				config.sealId,
				config.imageConfig as string,
			).toString(),
		).toBe(VECTOR_IMAGE_CONFIG);
		for (const l of config.layers)
			expect(
				unwrapLayerKey(
					key,
					Buffer.from(l.layerId, "hex"),
					Buffer.from(l.wrappedKey, "base64url"),
				),
			).toHaveLength(32);
		return { key, config };
	};

	it("the frozen images authenticate and decrypt under their frozen image keys", () => {
		const raw = checkImage(frozen.image);
		expect(raw.config.sealParams).toBeUndefined();
		expect(raw.config.platform).toEqual({ os: "linux", architecture: "amd64" });
		const ctr = checkImage(frozen.containerImage);
		expect(openSealParams(ctr.key, ctr.config)?.layers).toEqual([
			[`sha256:${"cd".repeat(32)}`, `sha256:${"ef".repeat(32)}`],
		]);
		expect(ctr.config.publicLabels?.["1"]).toBe("a key JSON objects put first");
	});

	it("the frozen records open to their plaintexts", () => {
		for (const r of frozen.records)
			expect(
				openRecord(
					Buffer.from(r.imageKey, "hex"),
					r.kind,
					r.sealId,
					r.sealed,
				).toString(),
			).toBe(r.plaintext);
	});
});

describe("format v1", () => {
	it("its manifest and config are refused with FORMAT_UNSUPPORTED and the advice to re-seal", () => {
		expect(
			codeOf(() => parseSealedManifest(JSON.parse(v1.image.manifest), "m")),
		).toMatch(/^FORMAT_UNSUPPORTED: .*format v1.*re-seal/);
		expect(
			codeOf(() => parseSealedConfig(JSON.parse(v1.image.config))),
		).toMatch(/^FORMAT_UNSUPPORTED: .*format v1.*re-seal/);
	});

	it("a layout holding a v1 image is refused when opened, before any key is asked for", async () => {
		const dir = await tempDir();
		try {
			await mkdir(join(dir, "blobs/sha256"), { recursive: true });
			const put = (text: string) => {
				const d = sha256Digest(Buffer.from(text));
				return writeFile(join(dir, "blobs/sha256", d.slice(7)), text).then(
					() => d,
				);
			};
			await put(v1.image.config);
			const md = await put(v1.image.manifest);
			await writeFile(
				join(dir, "oci-layout"),
				'{"imageLayoutVersion":"1.0.0"}',
			);
			await writeFile(
				join(dir, "index.json"),
				JSON.stringify({
					schemaVersion: 2,
					manifests: [
						{
							mediaType: "application/vnd.oci.image.manifest.v1+json",
							digest: md,
							size: Buffer.byteLength(v1.image.manifest),
							annotations: { "org.opencontainers.image.ref.name": "old" },
						},
					],
				}),
			);
			await expect(
				loadSealedImage({ transport: "oci", dir, tag: "old" }),
			).rejects.toMatchObject({
				code: "FORMAT_UNSUPPORTED",
				message: expect.stringMatching(/format v1.*re-seal/),
			});
		} finally {
			await cleanupTempDirs();
		}
	});
});
