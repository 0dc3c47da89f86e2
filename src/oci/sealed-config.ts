/**
 * The sealed image config (media type application/vnd.dadi.image.config.v1+json): everything a
 * reader needs besides the key, plus the original OCI image config encrypted. Public fields are
 * only what a registry could learn from blob sizes anyway. The whole config is authenticated by a
 * MAC under the image key (crypto/config-auth.ts) over `canonicalConfigBytes`, which rebuilds the
 * JSON from the checked fields in a fixed order, so key order or extra whitespace in the stored
 * document cannot change what is authenticated.
 */
import { DadiError } from "../errors.js";
import {
	type CompressionName,
	isPowerOfTwoChunkSize,
	SUITE_AES256GCM_HKDFSHA256,
	SUITE_NAMES,
} from "../format/constants.js";
import { isCanonicalBase64url } from "./base64url.js";
import { checkDigest } from "./digest.js";

export const CONFIG_SCHEMA_VERSION = 1;
export const WRAP_ALG = "HKDF-SHA256+A256KW";
export type FsType = "raw" | "ext4" | "erofs";
/** A wrapped layer key (AES Key Wrap of 32 bytes). */
const WRAPPED_KEY_BYTES = 40;
/** An SIV record: 12-byte nonce and 16-byte tag around the ciphertext. */
const SIV_OVERHEAD = 28;

export interface SealedLayerEntry {
	digest: string;
	size: number;
	layerId: string; // hex
	virtualSize: number;
	compression: CompressionName;
	wrappedKey: string; // base64url
	storedChunks: number;
	zeroChunks: number;
	/** Container images: the diff_ids of the source layers this layer's disk adds (in order). */
	sourceDiffIds?: string[];
}

/** Container images: the file-system parameters every layer's disk was built with. */
export interface FsParams {
	uuid: string;
	timestamp: number;
	sizeBytes: number;
	inodes: number;
}

export interface SealedConfig {
	schemaVersion: 1;
	sealId: string; // hex
	chunkSize: number;
	suite: string;
	fsType: FsType;
	virtualSize: number;
	key: { ref: string; kid: string; wrap: string };
	layers: SealedLayerEntry[];
	/** base64url of the SIV-encrypted original OCI image config, or null (raw disks). */
	imageConfig: string | null;
	/** Container images: how the layers' file systems were built (so later images can share them). */
	fs?: FsParams;
	/** base64url HMAC-SHA256 over canonicalConfigBytes. */
	mac: string;
}

const E = (msg: string) =>
	new DadiError("LAYOUT_INVALID", `sealed config: ${msg}`);

function int(v: unknown, what: string, min = 0): number {
	if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min)
		throw E(`${what} must be an integer >= ${min}`);
	return v;
}
function str(v: unknown, what: string, re?: RegExp): string {
	if (typeof v !== "string" || (re && !re.test(v)))
		throw E(`${what} is missing or malformed`);
	return v;
}
/** A canonical base64url field (base64url.ts) of `length` bytes, or at least `min` bytes. */
function b64(
	v: unknown,
	what: string,
	size: { length: number } | { min: number },
): string {
	const ok =
		"length" in size
			? isCanonicalBase64url(v, size.length)
			: isCanonicalBase64url(v) &&
				Buffer.from(v as string, "base64url").length >= size.min;
	if (!ok)
		throw E(
			`${what} is not canonical base64url of ${"length" in size ? `${size.length}` : `at least ${size.min}`} bytes`,
		);
	return v as string;
}
function exactKeys(
	o: Record<string, unknown>,
	keys: string[],
	what: string,
): void {
	for (const k of Object.keys(o))
		if (!keys.includes(k)) throw E(`${what} has an unknown field "${k}"`);
}

const HEX32 = /^[0-9a-f]{32}$/;
const HEX64 = /^[0-9a-f]{64}$/;
export const KEY_REF_RE =
	/^kbs:\/\/\/[A-Za-z0-9._-]+\/[A-Za-z0-9._-]+\/[A-Za-z0-9._-]+$/;

export function parseSealedConfig(v: unknown): SealedConfig {
	if (typeof v !== "object" || v === null || Array.isArray(v))
		throw E("not a JSON object");
	const o = v as Record<string, unknown>;
	if (o.schemaVersion !== CONFIG_SCHEMA_VERSION)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`sealed config: schemaVersion ${String(o.schemaVersion)} is not supported (this build reads ${CONFIG_SCHEMA_VERSION})`,
		);
	exactKeys(
		o,
		[
			"schemaVersion",
			"sealId",
			"chunkSize",
			"suite",
			"fsType",
			"virtualSize",
			"key",
			"layers",
			"imageConfig",
			"fs",
			"mac",
		],
		"config",
	);
	const chunkSize = int(o.chunkSize, "chunkSize", 1);
	if (!isPowerOfTwoChunkSize(chunkSize))
		throw E(`chunkSize ${chunkSize} is not a power of two in 4 KiB..1 MiB`);
	const suite = str(o.suite, "suite");
	if (suite !== SUITE_NAMES[SUITE_AES256GCM_HKDFSHA256])
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`sealed config: suite "${suite}" is not supported`,
		);
	const fsType = str(o.fsType, "fsType");
	if (fsType !== "raw" && fsType !== "ext4" && fsType !== "erofs")
		throw E(`fsType "${fsType}" is unknown`);
	const key = o.key as Record<string, unknown>;
	if (typeof key !== "object" || key === null) throw E("key is missing");
	exactKeys(key, ["ref", "kid", "wrap"], "key");
	if (key.wrap !== WRAP_ALG)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`sealed config: key wrap "${String(key.wrap)}" is not supported`,
		);
	if (!Array.isArray(o.layers) || o.layers.length === 0)
		throw E("layers must be a non-empty array");
	if (o.layers.length > 1024) throw E("more than 1024 layers");
	const layers = o.layers.map((l: unknown, i: number): SealedLayerEntry => {
		if (typeof l !== "object" || l === null)
			throw E(`layers[${i}] is not an object`);
		const x = l as Record<string, unknown>;
		exactKeys(
			x,
			[
				"digest",
				"size",
				"layerId",
				"virtualSize",
				"compression",
				"wrappedKey",
				"storedChunks",
				"zeroChunks",
				"sourceDiffIds",
			],
			`layers[${i}]`,
		);
		const compression = str(x.compression, `layers[${i}].compression`);
		if (compression !== "none" && compression !== "zstd")
			throw new DadiError(
				"FORMAT_UNSUPPORTED",
				`sealed config: layers[${i}] uses unknown compression "${compression}"`,
			);
		return {
			digest: checkDigest(x.digest, `sealed config: layers[${i}].digest`),
			size: int(x.size, `layers[${i}].size`, 128),
			layerId: str(x.layerId, `layers[${i}].layerId`, HEX64),
			virtualSize: int(x.virtualSize, `layers[${i}].virtualSize`, 1),
			compression,
			wrappedKey: b64(x.wrappedKey, `layers[${i}].wrappedKey`, {
				length: WRAPPED_KEY_BYTES,
			}),
			storedChunks: int(x.storedChunks, `layers[${i}].storedChunks`),
			zeroChunks: int(x.zeroChunks, `layers[${i}].zeroChunks`),
			...(x.sourceDiffIds === undefined
				? {}
				: {
						sourceDiffIds: (() => {
							if (
								!Array.isArray(x.sourceDiffIds) ||
								x.sourceDiffIds.length > 1024
							)
								throw E(`layers[${i}].sourceDiffIds must be an array`);
							return x.sourceDiffIds.map((d, j) =>
								checkDigest(
									d,
									`sealed config: layers[${i}].sourceDiffIds[${j}]`,
								),
							);
						})(),
					}),
		};
	});
	const top = layers[layers.length - 1] as SealedLayerEntry;
	const virtualSize = int(o.virtualSize, "virtualSize", 1);
	if (virtualSize !== top.virtualSize)
		throw E("virtualSize differs from the top layer's");
	if (o.imageConfig !== null)
		b64(o.imageConfig, "imageConfig (or null)", { min: SIV_OVERHEAD });
	return {
		schemaVersion: 1,
		sealId: str(o.sealId, "sealId", HEX32),
		chunkSize,
		suite,
		fsType,
		virtualSize,
		key: {
			ref: str(key.ref, "key.ref", KEY_REF_RE),
			kid: b64(key.kid, "key.kid", { length: 32 }),
			wrap: WRAP_ALG,
		},
		layers,
		imageConfig: o.imageConfig as string | null,
		...(o.fs === undefined ? {} : { fs: parseFsParams(o.fs) }),
		mac: b64(o.mac, "mac", { length: 32 }),
	};
}

function parseFsParams(v: unknown): FsParams {
	if (typeof v !== "object" || v === null) throw E("fs must be an object");
	const f = v as Record<string, unknown>;
	exactKeys(f, ["uuid", "timestamp", "sizeBytes", "inodes"], "fs");
	return {
		uuid: str(
			f.uuid,
			"fs.uuid",
			/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/,
		),
		timestamp: int(f.timestamp, "fs.timestamp"),
		sizeBytes: int(f.sizeBytes, "fs.sizeBytes"),
		inodes: int(f.inodes, "fs.inodes"),
	};
}

/** The bytes the MAC covers: every field but `mac`, in a fixed order. */
export function canonicalConfigBytes(c: Omit<SealedConfig, "mac">): Buffer {
	const doc = {
		schemaVersion: c.schemaVersion,
		sealId: c.sealId,
		chunkSize: c.chunkSize,
		suite: c.suite,
		fsType: c.fsType,
		virtualSize: c.virtualSize,
		key: { ref: c.key.ref, kid: c.key.kid, wrap: c.key.wrap },
		layers: c.layers.map((l) => ({
			digest: l.digest,
			size: l.size,
			layerId: l.layerId,
			virtualSize: l.virtualSize,
			compression: l.compression,
			wrappedKey: l.wrappedKey,
			storedChunks: l.storedChunks,
			zeroChunks: l.zeroChunks,
			sourceDiffIds: l.sourceDiffIds, // omitted when undefined
		})),
		imageConfig: c.imageConfig,
		fs: c.fs
			? {
					uuid: c.fs.uuid,
					timestamp: c.fs.timestamp,
					sizeBytes: c.fs.sizeBytes,
					inodes: c.fs.inodes,
				}
			: undefined,
	};
	return Buffer.from(JSON.stringify(doc), "utf8");
}

/** The stored document: canonical fields plus the MAC. */
export function serializeSealedConfig(c: SealedConfig): Buffer {
	const body = JSON.parse(canonicalConfigBytes(c).toString("utf8")) as Record<
		string,
		unknown
	>;
	return Buffer.from(
		`${JSON.stringify({ ...body, mac: c.mac }, null, 2)}\n`,
		"utf8",
	);
}
