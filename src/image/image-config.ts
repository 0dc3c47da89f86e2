/**
 * The original OCI image config of a sealed image, for the guest: the runtime needs the image's
 * real process (entrypoint, command, env, working directory, user), which the public config
 * replaces with a sentinel (oci/public-config.ts). Decrypting it needs the image key and nothing
 * else: no layer is opened. The record is authenticated by its own AEAD tag under the image key,
 * for this seal id (AUTH_FAILED otherwise); callers also check the config MAC first
 * (image/open-image.ts: `openImageConfig`, `OpenedImage.imageConfig`).
 */
import { openRecord } from "../crypto/config-auth.js";
import { DadiError } from "../errors.js";
import type { SealedConfig } from "../oci/sealed-config.js";

/** The decrypted config bytes exactly as they were sealed, or null (a raw disk). */
export function decryptImageConfigBytes(
	config: SealedConfig,
	imageKey: Buffer,
): Buffer | null {
	if (config.imageConfig === null) return null;
	return openRecord(
		imageKey,
		"image-config",
		config.sealId,
		config.imageConfig,
	);
}

/** The decrypted config bytes as a JSON object (FORMAT_INVALID if they are not one). */
export function parseDecryptedImageConfig(
	bytes: Buffer,
): Record<string, unknown> {
	let v: unknown;
	try {
		v = JSON.parse(bytes.toString("utf8"));
	} catch {
		v = undefined;
	}
	if (typeof v !== "object" || v === null || Array.isArray(v))
		throw new DadiError(
			"FORMAT_INVALID",
			"image config: the decrypted config is not a JSON object",
		);
	return v as Record<string, unknown>;
}
