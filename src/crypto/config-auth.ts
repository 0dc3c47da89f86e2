/**
 * Authenticating the sealed config and encrypting the original image config under the image key.
 * The MAC makes the layer list, order, wrapped keys and sizes tamper-evident to anyone holding the
 * image key, independent of how the manifest was found (tag or digest).
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { authFailed } from "../errors.js";
import { decodeCanonicalBase64url } from "../oci/base64url.js";
import {
	canonicalConfigBytes,
	type SealedConfig,
} from "../oci/sealed-config.js";
import { hkdf32, LABELS } from "./kdf.js";
import { sivOpen, sivSeal } from "./siv.js";

const EMPTY = Buffer.alloc(0);

export function configMac(
	imageKey: Buffer,
	c: Omit<SealedConfig, "mac">,
): string {
	return createHmac("sha256", hkdf32(imageKey, EMPTY, LABELS.configMac))
		.update(canonicalConfigBytes(c))
		.digest("base64url");
}

export function checkConfigMac(imageKey: Buffer, c: SealedConfig): void {
	const expect = Buffer.from(configMac(imageKey, c), "base64url");
	const got = decodeCanonicalBase64url(c.mac, expect.length);
	if (got === undefined || !timingSafeEqual(got, expect))
		throw authFailed("sealed config");
}

function imageConfigAad(sealId: string): Buffer {
	return Buffer.from(`dadi/v1/image-config\0${sealId}`, "latin1");
}

export function encryptImageConfig(
	imageKey: Buffer,
	sealId: string,
	plain: Buffer,
): string {
	const enc = hkdf32(imageKey, EMPTY, LABELS.configEnc);
	const siv = hkdf32(imageKey, EMPTY, LABELS.configSiv);
	return sivSeal(enc, siv, imageConfigAad(sealId), plain).toString("base64url");
}

export function decryptImageConfig(
	imageKey: Buffer,
	sealId: string,
	sealed: string,
): Buffer {
	const enc = hkdf32(imageKey, EMPTY, LABELS.configEnc);
	const siv = hkdf32(imageKey, EMPTY, LABELS.configSiv);
	const bytes = decodeCanonicalBase64url(sealed);
	if (bytes === undefined) throw authFailed("image config");
	return sivOpen(enc, siv, imageConfigAad(sealId), bytes, "image config");
}
