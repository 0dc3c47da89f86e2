/**
 * Image keys as JWK (RFC 7517): {"kty":"oct","k":<base64url 32 bytes>,"kid":<RFC 7638 thumbprint>}.
 * Parsing checks everything and never echoes key material in an error.
 */
import { createHash, randomBytes } from "node:crypto";
import { DadiError } from "../errors.js";
import { decodeCanonicalBase64url } from "../oci/base64url.js";

export interface ImageKey {
	kid: string;
	key: Buffer;
}

export interface ImageKeyJwk {
	kty: "oct";
	kid: string;
	k: string;
	alg: "dir";
	use: "enc";
}

/** RFC 7638 thumbprint of a symmetric JWK: SHA-256 over {"k":..,"kty":"oct"}. */
export function thumbprint(key: Buffer): string {
	const canonical = `{"k":"${key.toString("base64url")}","kty":"oct"}`;
	return createHash("sha256").update(canonical).digest("base64url");
}

export function generateImageKey(): ImageKey {
	const key = randomBytes(32);
	return { key, kid: thumbprint(key) };
}

export function toJwk(k: ImageKey): ImageKeyJwk {
	return {
		kty: "oct",
		kid: k.kid,
		k: k.key.toString("base64url"),
		alg: "dir",
		use: "enc",
	};
}

/** Parses a key file's text. `source` names the file in errors. */
export function parseImageKey(text: string, source: string): ImageKey {
	let jwk: unknown;
	try {
		jwk = JSON.parse(text);
	} catch {
		throw new DadiError(
			"KEY_INVALID",
			`${source}: not JSON; expected a JWK written by 'dadi-seal keygen'`,
		);
	}
	if (typeof jwk !== "object" || jwk === null || Array.isArray(jwk))
		throw new DadiError(
			"KEY_INVALID",
			`${source}: expected a JSON object (a JWK)`,
		);
	const o = jwk as Record<string, unknown>;
	if (o.kty !== "oct")
		throw new DadiError(
			"KEY_INVALID",
			`${source}: kty must be "oct" (a symmetric key)`,
		);
	if (typeof o.k !== "string" || !/^[A-Za-z0-9_-]+$/.test(o.k))
		throw new DadiError("KEY_INVALID", `${source}: "k" must be base64url text`);
	const key = decodeCanonicalBase64url(o.k);
	if (key === undefined)
		throw new DadiError(
			"KEY_INVALID",
			`${source}: "k" is not canonical base64url (unpadded, unused bits zero)`,
		);
	if (key.length !== 32)
		throw new DadiError(
			"KEY_INVALID",
			`${source}: the key must be 256 bits (32 bytes), found ${key.length} bytes`,
		);
	const kid = thumbprint(key);
	if (o.kid !== undefined && o.kid !== kid)
		throw new DadiError(
			"KEY_INVALID",
			`${source}: "kid" does not match the key's thumbprint; the file was edited or damaged`,
		);
	return { key, kid };
}
