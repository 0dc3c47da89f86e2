/**
 * Frozen test vectors for format version 2: fixed keys, ids and disk contents in, exact bytes out.
 * `npm run vectors` writes test/vectors/v2.json from this; test/vectors.test.ts checks that the
 * code still produces those bytes and still reads them. Changing v2.json is a format change.
 * (v1.json, the vectors of format v1, stays as it was frozen: the layer vectors in it are still
 * the layer encoding, the image in it is what this build refuses.)
 */
import { createCipheriv, createHash } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sealRecord } from "../../src/crypto/config-auth.js";
import { thumbprint } from "../../src/crypto/image-key.js";
import { LayerCipher } from "../../src/crypto/layer-cipher.js";
import { HEADER_SIZE, TRAILER_SIZE } from "../../src/format/constants.js";
import { encodeExtents } from "../../src/format/extents.js";
import { fsUuid } from "../../src/seal/fs-identity.js";
import { ImageWriter } from "../../src/seal/image-writer.js";
import {
	layerMaterial,
	lowerIdentity,
	reproducibleLayer,
} from "../../src/seal/keys.js";
import { sealLayer } from "../../src/seal/layer-writer.js";
import { sealDisk } from "../../src/seal/seal-disk.js";
import {
	DEFAULT_WRITER_POLICY,
	writerPolicyId,
} from "../../src/seal/writer-policy.js";
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
	/** The public OCI image config, with the sealed config in its "io.dadi.sealed" member. */
	config: string;
	manifest: string;
}

/** The reproducible-mode derivation (format §5.9). */
export interface DerivationVector {
	imageKey: string;
	sealId: string;
	position: number;
	chunkSize: number;
	codec: string;
	writerPolicy: string;
	lowerLayers: { layerId: string; digest: string }[];
	lower: string;
	diskSha256: string;
	material: string;
	layerKey: string;
	layerId: string;
}

/** A sealed record (format §5.11): padded, then SIV-encrypted. */
export interface RecordVector {
	imageKey: string;
	sealId: string;
	kind: "image-config" | "seal-params";
	plaintext: string; // utf8
	sealed: string; // base64url
}

/** The keyed file-system UUID of a container image (format §8). */
export interface FsIdentityVector {
	imageKey: string;
	config: string; // utf8
	uuid: string;
}

export interface Vectors {
	format: 2;
	layers: LayerVector[];
	derivations: DerivationVector[];
	records: RecordVector[];
	fsIdentity: FsIdentityVector;
	/** Two raw layers (the upper over the lower), with an image config. */
	image: ImageVector;
	/** One layer as a container image has it: public labels, a variant, seal parameters. */
	containerImage: ImageVector;
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
			imageConfig: Buffer.from(VECTOR_IMAGE_CONFIG),
			platform: { os: "linux", architecture: "amd64" },
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

function derivationVector(
	position: number,
	lowerLayers: { layerId: string; digest: string }[],
	disk: Buffer,
): DerivationVector {
	const imageKey = fixed(0x11);
	const sealId = fixed(0x44, 16);
	const codec = "none";
	const writerPolicy = writerPolicyId(DEFAULT_WRITER_POLICY);
	const lower = lowerIdentity(lowerLayers);
	const diskDigest = createHash("sha256").update(disk).digest();
	const material = layerMaterial({
		position,
		chunkSize: 4096,
		codec,
		policy: writerPolicy,
		lower,
		diskDigest,
	});
	const { layerKey, layerId } = reproducibleLayer(imageKey, sealId, material);
	return {
		imageKey: hex(imageKey),
		sealId: hex(sealId),
		position,
		chunkSize: 4096,
		codec,
		writerPolicy,
		lowerLayers,
		lower: hex(lower),
		diskSha256: hex(diskDigest),
		material: hex(material),
		layerKey: hex(layerKey),
		layerId: hex(layerId),
	};
}

function recordVector(
	kind: RecordVector["kind"],
	plaintext: string,
): RecordVector {
	const imageKey = fixed(0x11);
	const sealId = hex(fixed(0x22, 16));
	return {
		imageKey: hex(imageKey),
		sealId,
		kind,
		plaintext,
		sealed: sealRecord(imageKey, kind, sealId, Buffer.from(plaintext)),
	};
}

export const VECTOR_IMAGE_CONFIG =
	'{"architecture":"amd64","os":"linux","config":{"Env":["SECRET=1"]},"rootfs":{"type":"layers","diff_ids":[]}}';

export async function buildVectors(): Promise<Vectors> {
	const base = vectorDisk();
	const upper = vectorDiskUpper();
	const fsConfig =
		'{"created":"2024-05-01T12:00:00Z","config":{"Env":["DB_PIN=4711"]}}';
	return {
		format: 2,
		layers: [
			await layerVector("base-raw", base, null, "none", 0x01, 0x02),
			await layerVector("base-zstd", base, null, "zstd", 0x03, 0x04),
			await layerVector("upper-over-base", upper, base, "none", 0x05, 0x06),
		],
		derivations: [
			derivationVector(0, [], base),
			derivationVector(
				1,
				[{ layerId: "02".repeat(32), digest: `sha256:${"ab".repeat(32)}` }],
				upper,
			),
		],
		records: [
			recordVector("image-config", VECTOR_IMAGE_CONFIG),
			recordVector(
				"seal-params",
				`{"fs":{"uuid":"00000000-0000-4000-8000-000000000000","timestamp":946684800,"sizeBytes":41943040,"inodes":1088},"layers":[["sha256:${"cd".repeat(32)}"]]}`,
			),
		],
		fsIdentity: {
			imageKey: hex(fixed(0x11)),
			config: fsConfig,
			uuid: fsUuid(fixed(0x11), Buffer.from(fsConfig)),
		},
		image: await imageVector(),
		containerImage: await containerImageVector(),
	};
}

async function containerImageVector(): Promise<ImageVector> {
	const dir = await mkdtemp(join(tmpdir(), "dadi-vectors-"));
	try {
		const key = fixed(0x55);
		const imageKey = { key, kid: thumbprint(key) };
		const sealId = fixed(0x66, 16);
		await writeFile(join(dir, "disk.img"), vectorDisk());
		const w = await ImageWriter.start({
			destDir: join(dir, "oci"),
			key: imageKey,
			chunkSize: 4096,
			compression: "none",
			sealId,
		});
		try {
			await w.addDisk(join(dir, "disk.img"), undefined, [
				`sha256:${"cd".repeat(32)}`,
				`sha256:${"ef".repeat(32)}`,
			]);
			const { manifest } = await w.finish({
				tag: "ctr",
				fsType: "ext4",
				keyRef: "kbs:///apps/image-key/vector",
				platform: { os: "linux", architecture: "arm64", variant: "v8" },
				publicLabels: {
					"org.opencontainers.image.title": "vector",
					"1": "a key JSON objects put first",
					é: "non-ASCII",
				},
				imageConfig: Buffer.from(VECTOR_IMAGE_CONFIG),
				fs: {
					uuid: "00000000-0000-4000-8000-000000000000",
					timestamp: 946684800,
					sizeBytes: 41943040,
					inodes: 1088,
				},
			});
			const blob = (d: string) =>
				readFile(join(dir, "oci/blobs/sha256", d.slice(7)), "utf8");
			const m = await blob(manifest.digest);
			return {
				imageKey: hex(key),
				kid: imageKey.kid,
				sealId: hex(sealId),
				manifestDigest: manifest.digest,
				config: await blob(JSON.parse(m).config.digest),
				manifest: m,
			};
		} finally {
			await w.close();
		}
	} finally {
		await rm(dir, { recursive: true, force: true });
	}
}
