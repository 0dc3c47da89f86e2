/**
 * The Trustee KBS protocol v0 (RCAR: request, challenge, attestation, response) as plain data:
 * request bodies parsed strictly from untrusted JSON, responses built. No I/O.
 *
 *   POST /kbs/v0/auth    {version, tee, extra-params}            → {nonce, extra-params} + kbs-session-id cookie
 *   POST /kbs/v0/attest  {init-data, runtime-data, tee-evidence} → {token}
 *   GET  /kbs/v0/resource/REPO/TYPE/TAG                          → flattened JWE to the tee-pubkey
 */
import { DadiError } from "../errors.js";
import { parseResourcePath } from "../policy/resource-pattern.js";
import type { HashAlgorithm } from "./report-data.js";

/** The protocol version Trustee accepts, and so do we: exactly this. */
export const KBS_PROTOCOL_VERSION = "0.4.0";
export const SESSION_COOKIE = "kbs-session-id";
export const SUPPORTED_HASHES_KEY = "supported-hash-algorithms";
export const SELECTED_HASH_KEY = "selected-hash-algorithm";
/** Every TEE name the protocol defines (kbs-types); a broker verifies only some of them. */
export const PROTOCOL_TEES = [
	"azsnpvtpm",
	"aztdxvtpm",
	"nvidia",
	"sev",
	"sgx",
	"snp",
	"tdx",
	"cca",
	"csv",
	"se",
	"hygondcu",
	"tpm",
	"sample",
	"sampledevice",
] as const;

/** Our preference when the guest offers several. */
const HASH_PREFERENCE: HashAlgorithm[] = ["sha384", "sha512", "sha256"];

export interface AuthRequest {
	tee: string;
	/** The digest for report_data and init-data: negotiated, sha384 when the guest offers nothing. */
	hash: HashAlgorithm;
	/** Whether the guest took part in negotiation (then the challenge names the choice). */
	negotiated: boolean;
}

export interface InitData {
	format: string;
	body: string;
}

export interface AttestRequest {
	initData: InitData | null;
	nonce: string;
	/** The tee-pubkey JWK exactly as sent (report_data is computed over it). */
	teePubKey: unknown;
	/** primary_evidence as sent (its shape is the TEE's). */
	evidence: unknown;
	additionalEvidence: string;
}

function bad(detail: string): DadiError {
	return new DadiError("INPUT_INVALID", detail);
}

function object(v: unknown, what: string): Record<string, unknown> {
	if (typeof v !== "object" || v === null || Array.isArray(v))
		throw bad(`${what} must be a JSON object`);
	return v as Record<string, unknown>;
}

function onlyKeys(
	o: Record<string, unknown>,
	allowed: readonly string[],
	what: string,
): void {
	for (const k of Object.keys(o))
		if (!allowed.includes(k))
			throw bad(
				`${what} has an unknown member "${k.slice(0, 64)}" (expected ${allowed.join(", ")})`,
			);
}

function str(v: unknown, what: string, max: number): string {
	if (typeof v !== "string") throw bad(`${what} must be a string`);
	if (v.length > max) throw bad(`${what} is longer than ${max} characters`);
	return v;
}

export function parseAuthRequest(v: unknown): AuthRequest {
	const o = object(v, "the auth request");
	onlyKeys(o, ["version", "tee", "extra-params"], "the auth request");
	const version = str(o.version, '"version"', 32);
	if (version !== KBS_PROTOCOL_VERSION)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`protocol version "${version.slice(0, 32)}" is not supported; this broker speaks KBS protocol ${KBS_PROTOCOL_VERSION}`,
		);
	const tee = str(o.tee, '"tee"', 32);
	if (!(PROTOCOL_TEES as readonly string[]).includes(tee))
		throw bad(`"tee" "${tee}" is not a KBS TEE type`);
	const extra = o["extra-params"];
	if (extra === undefined || extra === "" || extra === null)
		return { tee, hash: "sha384", negotiated: false };
	const e = object(extra, '"extra-params"');
	const offered = e[SUPPORTED_HASHES_KEY];
	if (offered === undefined) return { tee, hash: "sha384", negotiated: false };
	if (!Array.isArray(offered) || offered.length > 16)
		throw bad(`"${SUPPORTED_HASHES_KEY}" must be a list of at most 16 names`);
	const names = offered.map((x, i) =>
		str(x, `"${SUPPORTED_HASHES_KEY}"[${i}]`, 32).toLowerCase(),
	);
	const hash = HASH_PREFERENCE.find((h) => names.includes(h));
	if (!hash)
		throw bad(
			`none of the offered hash algorithms is supported (this broker supports ${HASH_PREFERENCE.join(", ")})`,
		);
	return { tee, hash, negotiated: true };
}

export function challengeBody(
	nonce: string,
	req: AuthRequest,
): Record<string, unknown> {
	return {
		nonce,
		"extra-params": req.negotiated ? { [SELECTED_HASH_KEY]: req.hash } : "",
	};
}

/** Evidence documents are small (an SNP report with its certificates is ~6 KiB, a TDX quote ~8 KiB). */
const MAX_NONCE = 128;

export function parseAttestRequest(v: unknown): AttestRequest {
	const o = object(v, "the attest request");
	onlyKeys(
		o,
		["init-data", "runtime-data", "tee-evidence"],
		"the attest request",
	);
	let initData: InitData | null = null;
	if (o["init-data"] !== undefined && o["init-data"] !== null) {
		const i = object(o["init-data"], '"init-data"');
		onlyKeys(i, ["format", "body"], '"init-data"');
		initData = {
			format: str(i.format, '"init-data".format', 32),
			body: str(i.body, '"init-data".body', 64 << 10),
		};
	}
	const rd = object(o["runtime-data"], '"runtime-data"');
	onlyKeys(rd, ["nonce", "tee-pubkey"], '"runtime-data"');
	const nonce = str(rd.nonce, '"runtime-data".nonce', MAX_NONCE);
	if (rd["tee-pubkey"] === undefined)
		throw bad('"runtime-data" has no "tee-pubkey"');
	const ev = object(o["tee-evidence"], '"tee-evidence"');
	onlyKeys(ev, ["primary_evidence", "additional_evidence"], '"tee-evidence"');
	if (ev.primary_evidence === undefined || ev.primary_evidence === null)
		throw bad('"tee-evidence" has no "primary_evidence"');
	const additional =
		ev.additional_evidence === undefined
			? ""
			: str(ev.additional_evidence, '"additional_evidence"', 1 << 20);
	return {
		initData,
		nonce,
		teePubKey: rd["tee-pubkey"],
		evidence: ev.primary_evidence,
		additionalEvidence: additional,
	};
}

/** A KBS resource path REPO/TYPE/TAG from a URL path tail (already split off /kbs/v0/resource/). */
export function resourcePathFromUrl(tail: string): string {
	return parseResourcePath(tail, "the resource path", "INPUT_INVALID").path;
}
