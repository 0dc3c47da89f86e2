/**
 * The broker's attestation token: an EAR-style JWT (ES256) stating what the broker verified — the
 * normalized claims, the TEE, the evidence digest and the tee-pubkey a released resource will be
 * encrypted to. The guest may present it as a bearer token to fetch resources without the
 * session cookie. Signed and verified with node:crypto; verification is strict (header, algorithm,
 * issuer, times) and every failure is the same SESSION_INVALID error.
 */

import {
	createHash,
	createPrivateKey,
	createPublicKey,
	generateKeyPairSync,
	type KeyObject,
	sign,
	verify,
} from "node:crypto";
import type { Claims } from "../attest/claims.js";
import { randomFromPool } from "../crypto/random-pool.js";
import { DadiError } from "../errors.js";
import type { TeePubKey } from "../kbs/tee-pubkey.js";

export const TOKEN_ISSUER = "dadi-broker";
const EAR_PROFILE = "tag:github.com,2023:veraison/ear";

export interface TokenClaims {
	iss: string;
	iat: number;
	exp: number;
	jti: string;
	eat_profile: string;
	"ear.verifier-id": { developer: string; build: string };
	submods: Record<string, { "ear.status": "affirming"; "dadi.claims": Claims }>;
	"evidence-digest": string;
	"tee-pubkey": TeePubKey;
}

export interface IssueInput {
	claims: Claims;
	teePubKey: TeePubKey;
	evidenceDigest: string;
	nowMs: number;
	ttlSeconds: number;
	build: string;
}

export interface TokenSigner {
	readonly kid: string;
	readonly publicKey: KeyObject;
	issue(o: IssueInput): string;
	/** As issue, with the signature made by `signInput` (a crypto worker) or off the event loop. */
	issueAsync(
		o: IssueInput,
		signInput?: (input: string) => Promise<string>,
	): Promise<string>;
	/** The base64url ES256 signature of a JWT signing input, computed in libuv's thread pool. */
	signInput(input: string): Promise<string>;
	/** The token's claims if it is ours, well-formed and unexpired; SESSION_INVALID otherwise. */
	check(token: string, nowMs: number): TokenClaims;
}

export function generateSigningKey(): Buffer {
	const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
	return privateKey.export({ format: "der", type: "pkcs8" });
}

const invalid = () =>
	new DadiError(
		"SESSION_INVALID",
		"the attestation token is not valid (forged, damaged, expired or from another broker); attest again",
	);

export function tokenSigner(pkcs8: Buffer): TokenSigner {
	const privateKey = createPrivateKey({
		key: pkcs8,
		format: "der",
		type: "pkcs8",
	});
	const publicKey = createPublicKey(privateKey);
	const spki = publicKey.export({ format: "der", type: "spki" });
	const kid = createHash("sha256")
		.update(spki)
		.digest("base64url")
		.slice(0, 16);
	const header = Buffer.from(
		JSON.stringify({ alg: "ES256", typ: "JWT", kid }),
	).toString("base64url");
	const payloadOf = (o: IssueInput): string => {
		const iat = Math.floor(o.nowMs / 1000);
		const body: TokenClaims = {
			iss: TOKEN_ISSUER,
			iat,
			exp: iat + o.ttlSeconds,
			jti: randomFromPool(12).toString("base64url"),
			eat_profile: EAR_PROFILE,
			"ear.verifier-id": { developer: "dadi", build: o.build },
			submods: {
				[o.claims.tee]: {
					"ear.status": "affirming",
					"dadi.claims": o.claims,
				},
			},
			"evidence-digest": o.evidenceDigest,
			"tee-pubkey": o.teePubKey,
		};
		const input = `${header}.${Buffer.from(JSON.stringify(body)).toString("base64url")}`;
		return input;
	};
	return {
		kid,
		publicKey,
		issue(o) {
			const input = payloadOf(o);
			const sig = sign("sha256", Buffer.from(input), {
				key: privateKey,
				dsaEncoding: "ieee-p1363",
			});
			return `${input}.${sig.toString("base64url")}`;
		},
		async issueAsync(o, signInput) {
			const input = payloadOf(o);
			return `${input}.${await (signInput ?? this.signInput)(input)}`;
		},
		signInput(input) {
			// The ECDSA signature runs in libuv's thread pool, off the event loop.
			return new Promise((resolve, reject) =>
				sign(
					"sha256",
					Buffer.from(input),
					{ key: privateKey, dsaEncoding: "ieee-p1363" },
					(err, sig) =>
						err ? reject(err) : resolve(sig.toString("base64url")),
				),
			);
		},
		check(token, nowMs) {
			if (typeof token !== "string" || token.length > 16384) throw invalid();
			const parts = token.split(".");
			if (parts.length !== 3 || parts[0] !== header) throw invalid();
			if (
				!/^[A-Za-z0-9_-]+$/.test(parts[1] ?? "") ||
				!/^[A-Za-z0-9_-]{86}$/.test(parts[2] ?? "")
			)
				throw invalid();
			// Only the canonical spelling: base64url has spare bits in its last character.
			const canonical = (t: string) =>
				Buffer.from(t, "base64url").toString("base64url") === t;
			if (!canonical(parts[1] as string) || !canonical(parts[2] as string))
				throw invalid();
			const ok = verify(
				"sha256",
				Buffer.from(`${parts[0]}.${parts[1]}`),
				{ key: publicKey, dsaEncoding: "ieee-p1363" },
				Buffer.from(parts[2] as string, "base64url"),
			);
			if (!ok) throw invalid();
			let body: TokenClaims;
			try {
				body = JSON.parse(
					Buffer.from(parts[1] as string, "base64url").toString("utf8"),
				);
			} catch {
				throw invalid();
			}
			const now = Math.floor(nowMs / 1000);
			if (
				body?.iss !== TOKEN_ISSUER ||
				typeof body.exp !== "number" ||
				typeof body.iat !== "number" ||
				now >= body.exp ||
				body.iat > now + 60 ||
				typeof body["tee-pubkey"] !== "object" ||
				typeof body.submods !== "object"
			)
				throw invalid();
			return body;
		},
	};
}
