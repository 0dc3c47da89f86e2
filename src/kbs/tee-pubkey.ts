/**
 * The sandbox's ephemeral "tee-pubkey" (Trustee kbs-types TeePubKey): a public JWK, tagged by
 * "kty", that the broker encrypts released resources to.
 *
 *   {"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":<b64u 32 bytes>,"y":<b64u 32 bytes>}
 *   {"kty":"RSA","alg":"RSA-OAEP-256","n":<b64u modulus>,"e":"AQAB"}
 *
 * Parsing is strict: exactly these members, canonical base64url without padding, the EC point on
 * the curve, a 2048..8192-bit odd RSA modulus in minimal encoding and e = 65537. Errors say what
 * is wrong and never echo key material.
 */
import {
	createECDH,
	createHash,
	createPrivateKey,
	createPublicKey,
	ECDH,
	generateKeyPairSync,
	type KeyObject,
} from "node:crypto";
import { DadiError } from "../errors.js";

export interface EcTeePubKey {
	kty: "EC";
	crv: "P-256";
	alg: "ECDH-ES+A256KW";
	x: string;
	y: string;
}

export interface RsaTeePubKey {
	kty: "RSA";
	alg: "RSA-OAEP-256";
	n: string;
	e: string;
}

export type TeePubKey = EcTeePubKey | RsaTeePubKey;

export interface ParsedTeePubKey {
	jwk: TeePubKey;
	/**
	 * The node public key, for RSA. EC keys need none: the JWE is made from the raw point, which
	 * parsing has already checked is on the curve (importing a KeyObject would cost ~10% of a
	 * broker's round trip).
	 */
	key?: KeyObject;
	/** RFC 7638 JWK thumbprint: base64url(SHA-256 of the required members, sorted). */
	thumbprint: string;
}

const B64U = /^[A-Za-z0-9_-]*$/;
const B64U_VALUE =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/**
 * Decodes base64url text that must be canonical (RFC 7515 §2: no padding, no whitespace, no
 * other alphabet, unused trailing bits zero), or returns undefined. A non-canonical encoding
 * would let two different strings name the same bytes.
 */
export function decodeBase64urlStrict(text: string): Buffer | undefined {
	if (!B64U.test(text)) return undefined;
	const rem = text.length % 4;
	if (rem === 1) return undefined;
	if (rem !== 0) {
		const last = B64U_VALUE.indexOf(text.charAt(text.length - 1));
		if ((last & (rem === 2 ? 0x0f : 0x03)) !== 0) return undefined;
	}
	return Buffer.from(text, "base64url");
}

const EC_MEMBERS = ["alg", "crv", "kty", "x", "y"];
const RSA_MEMBERS = ["alg", "e", "kty", "n"];
const ALG_FOR: Record<string, string> = {
	EC: "ECDH-ES+A256KW",
	RSA: "RSA-OAEP-256",
};
const MIN_RSA_BITS = 2048;
const MAX_RSA_BITS = 8192;

function bad(what: string, why: string): DadiError {
	return new DadiError("INPUT_INVALID", `${what}: ${why}`);
}

function checkMembers(
	o: Record<string, unknown>,
	expected: readonly string[],
	what: string,
	kty: string,
): void {
	const keys = Object.keys(o);
	const extra = keys.filter((k) => !expected.includes(k));
	if (extra.length > 0)
		throw bad(
			what,
			`unexpected member(s) ${extra
				.slice(0, 5)
				.map((k) => JSON.stringify(k.slice(0, 40)))
				.join(
					", ",
				)} in a ${kty} tee-pubkey; expected exactly ${expected.join(", ")}`,
		);
	for (const k of expected)
		if (!Object.hasOwn(o, k))
			throw bad(what, `missing member "${k}" in a ${kty} tee-pubkey`);
}

function b64uMember(
	o: Record<string, unknown>,
	name: string,
	what: string,
): Buffer {
	const v = o[name];
	if (typeof v !== "string")
		throw bad(what, `"${name}" must be a base64url string`);
	const bytes = decodeBase64urlStrict(v);
	if (bytes === undefined)
		throw bad(
			what,
			`"${name}" is not canonical base64url without padding (RFC 7515 §2)`,
		);
	return bytes;
}

function bitLength(bytes: Buffer): number {
	const first = bytes[0] ?? 0;
	return first === 0 ? 0 : (bytes.length - 1) * 8 + (32 - Math.clz32(first));
}

function thumbprintOf(canonical: string): string {
	return createHash("sha256").update(canonical).digest("base64url");
}

const EC_UNCOMPRESSED = Buffer.from([4]);

function importKey(jwk: Record<string, string>, what: string): KeyObject {
	try {
		return createPublicKey({ key: jwk, format: "jwk" });
	} catch {
		throw bad(
			what,
			jwk.kty === "EC"
				? "the EC point is not on the P-256 curve"
				: "the RSA public key is not usable",
		);
	}
}

/** Parses and checks a tee-pubkey JWK. `what` names it in errors (e.g. "runtime-data tee-pubkey"). */
export function parseTeePubKey(value: unknown, what: string): ParsedTeePubKey {
	if (typeof value !== "object" || value === null || Array.isArray(value))
		throw bad(what, "expected a JSON object (a public JWK)");
	const o = value as Record<string, unknown>;
	const kty = o.kty;
	if (kty !== "EC" && kty !== "RSA")
		throw bad(
			what,
			`"kty" must be "EC" (P-256, ECDH-ES+A256KW) or "RSA" (RSA-OAEP-256)`,
		);
	checkMembers(o, kty === "EC" ? EC_MEMBERS : RSA_MEMBERS, what, kty);
	if (o.alg !== ALG_FOR[kty])
		throw bad(what, `"alg" must be "${ALG_FOR[kty]}" for a ${kty} tee-pubkey`);

	if (kty === "EC") {
		if (o.crv !== "P-256") throw bad(what, `"crv" must be "P-256"`);
		const x = b64uMember(o, "x", what);
		const y = b64uMember(o, "y", what);
		if (x.length !== 32 || y.length !== 32)
			throw bad(
				what,
				`P-256 coordinates must be exactly 32 bytes each; found x ${x.length}, y ${y.length}`,
			);
		const jwk: EcTeePubKey = {
			kty: "EC",
			crv: "P-256",
			alg: "ECDH-ES+A256KW",
			x: o.x as string,
			y: o.y as string,
		};
		try {
			ECDH.convertKey(
				Buffer.concat([EC_UNCOMPRESSED, x, y]),
				"prime256v1",
				undefined,
				undefined,
				"uncompressed",
			);
		} catch {
			throw bad(what, "the EC point is not on the P-256 curve");
		}
		return {
			jwk,
			thumbprint: thumbprintOf(
				`{"crv":"P-256","kty":"EC","x":"${jwk.x}","y":"${jwk.y}"}`,
			),
		};
	}

	const n = b64uMember(o, "n", what);
	if (o.e !== "AQAB")
		throw bad(what, `"e" must be "AQAB" (the public exponent 65537)`);
	if (n.length === 0 || n[0] === 0)
		throw bad(
			what,
			`"n" must be the modulus in minimal big-endian form (no leading zero bytes)`,
		);
	const bits = bitLength(n);
	if (bits < MIN_RSA_BITS || bits > MAX_RSA_BITS)
		throw bad(
			what,
			`the RSA modulus has ${bits} bits; it must have ${MIN_RSA_BITS} to ${MAX_RSA_BITS}`,
		);
	if (((n[n.length - 1] as number) & 1) === 0)
		throw bad(what, "the RSA modulus is even, so it is not an RSA modulus");
	const jwk: RsaTeePubKey = {
		kty: "RSA",
		alg: "RSA-OAEP-256",
		n: o.n as string,
		e: "AQAB",
	};
	const key = importKey({ kty: "RSA", n: jwk.n, e: jwk.e }, what);
	return {
		jwk,
		key,
		thumbprint: thumbprintOf(`{"e":"AQAB","kty":"RSA","n":"${jwk.n}"}`),
	};
}

/**
 * Guest side: a fresh key pair for one attestation, and the tee-pubkey JWK to send. EC is P-256;
 * RSA is 3072 bits with e = 65537.
 *
 * The private KeyObject is built by importing the generated material rather than taken from
 * generateKeyPairSync: on Node 20, exporting a generateKeyPairSync key as JWK (which jose does
 * to use a KeyObject) can deadlock when a garbage collection finalises the key-generation job
 * while the export holds the key's lock. Imported keys have no such job.
 */
export function generateEphemeralKey(kind: "ec" | "rsa" = "ec"): {
	privateKey: KeyObject;
	jwk: TeePubKey;
} {
	if (kind === "ec") {
		const ecdh = createECDH("prime256v1");
		const point = ecdh.generateKeys();
		const raw = ecdh.getPrivateKey();
		const d = Buffer.alloc(32);
		raw.copy(d, 32 - raw.length);
		const x = point.toString("base64url", 1, 33);
		const y = point.toString("base64url", 33, 65);
		const privateKey = createPrivateKey({
			key: { kty: "EC", crv: "P-256", x, y, d: d.toString("base64url") },
			format: "jwk",
		});
		d.fill(0);
		raw.fill(0);
		return {
			privateKey,
			jwk: { kty: "EC", crv: "P-256", alg: "ECDH-ES+A256KW", x, y },
		};
	}
	if (kind === "rsa") {
		const { privateKey: der } = generateKeyPairSync("rsa", {
			modulusLength: 3072,
			publicExponent: 65537,
			privateKeyEncoding: { type: "pkcs8", format: "der" },
			publicKeyEncoding: { type: "spki", format: "der" },
		});
		const privateKey = createPrivateKey({
			key: der,
			format: "der",
			type: "pkcs8",
		});
		der.fill(0);
		const j = createPublicKey(privateKey).export({ format: "jwk" });
		return {
			privateKey,
			jwk: {
				kty: "RSA",
				alg: "RSA-OAEP-256",
				n: j.n as string,
				e: j.e as string,
			},
		};
	}
	throw new DadiError(
		"USAGE",
		`ephemeral key kind must be "ec" or "rsa", not ${JSON.stringify(String(kind))}`,
	);
}
