/**
 * The UUID (also ext4's directory hash seed) and timestamp of a container image's file systems,
 * derived from the image so that the same image, key and seal id give the same disks.
 *
 * v1 used SHA-256("dadi/v1/fs-identity" || config) and published it: an unkeyed hash of the
 * encrypted image config, so anyone who could guess the config could confirm the guess (a review
 * recovered a 4-digit PIN from an env variable in 4,712 tries). v2 keys it:
 *
 *   uuid = UUIDv4-form( HMAC-SHA256( HKDF(imageKey, empty, "dadi/v2/fs-identity"), config ) )
 *
 * and keeps it, with the timestamp, only inside the encrypted disk and the encrypted seal
 * parameters (seal-params.ts).
 */
import { createHmac } from "node:crypto";
import { hkdf32, LABELS } from "../crypto/kdf.js";

/** 2000-01-01T00:00:00Z, for configs without a creation time. */
export const DEFAULT_FS_TIMESTAMP = 946684800;

export function fsUuid(imageKey: Buffer, config: Buffer): string {
	const h = createHmac(
		"sha256",
		hkdf32(imageKey, Buffer.alloc(0), LABELS.fsIdentity),
	)
		.update(config)
		.digest("hex");
	const variant = ((Number.parseInt(h.slice(16, 17), 16) & 3) | 8).toString(16);
	return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-${variant}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** The config's `created` in seconds, else 2000-01-01. */
export function fsTimestamp(config: Buffer): number {
	try {
		const created = (
			JSON.parse(config.toString("utf8")) as { created?: unknown }
		).created;
		if (typeof created === "string") {
			const t = Math.floor(Date.parse(created) / 1000);
			if (Number.isFinite(t) && t > 0 && t < 2 ** 32) return t;
		}
	} catch {
		// readImageConfig has already refused configs that are not JSON
	}
	return DEFAULT_FS_TIMESTAMP;
}

export function fsIdentity(
	imageKey: Buffer,
	config: Buffer,
): { uuid: string; timestamp: number } {
	return { uuid: fsUuid(imageKey, config), timestamp: fsTimestamp(config) };
}
