/**
 * Authenticating the sealed config, and the records it carries encrypted, under the image key.
 *
 * The MAC makes every value of the sealed config — layer list, order, wrapped keys, sizes, platform,
 * public labels, the encrypted records — tamper-evident to anyone holding the image key,
 * independent of how the manifest was found (tag or digest).
 *
 * A sealed record (the original OCI image config; the seal parameters of a container image) is
 * padded to hide its length (padding.ts), then encrypted deterministically (siv.ts) with
 * AAD = "dadi/v2/<kind>" || 0x00 || seal id (32 hex digits): a record cannot be moved to the other
 * kind or to another seal, and the same record, key and seal id give the same bytes (reproducible).
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { authFailed } from "../errors.js";
import { decodeCanonicalBase64url } from "../oci/base64url.js";
import {
	canonicalConfigBytes,
	type SealedConfig,
} from "../oci/sealed-config.js";
import { hkdf32, LABELS } from "./kdf.js";
import { pad, unpad } from "./padding.js";
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

/** The kinds of sealed record; each is its own AAD domain. */
export type RecordKind = "image-config" | "seal-params";

export function recordAad(kind: RecordKind, sealId: string): Buffer {
	return Buffer.from(`dadi/v2/${kind}\0${sealId}`, "latin1");
}

export function sealRecord(
	imageKey: Buffer,
	kind: RecordKind,
	sealId: string,
	plain: Buffer,
): string {
	const enc = hkdf32(imageKey, EMPTY, LABELS.configEnc);
	const siv = hkdf32(imageKey, EMPTY, LABELS.configSiv);
	return sivSeal(enc, siv, recordAad(kind, sealId), pad(plain)).toString(
		"base64url",
	);
}

/** Authenticates and decrypts a record (AUTH_FAILED), then removes its padding (FORMAT_INVALID). */
export function openRecord(
	imageKey: Buffer,
	kind: RecordKind,
	sealId: string,
	sealed: string,
): Buffer {
	const enc = hkdf32(imageKey, EMPTY, LABELS.configEnc);
	const siv = hkdf32(imageKey, EMPTY, LABELS.configSiv);
	const bytes = decodeCanonicalBase64url(sealed);
	if (bytes === undefined) throw authFailed(kind);
	return unpad(sivOpen(enc, siv, recordAad(kind, sealId), bytes, kind), kind);
}
