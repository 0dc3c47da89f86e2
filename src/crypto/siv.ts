/**
 * Deterministic authenticated encryption for small records (the original image config): a
 * synthetic IV in the manner of SIV (RFC 5297). nonce = first 12 bytes of HMAC-SHA256(sivKey,
 * aad || plaintext), then AES-256-GCM under a separate key. The nonce repeats only when the
 * plaintext and AAD repeat, and then the ciphertext repeats too: reproducible, and safe against
 * nonce reuse whatever the caller does.
 */
import { createCipheriv, createDecipheriv, createHmac } from "node:crypto";
import { authFailed } from "../errors.js";
import { TAG_SIZE } from "../format/constants.js";

export function sivSeal(
	encKey: Buffer,
	sivKey: Buffer,
	aad: Buffer,
	plain: Buffer,
): Buffer {
	const nonce = createHmac("sha256", sivKey)
		.update(aad)
		.update(plain)
		.digest()
		.subarray(0, 12);
	const c = createCipheriv("aes-256-gcm", encKey, nonce);
	c.setAAD(aad);
	return Buffer.concat([nonce, c.update(plain), c.final(), c.getAuthTag()]);
}

export function sivOpen(
	encKey: Buffer,
	sivKey: Buffer,
	aad: Buffer,
	sealed: Buffer,
	what: string,
): Buffer {
	if (sealed.length < 12 + TAG_SIZE) throw authFailed(what);
	const nonce = sealed.subarray(0, 12);
	const d = createDecipheriv("aes-256-gcm", encKey, nonce);
	d.setAAD(aad);
	d.setAuthTag(sealed.subarray(sealed.length - TAG_SIZE));
	const plain = d.update(sealed.subarray(12, sealed.length - TAG_SIZE));
	try {
		d.final();
	} catch {
		throw authFailed(what);
	}
	// The synthetic IV must match too: otherwise the record was re-encrypted by someone else.
	const expect = createHmac("sha256", sivKey)
		.update(aad)
		.update(plain)
		.digest()
		.subarray(0, 12);
	if (!expect.equals(nonce)) throw authFailed(what);
	return plain;
}
