/**
 * Frozen test vectors for format version 1: fixed keys, ids and disk contents in, exact bytes out.
 * `npm run vectors` rewrites test/vectors/v1.json from this; test/vectors.test.ts checks that the
 * code still produces those bytes and still reads them. Changing v1.json is a format change.
 */
import { createCipheriv, createHash } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { thumbprint } from "../../src/crypto/image-key.js";
import { LayerCipher } from "../../src/crypto/layer-cipher.js";
import { HEADER_SIZE, TRAILER_SIZE } from "../../src/format/constants.js";
import { encodeExtents } from "../../src/format/extents.js";
import { sealLayer } from "../../src/seal/layer-writer.js";
import { sealDisk } from "../../src/seal/seal-disk.js";
import { BufferSource } from "../../src/storage/source.js";

const hex = (b: Buffer) => b.toString("hex");
const fixed = (byte: number, n = 32) => Buffer.alloc(n, byte);
const stream = (seed: string, n: number) =>
	createCipheriv(
		"aes-256-ctr",
		createHash("sha256").update(seed).digest(),
		Buffer.alloc(16),
	).update(Buffer.alloc(n));

/** 5 chunks of 4 KiB + 100 bytes: random, zero, text, random, partial text. */
export function vectorDisk(): Buffer {
	const cs = 4096;
	const d = Buffer.alloc(5 * cs + 100);
	stream("chunk0", cs).copy(d, 0);
	Buffer.from("dadi test vector ".repeat(241)).copy(d, 2 * cs);
	stream("chunk3", cs).copy(d, 3 * cs);
	Buffer.from("tail ".repeat(200)).copy(d, 5 * cs);
	return d;
}

/** The same disk with chunk 0 zeroed, chunk 2 changed and chunk 4 written. */
export function vectorDiskUpper(): Buffer {
	const d = Buffer.from(vectorDisk());
	d.fill(0, 0, 4096);
	d.write("changed", 2 * 4096 + 10);
	stream("chunk4", 4096).copy(d, 4 * 4096);
	return d;
}

export interface LayerVector {
	name: string;
	chunkSize: number;
	compression: "none" | "zstd";
	layerKey: string;
	layerId: string;
	disk: string; // base64
	lowerDisk: string | null; // base64
	header: string;
	trailer: string;
	index: string; // plaintext extents, hex
	chunk0Aad: string;
	blob: string; // base64
	blobSha256: string;
}

export interface ImageVector {
	imageKey: string;
	kid: string;
	sealId: string;
	manifestDigest: string;
	config: string;
	manifest: string;
}

export interface Vectors {
	format: 1;
	layers: LayerVector[];
	image: ImageVector;
}

async function layerVector(
	name: string,
	disk: Buffer,
	lower: Buffer | null,
	compression: "none" | "zstd",
	keyByte: number,
	idByte: number,
): Promise<LayerVector> {
	const chunkSize = 4096;
	const parts: Buffer[] = [];
	const layerKey = fixed(keyByte);
	const layerId = fixed(idByte);
	const r = await sealLayer({
		disk: new BufferSource("vector", disk),
		lower: lower
			? async (first, n) =>
					Array.from({ length: n }, (_, k) => {
						const c = Buffer.alloc(chunkSize);
						lower.copy(
							c,
							0,
							(first + k) * chunkSize,
							Math.min(lower.length, (first + k + 1) * chunkSize),
						);
						return c.equals(Buffer.alloc(chunkSize)) ? null : c;
					})
			: undefined,
		chunkSize,
		compression,
		layerKey,
		layerId,
		sink: { write: async (b) => void parts.push(b) },
	});
	const blob = Buffer.concat(parts);
	return {
		name,
		chunkSize,
		compression,
		layerKey: hex(layerKey),
		layerId: hex(layerId),
		disk: disk.toString("base64"),
		lowerDisk: lower ? lower.toString("base64") : null,
		header: hex(blob.subarray(0, HEADER_SIZE)),
		trailer: hex(blob.subarray(blob.length - TRAILER_SIZE)),
		index: hex(encodeExtents(r.extents)),
		chunk0Aad: hex(
			Buffer.from(
				new LayerCipher(layerKey, layerId, chunkSize).chunkAad(
					0,
					chunkSize + 16,
					0,
				),
			),
		),
		blob: blob.toString("base64"),
		blobSha256: createHash("sha256").update(blob).digest("hex"),
	};
}

async function imageVector(): Promise<ImageVector> {
	const dir = await mkdtemp(join(tmpdir(), "dadi-vectors-"));
	try {
		const key = fixed(0x11);
		const imageKey = { key, kid: thumbprint(key) };
		const sealId = fixed(0x22, 16);
		await writeFile(join(dir, "base.img"), vectorDisk());
		await writeFile(join(dir, "upper.img"), vectorDiskUpper());
		const dest = {
			transport: "oci" as const,
			dir: join(dir, "oci"),
			tag: "base",
		};
		await sealDisk({
			disk: join(dir, "base.img"),
			dest,
			key: imageKey,
			chunkSize: 4096,
			compression: "zstd",
			sealId,
			imageConfig: Buffer.from('{"config":{"Env":["SECRET=1"]}}'),
		});
		const r = await sealDisk({
			disk: join(dir, "upper.img"),
			dest: { ...dest, tag: "upper" },
			key: imageKey,
			compression: "none",
			sealId: fixed(0x33, 16),
			base: { ref: dest, key: imageKey },
		});
		const blob = (d: string) =>
			readFile(join(dir, "oci/blobs/sha256", d.slice(7)), "utf8");
		const manifest = await blob(r.manifest.digest);
		const config = await blob(JSON.parse(manifest).config.digest);
		return {
			imageKey: hex(key),
			kid: imageKey.kid,
			sealId: hex(sealId),
			manifestDigest: r.manifest.digest,
			config,
			manifest,
		};
	} finally {
		await rm(dir, { recursive: true, force: true });
	}
}

export async function buildVectors(): Promise<Vectors> {
	const base = vectorDisk();
	const upper = vectorDiskUpper();
	return {
		format: 1,
		layers: [
			await layerVector("base-raw", base, null, "none", 0x01, 0x02),
			await layerVector("base-zstd", base, null, "zstd", 0x03, 0x04),
			await layerVector("upper-over-base", upper, base, "none", 0x05, 0x06),
		],
		image: await imageVector(),
	};
}
