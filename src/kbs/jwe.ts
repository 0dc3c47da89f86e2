/**
 * The KBS resource response: a flattened JWE (RFC 7516 §7.2.2) encrypted to the sandbox's
 * tee-pubkey, {"protected","encrypted_key","iv","ciphertext","tag"}, base64url without padding,
 * no "aad" member.
 *
 * Sending side (the broker) is node:crypto only, so the protected header bytes are exactly what
 * CoCo guests re-serialise to rebuild the AAD: compact JSON with "alg" first, "enc" second, then
 * "epk" with its members sorted.
 *
 *   ECDH-ES+A256KW: {"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-256","kty":"EC","x":..,"y":..}}
 *     fresh ephemeral P-256 key; ECDH; Concat KDF (RFC 7518 §4.6.2) with SHA-256, AlgorithmID
 *     "ECDH-ES+A256KW", empty PartyUInfo/PartyVInfo, keydatalen 256 → KEK; AES-256 Key Wrap
 *     (RFC 3394) of a random 256-bit CEK.
 *   RSA-OAEP-256:   {"alg":"RSA-OAEP-256","enc":"A256GCM"}; RSA-OAEP with SHA-256 of the CEK.
 *
 * Content: A256GCM, random 96-bit IV, AAD = ASCII(base64url(protected header)), 128-bit tag.
 *
 * Receiving side (the guest) uses jose, an independent implementation, restricted to those two
 * key-management algorithms and A256GCM. Any failure after the shape check is AUTH_FAILED with
 * the one fixed message; no data is ever returned from a JWE that did not verify.
 */

import {
	constants,
	createCipheriv,
	createECDH,
	createHash,
	createPrivateKey,
	type KeyObject,
	publicEncrypt,
} from "node:crypto";
import { flattenedDecrypt } from "jose";
import { randomFromPool } from "../crypto/random-pool.js";
import { authFailed, DadiError } from "../errors.js";
import { decodeBase64urlStrict, type TeePubKey } from "./tee-pubkey.js";

export interface FlattenedJwe {
	protected: string;
	encrypted_key: string;
	iv: string;
	ciphertext: string;
	tag: string;
}

export const KEY_MANAGEMENT_ALGORITHMS = [
	"ECDH-ES+A256KW",
	"RSA-OAEP-256",
] as const;
export const CONTENT_ENCRYPTION_ALGORITHM = "A256GCM";

/** Largest plaintext/ciphertext a resource response may carry. */
export const MAX_CIPHERTEXT_BYTES = 1024 * 1024;
const MAX_PROTECTED_CHARS = 4096;
/** An 8192-bit RSA-OAEP output; ECDH-ES+A256KW wraps to 40 bytes. */
const MAX_ENCRYPTED_KEY_BYTES = 1024;
const IV_BYTES = 12;
const TAG_BYTES = 16;

const KW_IV = Buffer.from("A6A6A6A6A6A6A6A6", "hex");
const RSA_PROTECTED_B64 = Buffer.from(
	'{"alg":"RSA-OAEP-256","enc":"A256GCM"}',
).toString("base64url");
const RSA_AAD = Buffer.from(RSA_PROTECTED_B64, "ascii");
const EC_HEADER_PREFIX =
	'{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-256","kty":"EC","x":"';

/**
 * Everything the Concat KDF hashes after Z: AlgorithmID (length-prefixed "ECDH-ES+A256KW"),
 * PartyUInfo and PartyVInfo (empty, length-prefixed), SuppPubInfo (keydatalen = 256 bits).
 */
const CONCAT_KDF_OTHER_INFO = (() => {
	const alg = Buffer.from("ECDH-ES+A256KW", "ascii");
	const b = Buffer.alloc(4 + alg.length + 4 + 4 + 4);
	let at = b.writeUInt32BE(alg.length, 0);
	at += alg.copy(b, at);
	at = b.writeUInt32BE(0, at);
	at = b.writeUInt32BE(0, at);
	b.writeUInt32BE(256, at);
	return b;
})();
const CONCAT_KDF_ROUND_1 = Buffer.from([0, 0, 0, 1]);

/** Concat KDF for a 256-bit output with SHA-256: a single round. */
function concatKdf256(z: Buffer): Buffer {
	return createHash("sha256")
		.update(CONCAT_KDF_ROUND_1)
		.update(z)
		.update(CONCAT_KDF_OTHER_INFO)
		.digest();
}

function gcmSeal(
	cek: Buffer,
	aad: Buffer,
	plaintext: Buffer,
): { iv: Buffer; ciphertext: Buffer; tag: Buffer } {
	const iv = randomFromPool(IV_BYTES);
	const c = createCipheriv("aes-256-gcm", cek, iv, {
		authTagLength: TAG_BYTES,
	});
	c.setAAD(aad);
	const head = c.update(plaintext);
	const tail = c.final();
	const ciphertext = tail.length === 0 ? head : Buffer.concat([head, tail]);
	return { iv, ciphertext, tag: c.getAuthTag() };
}

function ecPoint(jwk: { x: string; y: string }): Buffer {
	const peer = Buffer.allocUnsafe(65);
	peer[0] = 0x04;
	if (
		Buffer.from(jwk.x, "base64url").copy(peer, 1) !== 32 ||
		Buffer.from(jwk.y, "base64url").copy(peer, 33) !== 32
	)
		throw new DadiError(
			"INPUT_INVALID",
			"tee-pubkey: P-256 coordinates must be 32 bytes each",
		);
	return peer;
}

function notOnCurve(): DadiError {
	return new DadiError(
		"INPUT_INVALID",
		"tee-pubkey: the EC point is not on the P-256 curve",
	);
}

/** ECDH-ES+A256KW from the shared secret Z and the ephemeral public point (uncompressed). */
function wrapForEc(
	cek: Buffer,
	z: Buffer,
	epk: Buffer,
): { encryptedKey: Buffer; protectedB64: string; aad: Buffer } {
	const kek = concatKdf256(z);
	z.fill(0);
	const kw = createCipheriv("id-aes256-wrap", kek, KW_IV);
	const encryptedKey = Buffer.concat([kw.update(cek), kw.final()]);
	kek.fill(0);
	const header = `${EC_HEADER_PREFIX}${epk.toString("base64url", 1, 33)}","y":"${epk.toString("base64url", 33, 65)}"}}`;
	const protectedB64 = Buffer.from(header, "ascii").toString("base64url");
	return {
		encryptedKey,
		protectedB64,
		aad: Buffer.from(protectedB64, "ascii"),
	};
}

/**
 * Broker side: encrypts `plaintext` to a parsed tee-pubkey (see parseTeePubKey). The caller
 * passes the JWK and node key that parseTeePubKey returned, so both are already validated.
 */
export function encryptToTeeKey(
	plaintext: Buffer,
	tee: { jwk: TeePubKey; key?: KeyObject },
): FlattenedJwe {
	if (plaintext.length > MAX_CIPHERTEXT_BYTES)
		throw new DadiError(
			"INPUT_INVALID",
			`a resource of ${plaintext.length} bytes is larger than the ${MAX_CIPHERTEXT_BYTES}-byte limit of a KBS response`,
		);
	const cek = randomFromPool(32);
	let protectedB64: string;
	let aad: Buffer;
	let encryptedKey: Buffer;
	const jwk = tee.jwk;
	if (jwk.kty === "EC") {
		const peer = ecPoint(jwk);
		const ecdh = createECDH("prime256v1");
		const epk = ecdh.generateKeys();
		let z: Buffer;
		try {
			z = ecdh.computeSecret(peer);
		} catch {
			throw notOnCurve();
		}
		({ encryptedKey, protectedB64, aad } = wrapForEc(cek, z, epk));
	} else if (jwk.kty === "RSA" && tee.key) {
		encryptedKey = publicEncrypt(
			{
				key: tee.key,
				padding: constants.RSA_PKCS1_OAEP_PADDING,
				oaepHash: "sha256",
			},
			cek,
		);
		protectedB64 = RSA_PROTECTED_B64;
		aad = RSA_AAD;
	} else {
		throw new DadiError(
			"INPUT_INVALID",
			"tee-pubkey: unsupported key type; parse it with parseTeePubKey first",
		);
	}
	const { iv, ciphertext, tag } = gcmSeal(cek, aad, plaintext);
	cek.fill(0);
	return {
		protected: protectedB64,
		encrypted_key: encryptedKey.toString("base64url"),
		iv: iv.toString("base64url"),
		ciphertext: ciphertext.toString("base64url"),
		tag: tag.toString("base64url"),
	};
}

const JWE_MEMBERS = [
	"protected",
	"encrypted_key",
	"iv",
	"ciphertext",
	"tag",
] as const;

function malformed(what: string, why: string): DadiError {
	return new DadiError(
		"INPUT_INVALID",
		`${what}: not a KBS resource response (flattened JWE): ${why}`,
	);
}

/** Largest base64url text that can decode to at most `bytes` bytes. */
function maxChars(bytes: number): number {
	return Math.ceil((bytes * 4) / 3);
}

/**
 * Checks the shape of a flattened JWE: exactly the five members, each canonical base64url without
 * padding, within size limits (12-byte IV, 16-byte tag, ciphertext ≤ 1 MiB). Does not look inside
 * the protected header: that is authenticated data and is judged by decryption.
 */
export function parseFlattenedJwe(value: unknown, what: string): FlattenedJwe {
	if (typeof value !== "object" || value === null || Array.isArray(value))
		throw malformed(what, "expected a JSON object");
	const o = value as Record<string, unknown>;
	if (Object.hasOwn(o, "aad"))
		throw malformed(
			what,
			`an "aad" member is not allowed (the KBS protocol authenticates only the protected header)`,
		);
	const extra = Object.keys(o).filter(
		(k) => !(JWE_MEMBERS as readonly string[]).includes(k),
	);
	if (extra.length > 0)
		throw malformed(
			what,
			`unexpected member(s) ${extra
				.slice(0, 5)
				.map((k) => JSON.stringify(k.slice(0, 40)))
				.join(", ")}; expected exactly ${JWE_MEMBERS.join(", ")}`,
		);
	const limits: Record<(typeof JWE_MEMBERS)[number], [number, number]> = {
		protected: [1, MAX_PROTECTED_CHARS],
		encrypted_key: [1, maxChars(MAX_ENCRYPTED_KEY_BYTES)],
		iv: [maxChars(IV_BYTES), maxChars(IV_BYTES)],
		ciphertext: [0, maxChars(MAX_CIPHERTEXT_BYTES)],
		tag: [maxChars(TAG_BYTES), maxChars(TAG_BYTES)],
	};
	const out: Record<string, string> = {};
	for (const name of JWE_MEMBERS) {
		if (!Object.hasOwn(o, name))
			throw malformed(what, `missing member "${name}"`);
		const v = o[name];
		if (typeof v !== "string")
			throw malformed(what, `"${name}" must be a base64url string`);
		const [min, max] = limits[name];
		if (v.length < min || v.length > max)
			throw malformed(
				what,
				name === "iv" || name === "tag"
					? `"${name}" must be ${name === "iv" ? IV_BYTES : TAG_BYTES} bytes (A256GCM)`
					: `"${name}" has ${v.length} characters; allowed ${min} to ${max}`,
			);
		if (decodeBase64urlStrict(v) === undefined)
			throw malformed(
				what,
				`"${name}" is not canonical base64url without padding (RFC 7515 §2)`,
			);
		out[name] = v;
	}
	return out as unknown as FlattenedJwe;
}

/** Re-imported copies of callers' private keys (see keyForJose), one per key. */
const joseKeys = new WeakMap<KeyObject, KeyObject>();

/**
 * jose on Node 20 (no KeyObject.toCryptoKey) exports a KeyObject as JWK to use it, and on Node 20
 * exporting a generateKeyPairSync key as JWK can deadlock when a garbage collection finalises the
 * key-generation job during the export. A copy imported from PKCS#8 has no such job.
 */
function keyForJose(privateKey: KeyObject): KeyObject {
	if (privateKey?.type !== "private")
		throw new DadiError(
			"USAGE",
			"decrypting a key broker's response needs the ephemeral private key",
		);
	if (
		typeof (privateKey as { toCryptoKey?: unknown }).toCryptoKey === "function"
	)
		return privateKey;
	let copy = joseKeys.get(privateKey);
	if (copy === undefined) {
		const der = privateKey.export({ format: "der", type: "pkcs8" });
		copy = createPrivateKey({ key: der, format: "der", type: "pkcs8" });
		der.fill(0);
		joseKeys.set(privateKey, copy);
	}
	return copy;
}

/**
 * Guest side: decrypts a key broker's resource response with the ephemeral private key whose
 * public half was sent as tee-pubkey. `expectAlg`, when given, is the only key-management
 * algorithm accepted (the one matching the key type the guest sent). A malformed shape is
 * INPUT_INVALID; every other failure (wrong key, tampering, another algorithm) is AUTH_FAILED.
 */
export async function decryptFromBroker(
	jwe: FlattenedJwe,
	privateKey: KeyObject,
	expectAlg?: string,
): Promise<Buffer> {
	let algorithms: string[] = [...KEY_MANAGEMENT_ALGORITHMS];
	if (expectAlg !== undefined) {
		if (!algorithms.includes(expectAlg))
			throw new DadiError(
				"USAGE",
				`expected key-management algorithm must be one of ${algorithms.join(", ")}`,
			);
		algorithms = [expectAlg];
	}
	const checked = parseFlattenedJwe(jwe, "the key broker's response");
	const key = keyForJose(privateKey);
	try {
		const { plaintext } = await flattenedDecrypt(checked, key, {
			keyManagementAlgorithms: algorithms,
			contentEncryptionAlgorithms: [CONTENT_ENCRYPTION_ALGORITHM],
		});
		return Buffer.from(
			plaintext.buffer,
			plaintext.byteOffset,
			plaintext.length,
		);
	} catch {
		throw authFailed("the key broker's response");
	}
}
