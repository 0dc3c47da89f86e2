/**
 * The HCL report's variable data ("runtime data"): JSON the paravisor writes and the hardware report
 * binds (hcl-report.ts). What is read from it:
 *
 *   {"keys": [{"kid": "HCLAkPub", "kty": "RSA", "n": b64url, "e": b64url, ...}, ...],
 *    "vm-configuration": {"secure-boot": bool, "tpm-enabled": bool, "console-enabled": bool,
 *                         "tpm-persisted": bool, "vmUniqueId": string,
 *                         "root-cert-thumbprint": string},        // each optional
 *    "user-data": hex of 64 bytes}                                 // optional
 *
 * The attestation key (AK) is the one key with kid "HCLAkPub": RSA, 2048 to 4096 bits. Other
 * members are ignored (the paravisor adds some; this text is bound by the hardware signature).
 * Pure.
 */
import { createPublicKey, type KeyObject } from "node:crypto";
import { DadiError } from "../../errors.js";

export interface VmConfiguration {
	secureBoot?: boolean;
	tpmEnabled?: boolean;
	consoleEnabled?: boolean;
	tpmPersisted?: boolean;
	vmUniqueId?: string;
	rootCertThumbprint?: string;
}

export interface VarData {
	/** The vTPM attestation key. */
	akPub: KeyObject;
	/** Its modulus (big-endian, no leading zero), for claims. */
	akModulus: Buffer;
	vmConfiguration: VmConfiguration;
	/** The 64 user-data bytes, when present. */
	userData?: Buffer;
}

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `Azure HCL runtime data: ${detail}`);
}

const B64URL = /^[A-Za-z0-9_-]+$/;

function isObject(v: unknown): v is Record<string, unknown> {
	return typeof v === "object" && v !== null && !Array.isArray(v);
}

function b64url(v: unknown, what: string, maxBytes: number): Buffer {
	if (
		typeof v !== "string" ||
		v.length > Math.ceil((maxBytes * 4) / 3) ||
		!B64URL.test(v)
	)
		throw invalid(`${what} must be unpadded base64url`);
	const out = Buffer.from(v, "base64url");
	if (out.toString("base64url") !== v)
		throw invalid(`${what} is not canonical base64url`);
	return out;
}

export function parseVarData(varData: Buffer): VarData {
	let j: unknown;
	try {
		j = JSON.parse(varData.toString("utf8"));
	} catch {
		throw invalid("not JSON");
	}
	if (!isObject(j)) throw invalid("not a JSON object");
	const keys = j.keys;
	if (!Array.isArray(keys) || keys.length > 16)
		throw invalid('"keys" must be a list of at most 16 JWKs');
	const aks = keys.filter((k) => isObject(k) && k.kid === "HCLAkPub");
	if (aks.length !== 1)
		throw invalid(`expected exactly one key "HCLAkPub", found ${aks.length}`);
	const ak = aks[0] as Record<string, unknown>;
	if (ak.kty !== "RSA") throw invalid("HCLAkPub is not an RSA key");
	const n = b64url(ak.n, "HCLAkPub.n", 512);
	const e = b64url(ak.e, "HCLAkPub.e", 8);
	if (n[0] === 0 || n.length < 256 || n.length > 512)
		throw invalid("HCLAkPub must be 2048 to 4096 bits");
	if (e.length === 0 || e[0] === 0) throw invalid("HCLAkPub.e is malformed");
	let akPub: KeyObject;
	try {
		akPub = createPublicKey({
			key: {
				kty: "RSA",
				n: n.toString("base64url"),
				e: e.toString("base64url"),
			},
			format: "jwk",
		});
	} catch {
		throw invalid("HCLAkPub is not a usable RSA key");
	}
	const vmConfiguration: VmConfiguration = {};
	const vc = j["vm-configuration"];
	if (vc !== undefined) {
		if (!isObject(vc)) throw invalid('"vm-configuration" must be an object');
		const bool = (k: string): boolean | undefined => {
			const v = vc[k];
			if (v === undefined) return undefined;
			if (typeof v !== "boolean")
				throw invalid(`vm-configuration "${k}" must be true or false`);
			return v;
		};
		const str = (k: string): string | undefined => {
			const v = vc[k];
			if (v === undefined) return undefined;
			if (typeof v !== "string" || v.length > 256)
				throw invalid(`vm-configuration "${k}" must be a short string`);
			return v;
		};
		const set = <K extends keyof VmConfiguration>(
			k: K,
			v: VmConfiguration[K] | undefined,
		) => {
			if (v !== undefined) vmConfiguration[k] = v;
		};
		set("secureBoot", bool("secure-boot"));
		set("tpmEnabled", bool("tpm-enabled"));
		set("consoleEnabled", bool("console-enabled"));
		set("tpmPersisted", bool("tpm-persisted"));
		set("vmUniqueId", str("vmUniqueId"));
		set("rootCertThumbprint", str("root-cert-thumbprint"));
	}
	const out: VarData = { akPub, akModulus: n, vmConfiguration };
	const ud = j["user-data"];
	if (ud !== undefined) {
		if (typeof ud !== "string" || !/^[0-9a-fA-F]{128}$/.test(ud))
			throw invalid('"user-data" must be hex of 64 bytes');
		out.userData = Buffer.from(ud, "hex");
	}
	return out;
}
