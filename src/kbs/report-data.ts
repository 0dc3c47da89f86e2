/**
 * The report_data binding of the KBS protocol: the TEE evidence carries
 *
 *   HASH(RFC 8785 canonical JSON of {"additional-evidence": <string>, "nonce": <string>,
 *        "tee-pubkey": <the JWK object as sent>})
 *
 * at the start of its report_data field, zero-padded to the field's size. HASH is SHA-384 unless
 * the broker's challenge selected SHA-256 or SHA-512. This ties the evidence to this session's
 * nonce and to the key the released resource will be encrypted to.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { DadiError } from "../errors.js";
import { canonicalJson } from "./canonical-json.js";

export type HashAlgorithm = "sha384" | "sha256" | "sha512";

export const DEFAULT_HASH_ALGORITHM: HashAlgorithm = "sha384";

/**
 * Accepts "sha256", "sha384" or "sha512" in any letter case, with or without a hyphen
 * ("SHA-384"), and returns the lower-case form without the hyphen.
 */
export function parseHashAlgorithm(text: string, what: string): HashAlgorithm {
	if (typeof text === "string") {
		const t = text.toLowerCase().replace(/^sha-/, "sha");
		if (t === "sha384" || t === "sha256" || t === "sha512") return t;
	}
	throw new DadiError(
		"INPUT_INVALID",
		`${what}: unsupported hash algorithm ${JSON.stringify(String(text).slice(0, 40))}; expected sha384, sha256 or sha512`,
	);
}

/** The digest the evidence's report_data must start with. */
export function reportDataDigest(o: {
	nonce: string;
	teePubKey: unknown;
	additionalEvidence?: string;
	hash?: HashAlgorithm;
}): Buffer {
	if (typeof o.nonce !== "string")
		throw new DadiError(
			"INPUT_INVALID",
			"report data: the nonce must be a string",
		);
	const additional = o.additionalEvidence ?? "";
	if (typeof additional !== "string")
		throw new DadiError(
			"INPUT_INVALID",
			"report data: additional-evidence must be a string",
		);
	const hash = parseHashAlgorithm(
		o.hash ?? DEFAULT_HASH_ALGORITHM,
		"report data",
	);
	const canonical = canonicalJson({
		"additional-evidence": additional,
		nonce: o.nonce,
		"tee-pubkey": o.teePubKey,
	});
	return createHash(hash).update(canonical, "utf8").digest();
}

/**
 * True iff `reportData` starts with `expected` and every byte after it is zero, and, when
 * `fieldSize` is given, `reportData` is no longer than it. The digest part is compared in
 * constant time. An empty `expected` never matches.
 */
export function reportDataMatches(
	reportData: Buffer,
	expected: Buffer,
	fieldSize?: number,
): boolean {
	if (expected.length === 0) return false;
	if (reportData.length < expected.length) return false;
	if (fieldSize !== undefined && reportData.length > fieldSize) return false;
	const digestOk = timingSafeEqual(
		reportData.subarray(0, expected.length),
		expected,
	);
	let padding = 0;
	for (let i = expected.length; i < reportData.length; i++)
		padding |= reportData[i] as number;
	return digestOk && padding === 0;
}
