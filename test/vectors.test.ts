import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import {
	checkConfigMac,
	decryptImageConfig,
} from "../src/crypto/config-auth.js";
import { unwrapLayerKey } from "../src/crypto/keywrap.js";
import { parseSealedConfig } from "../src/oci/sealed-config.js";
import { SealedLayer } from "../src/storage/sealed-layer.js";
import { BufferSource } from "../src/storage/source.js";
import { VirtualDisk } from "../src/storage/virtual-disk.js";
import { buildVectors, type Vectors } from "./vectors/build.js";

const frozen = JSON.parse(
	await readFile(new URL("./vectors/v1.json", import.meta.url), "utf8"),
) as Vectors;

async function open(v: Vectors["layers"][number]): Promise<SealedLayer> {
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

describe("format v1 frozen vectors", () => {
	it("the writer still produces exactly the frozen bytes", async () => {
		const now = await buildVectors();
		for (const [i, v] of now.layers.entries()) {
			const f = frozen.layers[i] as Vectors["layers"][number];
			expect(v.header, `${v.name} header`).toBe(f.header);
			expect(v.trailer, `${v.name} trailer`).toBe(f.trailer);
			expect(v.index, `${v.name} index`).toBe(f.index);
			expect(v.chunk0Aad, `${v.name} chunk AAD`).toBe(f.chunk0Aad);
			expect(v.blobSha256, `${v.name} blob`).toBe(f.blobSha256);
		}
		expect(now.image).toEqual(frozen.image);
	});

	it("the reader still reads the frozen layers", async () => {
		for (const v of frozen.layers.filter((x) => x.lowerDisk === null)) {
			const disk = new VirtualDisk([await open(v)]);
			const plain = Buffer.from(v.disk, "base64");
			expect((await disk.read(0, disk.size)).equals(plain), v.name).toBe(true);
		}
		const [base, , upper] = frozen.layers as [
			Vectors["layers"][number],
			unknown,
			Vectors["layers"][number],
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

	it("the frozen image config authenticates and decrypts under the frozen image key", () => {
		const key = Buffer.from(frozen.image.imageKey, "hex");
		const config = parseSealedConfig(JSON.parse(frozen.image.config));
		checkConfigMac(key, config);
		expect(
			decryptImageConfig(
				key,
				config.sealId,
				config.imageConfig as string,
			).toString(),
		).toBe('{"config":{"Env":["SECRET=1"]}}');
		for (const l of config.layers)
			expect(
				unwrapLayerKey(
					key,
					Buffer.from(l.layerId, "hex"),
					Buffer.from(l.wrappedKey, "base64url"),
				),
			).toHaveLength(32);
	});
});
