/**
 * Key derivation. Every derived key has its own label ("info"), so no key is ever used for two
 * purposes. Labels are part of the format: a label keeps its name while its derivation is
 * unchanged, and a changed derivation gets a new label. Format v2 left the layer encoding and the
 * key wrap as they were (their labels still say v1) and changed the reproducible layer material,
 * the config MAC's input, and added the file-system identity (docs/format.md §5.1).
 */
import { hkdfSync } from "node:crypto";

export const LABELS = {
	chunkKey: "dadi/v1/chunk-key",
	indexKey: "dadi/v1/index-key",
	indexSiv: "dadi/v1/index-siv",
	layerWrap: "dadi/v1/layer-wrap",
	/** Normal mode: the prefix of the SHA-256 input of a layer id (not an HKDF label). */
	layerIdHash: "dadi/v1/layer-id",
	/** Reproducible mode: the layer material changed in v2 (it names the writer policy). */
	layerKey: "dadi/v2/layer-key",
	layerId: "dadi/v2/layer-id",
	/** The canonical config the MAC covers changed in v2. */
	configMac: "dadi/v2/config-mac",
	/** Keys of the sealed records (image config, seal parameters); the records' AAD says which. */
	configEnc: "dadi/v1/config-enc",
	configSiv: "dadi/v1/config-siv",
	/** v2: the HMAC key of the file-system UUID of container images (seal/fs-identity.ts). */
	fsIdentity: "dadi/v2/fs-identity",
	/** The AES-256-GCM key of sealed start-up traces (trace-seal.ts, docs/format.md §10.2). */
	traceKey: "dadi/v1/trace-key",
} as const;

export function hkdf32(
	ikm: Buffer,
	salt: Buffer,
	label: string,
	context: Buffer = Buffer.alloc(0),
): Buffer {
	const info = Buffer.concat([
		Buffer.from(label, "latin1"),
		Buffer.from([0]),
		context,
	]);
	return Buffer.from(hkdfSync("sha256", ikm, salt, info, 32));
}
