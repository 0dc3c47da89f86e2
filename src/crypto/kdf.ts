/**
 * Key derivation. Every derived key has its own label ("info"), so no key is ever used for two
 * purposes. Labels are part of the format: changing one is a format change.
 */
import { hkdfSync } from "node:crypto";

export const LABELS = {
	chunkKey: "dadi/v1/chunk-key",
	indexKey: "dadi/v1/index-key",
	indexSiv: "dadi/v1/index-siv",
	layerWrap: "dadi/v1/layer-wrap",
	layerKey: "dadi/v1/layer-key",
	layerId: "dadi/v1/layer-id",
	configMac: "dadi/v1/config-mac",
	configEnc: "dadi/v1/config-enc",
	configSiv: "dadi/v1/config-siv",
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
