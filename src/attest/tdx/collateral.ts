/**
 * Intel PCS collateral for TDX (pure): TCB info (v3, id "TDX") and QE identity (v2, id "TD_QE").
 *
 * A PCS response is `{"tcbInfo": {...}, "signature": "<hex r||s>"}` (or `enclaveIdentity`). The
 * ECDSA P-256 / SHA-256 signature covers the exact bytes of the member's JSON value as they appear
 * in the response text, so the value's range is located by scanning the text (never re-serialized).
 * The signing chain (TCB-Info-Issuer-Chain header, PEM) must end in a pinned root and its leaf must
 * be the Intel SGX TCB Signing certificate (a PCK or PCK CA key chaining to the same root must not be
 * able to sign collateral).
 *
 * TCB status (Intel TDX DCAP rules, TCB info v3):
 *  - the first TCB level (levels are ordered newest first) whose 16 sgxtcbcomponents SVNs are all <=
 *    the PCK certificate's TCB components, whose pcesvn <= the PCK's PCESVN, and whose tdxtcbcomponents
 *    SVNs are <= the quote's TEE_TCB_SVN bytes gives the platform status. When TEE_TCB_SVN[1] (the TDX
 *    module major version) is > 0, bytes 0 and 1 (the module's own SVNs) are not compared there:
 *    the module is then appraised by the tdxModuleIdentities entry "TDX_<major, 2 hex digits>"
 *    (MRSIGNERSEAM and masked SEAMATTRIBUTES must match; its first level with isvsvn <= TEE_TCB_SVN[0]
 *    gives the module status, which is converged with the platform's);
 *  - no matching level (or no module identity/level) gives TCB_STATUS_NOT_SUPPORTED: Intel treats
 *    such a TCB as unsupported; we report it and let policy decide;
 *  - the QE identity's first level with isvsvn <= the QE report's ISVSVN gives the QE status (none:
 *    OutOfDate, as Intel's QVL), converged with the platform status the same way.
 */
import {
	createPublicKey,
	verify as cryptoVerify,
	type KeyObject,
} from "node:crypto";
import { DadiError } from "../../errors.js";
import { pemCertificates } from "./quote.js";
import {
	type CheckedChain,
	checkChain,
	checkChainWindow,
	type TdxTrust,
} from "./trust.js";

/** The status reported when the platform matches no TCB level Intel lists. */
export const TCB_STATUS_NOT_SUPPORTED = "TcbNotSupported";

export const TCB_STATUSES = [
	"UpToDate",
	"SWHardeningNeeded",
	"ConfigurationNeeded",
	"ConfigurationAndSWHardeningNeeded",
	"OutOfDate",
	"OutOfDateConfigurationNeeded",
	"Revoked",
] as const;

export interface TcbLevel {
	sgxComponents: number[];
	pceSvn: number;
	tdxComponents: number[];
	tcbDate: string;
	tcbStatus: string;
	advisoryIds: string[];
}

export interface IsvLevel {
	isvSvn: number;
	tcbDate: string;
	tcbStatus: string;
	advisoryIds: string[];
}

export interface TdxModuleIdentity {
	id: string;
	mrSigner: Buffer;
	attributes: Buffer;
	attributesMask: Buffer;
	tcbLevels: IsvLevel[];
}

export interface TcbInfo {
	id: string;
	version: number;
	issueDate: Date;
	nextUpdate: Date;
	/** Lowercase hex. */
	fmspc: string;
	/** Lowercase hex. */
	pceId: string;
	tcbEvaluationDataNumber: number;
	tdxModule?: {
		mrSigner: Buffer;
		attributes: Buffer;
		attributesMask: Buffer;
	};
	tdxModuleIdentities: TdxModuleIdentity[];
	tcbLevels: TcbLevel[];
}

export interface QeIdentity {
	id: string;
	version: number;
	issueDate: Date;
	nextUpdate: Date;
	tcbEvaluationDataNumber: number;
	miscSelect: number;
	miscSelectMask: number;
	attributes: Buffer;
	attributesMask: Buffer;
	mrSigner: Buffer;
	isvProdId: number;
	tcbLevels: IsvLevel[];
}

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `TDX collateral: ${detail}`);
}

const MAX_COLLATERAL = 1024 * 1024;

/**
 * Finds the text of the top-level member `key`'s value in a JSON object text, by scanning (strings
 * and nesting aware). The whole text must also be valid JSON with `key` present exactly once.
 */
export function rawMemberValue(text: string, key: string): string {
	let i = 0;
	const ws = () => {
		while (i < text.length && /[ \t\r\n]/.test(text[i] as string)) i++;
	};
	const str = (): string => {
		if (text[i] !== '"') throw invalid("expected a string");
		const s = i;
		i++;
		while (i < text.length && text[i] !== '"') {
			if (text[i] === "\\") i++;
			i++;
		}
		if (i >= text.length) throw invalid("unterminated string");
		i++;
		return JSON.parse(text.slice(s, i)) as string;
	};
	const value = (): void => {
		ws();
		const c = text[i];
		if (c === '"') {
			str();
			return;
		}
		if (c === "{" || c === "[") {
			let depth = 0;
			while (i < text.length) {
				const d = text[i];
				if (d === '"') {
					str();
					continue;
				}
				if (d === "{" || d === "[") depth++;
				else if (d === "}" || d === "]") {
					depth--;
					if (depth === 0) {
						i++;
						return;
					}
				}
				i++;
			}
			throw invalid("unterminated value");
		}
		while (i < text.length && /[^,}\] \t\r\n]/.test(text[i] as string)) i++;
	};
	let found: string | undefined;
	let count = 0;
	ws();
	if (text[i] !== "{") throw invalid("expected a JSON object");
	i++;
	ws();
	if (text[i] === "}") i++;
	else
		for (;;) {
			ws();
			const k = str();
			ws();
			if (text[i] !== ":") throw invalid("expected ':'");
			i++;
			ws();
			const s = i;
			value();
			if (k === key) {
				found = text.slice(s, i);
				count++;
			}
			ws();
			if (text[i] === ",") {
				i++;
				continue;
			}
			if (text[i] === "}") {
				i++;
				break;
			}
			throw invalid("expected ',' or '}'");
		}
	ws();
	if (i !== text.length) throw invalid("bytes after the JSON object");
	if (count !== 1 || found === undefined)
		throw invalid(`"${key}" must appear exactly once`);
	return found;
}

export interface SignedCollateral {
	/** The exact signed bytes. */
	raw: Buffer;
	/** The parsed value. */
	value: Record<string, unknown>;
	/** r||s, 64 bytes. */
	signature: Buffer;
}

/** Splits a PCS response into the signed member value, its parse and its signature. */
export function splitSignedResponse(
	text: string,
	key: "tcbInfo" | "enclaveIdentity",
): SignedCollateral {
	if (typeof text !== "string" || text.length > MAX_COLLATERAL)
		throw invalid(`${key} response must be text of at most 1 MiB`);
	let whole: unknown;
	try {
		whole = JSON.parse(text);
	} catch {
		throw invalid(`${key} response is not JSON`);
	}
	const rawText = rawMemberValue(text, key);
	const w = whole as Record<string, unknown>;
	const sig = w.signature;
	if (typeof sig !== "string" || !/^[0-9a-fA-F]{128}$/.test(sig))
		throw invalid(`${key} response: "signature" must be 128 hex digits`);
	const value = w[key];
	if (typeof value !== "object" || value === null || Array.isArray(value))
		throw invalid(`"${key}" must be an object`);
	return {
		raw: Buffer.from(rawText, "utf8"),
		value: value as Record<string, unknown>,
		signature: Buffer.from(sig, "hex"),
	};
}

/** ECDSA P-256 / SHA-256 with an r||s signature. */
export function verifyP1363(
	data: Buffer,
	signature: Buffer,
	key: KeyObject,
): boolean {
	try {
		return cryptoVerify(
			"sha256",
			data,
			{ key, dsaEncoding: "ieee-p1363" },
			signature,
		);
	} catch {
		return false;
	}
}

// --- field readers -------------------------------------------------------------------------

type Obj = Record<string, unknown>;

function obj(v: unknown, what: string): Obj {
	if (typeof v !== "object" || v === null || Array.isArray(v))
		throw invalid(`${what} must be an object`);
	return v as Obj;
}
function arr(v: unknown, what: string, max = 1024): unknown[] {
	if (!Array.isArray(v) || v.length > max)
		throw invalid(`${what} must be an array of at most ${max}`);
	return v;
}
function int(v: unknown, what: string, max = 0xffff): number {
	if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > max)
		throw invalid(`${what} must be an integer 0..${max}`);
	return v;
}
function str(v: unknown, what: string): string {
	if (typeof v !== "string" || v.length > 256)
		throw invalid(`${what} must be a short string`);
	return v;
}
function hex(v: unknown, what: string, bytes: number): Buffer {
	const s = str(v, what);
	if (s.length !== bytes * 2 || !/^[0-9a-fA-F]*$/.test(s))
		throw invalid(`${what} must be ${bytes} bytes of hex`);
	return Buffer.from(s, "hex");
}
function date(v: unknown, what: string): Date {
	const s = str(v, what);
	const t = Date.parse(s);
	if (!/^\d{4}-\d\d-\d\dT/.test(s) || !Number.isFinite(t))
		throw invalid(`${what} must be an ISO 8601 date`);
	return new Date(t);
}
function advisories(v: unknown, what: string): string[] {
	if (v === undefined) return [];
	return arr(v, what).map((a) => str(a, what));
}
function status(v: unknown, what: string): string {
	const s = str(v, what);
	if (!(TCB_STATUSES as readonly string[]).includes(s))
		throw invalid(`${what}: unknown TCB status ${JSON.stringify(s)}`);
	return s;
}
function isvLevels(v: unknown, what: string): IsvLevel[] {
	return arr(v, what).map((l, i) => {
		const o = obj(l, `${what}[${i}]`);
		return {
			isvSvn: int(obj(o.tcb, `${what}[${i}].tcb`).isvsvn, "isvsvn"),
			tcbDate: str(o.tcbDate ?? "", "tcbDate"),
			tcbStatus: status(o.tcbStatus, "tcbStatus"),
			advisoryIds: advisories(o.advisoryIDs, "advisoryIDs"),
		};
	});
}
function components(v: unknown, what: string): number[] {
	const a = arr(v, what);
	if (a.length !== 16) throw invalid(`${what} must list 16 components`);
	return a.map((c, i) => int(obj(c, `${what}[${i}]`).svn, `${what} svn`, 255));
}

export function parseTcbInfo(value: Obj): TcbInfo {
	const id = str(value.id, "tcbInfo.id");
	const version = int(value.version, "tcbInfo.version");
	if (id !== "TDX" || version !== 3)
		throw new DadiError(
			"EVIDENCE_UNSUPPORTED",
			`TDX collateral: TCB info id ${JSON.stringify(id)} version ${version} (only "TDX" version 3)`,
		);
	const levels = arr(value.tcbLevels, "tcbLevels").map((l, i) => {
		const o = obj(l, `tcbLevels[${i}]`);
		const t = obj(o.tcb, `tcbLevels[${i}].tcb`);
		return {
			sgxComponents: components(t.sgxtcbcomponents, "sgxtcbcomponents"),
			pceSvn: int(t.pcesvn, "pcesvn"),
			tdxComponents: components(t.tdxtcbcomponents, "tdxtcbcomponents"),
			tcbDate: str(o.tcbDate ?? "", "tcbDate"),
			tcbStatus: status(o.tcbStatus, "tcbStatus"),
			advisoryIds: advisories(o.advisoryIDs, "advisoryIDs"),
		};
	});
	let tdxModule: TcbInfo["tdxModule"];
	if (value.tdxModule !== undefined) {
		const m = obj(value.tdxModule, "tdxModule");
		tdxModule = {
			mrSigner: hex(m.mrsigner, "tdxModule.mrsigner", 48),
			attributes: hex(m.attributes, "tdxModule.attributes", 8),
			attributesMask: hex(m.attributesMask, "tdxModule.attributesMask", 8),
		};
	}
	const ids =
		value.tdxModuleIdentities === undefined
			? []
			: arr(value.tdxModuleIdentities, "tdxModuleIdentities").map((m, i) => {
					const o = obj(m, `tdxModuleIdentities[${i}]`);
					return {
						id: str(o.id, "tdxModuleIdentities.id"),
						mrSigner: hex(o.mrsigner, "mrsigner", 48),
						attributes: hex(o.attributes, "attributes", 8),
						attributesMask: hex(o.attributesMask, "attributesMask", 8),
						tcbLevels: isvLevels(o.tcbLevels, "tdxModuleIdentities.tcbLevels"),
					};
				});
	return {
		id,
		version,
		issueDate: date(value.issueDate, "issueDate"),
		nextUpdate: date(value.nextUpdate, "nextUpdate"),
		fmspc: hex(value.fmspc, "fmspc", 6).toString("hex"),
		pceId: hex(value.pceId, "pceId", 2).toString("hex"),
		tcbEvaluationDataNumber: int(
			value.tcbEvaluationDataNumber,
			"tcbEvaluationDataNumber",
			0xffffffff,
		),
		tdxModule,
		tdxModuleIdentities: ids,
		tcbLevels: levels,
	};
}

export function parseQeIdentity(value: Obj): QeIdentity {
	const id = str(value.id, "enclaveIdentity.id");
	const version = int(value.version, "enclaveIdentity.version");
	if (id !== "TD_QE" || version !== 2)
		throw new DadiError(
			"EVIDENCE_UNSUPPORTED",
			`TDX collateral: QE identity id ${JSON.stringify(id)} version ${version} (only "TD_QE" version 2)`,
		);
	return {
		id,
		version,
		issueDate: date(value.issueDate, "issueDate"),
		nextUpdate: date(value.nextUpdate, "nextUpdate"),
		tcbEvaluationDataNumber: int(
			value.tcbEvaluationDataNumber,
			"tcbEvaluationDataNumber",
			0xffffffff,
		),
		miscSelect: hex(value.miscselect, "miscselect", 4).readUInt32BE(0),
		miscSelectMask: hex(value.miscselectMask, "miscselectMask", 4).readUInt32BE(
			0,
		),
		attributes: hex(value.attributes, "attributes", 16),
		attributesMask: hex(value.attributesMask, "attributesMask", 16),
		mrSigner: hex(value.mrsigner, "mrsigner", 32),
		isvProdId: int(value.isvprodid, "isvprodid"),
		tcbLevels: isvLevels(value.tcbLevels, "enclaveIdentity.tcbLevels"),
	};
}

// --- signature and window checks -----------------------------------------------------------

/** Parses the signing chain PEM and checks it ends in a pinned root with an Intel SGX TCB Signing leaf. */
export function checkSigningChain(
	pem: string,
	trust: TdxTrust,
	what: string,
): CheckedChain {
	if (typeof pem !== "string" || pem.length > 64 * 1024)
		throw invalid(`${what}: signing chain must be PEM text`);
	const chain = checkChain(pemCertificates(pem, what), trust, what);
	const leaf = chain.certs[0];
	if (!leaf || !/^CN=Intel SGX TCB Signing$/m.test(leaf.x509.subject))
		throw new DadiError(
			"CHAIN_UNTRUSTED",
			`${what}: the signing certificate is not the Intel SGX TCB Signing certificate`,
		);
	return chain;
}

function verifySigned<T>(
	text: string,
	key: "tcbInfo" | "enclaveIdentity",
	chain: CheckedChain,
	parse: (v: Obj) => T,
): T {
	const signed = splitSignedResponse(text, key);
	const leaf = chain.certs[0];
	if (!leaf || !verifyP1363(signed.raw, signed.signature, leaf.x509.publicKey))
		throw new DadiError(
			"SIGNATURE_INVALID",
			`TDX collateral: the ${key} signature does not verify with the TCB signing key`,
		);
	return parse(signed.value);
}

/** Signature and chain only (no clock): cacheable. */
export function verifyTcbInfoSignature(
	text: string,
	chain: CheckedChain,
): TcbInfo {
	return verifySigned(text, "tcbInfo", chain, parseTcbInfo);
}

export function verifyQeIdentitySignature(
	text: string,
	chain: CheckedChain,
): QeIdentity {
	return verifySigned(text, "enclaveIdentity", chain, parseQeIdentity);
}

export function checkCollateralWindow(
	c: { issueDate: Date; nextUpdate: Date },
	chain: CheckedChain,
	now: Date,
	what: string,
): void {
	checkChainWindow(chain, now, `${what} signing chain`);
	const t = now.getTime();
	if (t < c.issueDate.getTime() || t > c.nextUpdate.getTime())
		throw new DadiError(
			"CERT_EXPIRED",
			`${what}: valid ${c.issueDate.toISOString()} to ${c.nextUpdate.toISOString()}, not at ${now.toISOString()}`,
		);
}

/** One-shot: chain, signature and window of a TCB info response. */
export function verifyTcbInfo(
	text: string,
	signingChainPem: string,
	trust: TdxTrust,
	now: Date,
): TcbInfo {
	const chain = checkSigningChain(signingChainPem, trust, "TCB info");
	const info = verifyTcbInfoSignature(text, chain);
	checkCollateralWindow(info, chain, now, "TCB info");
	return info;
}

export function verifyQeIdentity(
	text: string,
	signingChainPem: string,
	trust: TdxTrust,
	now: Date,
): QeIdentity {
	const chain = checkSigningChain(signingChainPem, trust, "QE identity");
	const info = verifyQeIdentitySignature(text, chain);
	checkCollateralWindow(info, chain, now, "QE identity");
	return info;
}

/** A KeyObject for a raw uncompressed P-256 point x||y (64 bytes). */
export function p256Key(xy: Buffer): KeyObject {
	if (xy.length !== 64)
		throw new DadiError("EVIDENCE_INVALID", "P-256 key must be 64 bytes");
	try {
		return createPublicKey({
			key: {
				kty: "EC",
				crv: "P-256",
				x: xy.subarray(0, 32).toString("base64url"),
				y: xy.subarray(32).toString("base64url"),
			},
			format: "jwk",
		});
	} catch {
		throw new DadiError(
			"EVIDENCE_INVALID",
			"TDX quote: the attestation key is not a P-256 point",
		);
	}
}

// --- TCB status ------------------------------------------------------------------------------

export interface PckTcb {
	/** The 16 SGX TCB component SVNs from the PCK certificate. */
	sgxComponents: number[];
	pceSvn: number;
}

export interface TcbEvaluation {
	status: string;
	advisoryIds: string[];
	/** The matching platform level's date, "" when none matched. */
	tcbDate: string;
	/** The TDX module identity used ("" when TEE_TCB_SVN[1] is 0 or the TCB info has none). */
	tdxModuleId: string;
}

/** Converges a platform status with a component's (TDX module or QE) status, as Intel's QVL does. */
export function convergeStatus(platform: string, component: string): string {
	if (platform === TCB_STATUS_NOT_SUPPORTED) return platform;
	if (component === "Revoked") return "Revoked";
	if (component === "OutOfDate") {
		if (platform === "UpToDate" || platform === "SWHardeningNeeded")
			return "OutOfDate";
		if (
			platform === "ConfigurationNeeded" ||
			platform === "ConfigurationAndSWHardeningNeeded"
		)
			return "OutOfDateConfigurationNeeded";
	}
	return platform;
}

function union(a: string[], b: string[]): string[] {
	return [...new Set([...a, ...b])];
}

function maskedEqual(value: Buffer, mask: Buffer, expected: Buffer): boolean {
	if (value.length !== mask.length || expected.length !== mask.length)
		return false;
	for (let i = 0; i < mask.length; i++)
		if (((value[i] as number) & (mask[i] as number)) !== expected[i])
			return false;
	return true;
}

/**
 * The TDX TCB status. FMSPC/PCE-ID agreement and the TDX module's MRSIGNERSEAM/SEAMATTRIBUTES are
 * TCB_MISMATCH errors; an unmatched level is the TCB_STATUS_NOT_SUPPORTED status.
 */
export function evaluateTdxTcb(
	info: TcbInfo,
	pck: PckTcb & { fmspc: string; pceId: string },
	td: { teeTcbSvn: Buffer; mrSignerSeam: Buffer; seamAttributes: Buffer },
): TcbEvaluation {
	if (pck.fmspc.toLowerCase() !== info.fmspc)
		throw new DadiError(
			"TCB_MISMATCH",
			`TDX: the PCK certificate's FMSPC ${pck.fmspc} is not the TCB info's ${info.fmspc}`,
		);
	if (pck.pceId.toLowerCase() !== info.pceId)
		throw new DadiError(
			"TCB_MISMATCH",
			`TDX: the PCK certificate's PCE-ID ${pck.pceId} is not the TCB info's ${info.pceId}`,
		);
	const svn = td.teeTcbSvn;
	const major = svn[1] as number;
	const useModuleIdentity = major > 0 && info.tdxModuleIdentities.length > 0;
	const start = major > 0 ? 2 : 0;
	const none: TcbEvaluation = {
		status: TCB_STATUS_NOT_SUPPORTED,
		advisoryIds: [],
		tcbDate: "",
		tdxModuleId: "",
	};
	const level = info.tcbLevels.find((l) => {
		for (let i = 0; i < 16; i++)
			if ((pck.sgxComponents[i] ?? 0) < (l.sgxComponents[i] as number))
				return false;
		if (pck.pceSvn < l.pceSvn) return false;
		for (let i = start; i < 16; i++)
			if ((svn[i] as number) < (l.tdxComponents[i] as number)) return false;
		return true;
	});
	// TDX module major version 0: its signer and attributes come from `tdxModule`; later versions
	// are appraised by their own entry in tdxModuleIdentities below (as Intel's QVL does).
	if (info.tdxModule && !useModuleIdentity) {
		const m = info.tdxModule;
		if (
			!td.mrSignerSeam.equals(m.mrSigner) ||
			!maskedEqual(td.seamAttributes, m.attributesMask, m.attributes)
		)
			throw new DadiError(
				"TCB_MISMATCH",
				"TDX: MRSIGNERSEAM or SEAMATTRIBUTES do not match the TCB info's TDX module",
			);
	}
	if (!level) return none;
	let out: TcbEvaluation = {
		status: level.tcbStatus,
		advisoryIds: [...level.advisoryIds],
		tcbDate: level.tcbDate,
		tdxModuleId: "",
	};
	if (useModuleIdentity) {
		const id = `TDX_${major.toString(16).toUpperCase().padStart(2, "0")}`;
		const m = info.tdxModuleIdentities.find((x) => x.id === id);
		if (!m) return { ...none, tdxModuleId: id };
		if (
			!td.mrSignerSeam.equals(m.mrSigner) ||
			!maskedEqual(td.seamAttributes, m.attributesMask, m.attributes)
		)
			throw new DadiError(
				"TCB_MISMATCH",
				`TDX: MRSIGNERSEAM or SEAMATTRIBUTES do not match TDX module identity ${id}`,
			);
		const ml = m.tcbLevels.find((l) => l.isvSvn <= (svn[0] as number));
		if (!ml) return { ...none, tdxModuleId: id };
		out = {
			status: convergeStatus(out.status, ml.tcbStatus),
			advisoryIds: union(out.advisoryIds, ml.advisoryIds),
			tcbDate: out.tcbDate,
			tdxModuleId: id,
		};
	}
	return out;
}

export interface QeEvaluation {
	status: string;
	advisoryIds: string[];
}

/** Checks the QE report against the QE identity (TCB_MISMATCH) and returns the QE's TCB status. */
export function evaluateQe(
	id: QeIdentity,
	qe: {
		mrSigner: Buffer;
		isvProdId: number;
		miscSelect: number;
		attributes: Buffer;
		isvSvn: number;
	},
): QeEvaluation {
	if (!qe.mrSigner.equals(id.mrSigner))
		throw new DadiError(
			"TCB_MISMATCH",
			"TDX: the QE's MRSIGNER is not the QE identity's",
		);
	if (qe.isvProdId !== id.isvProdId)
		throw new DadiError(
			"TCB_MISMATCH",
			"TDX: the QE's ISVPRODID is not the QE identity's",
		);
	if ((qe.miscSelect & id.miscSelectMask) >>> 0 !== id.miscSelect >>> 0)
		throw new DadiError(
			"TCB_MISMATCH",
			"TDX: the QE's masked MISCSELECT is not the QE identity's",
		);
	if (!maskedEqual(qe.attributes, id.attributesMask, id.attributes))
		throw new DadiError(
			"TCB_MISMATCH",
			"TDX: the QE's masked ATTRIBUTES are not the QE identity's",
		);
	const l = id.tcbLevels.find((x) => x.isvSvn <= qe.isvSvn);
	if (!l) return { status: "OutOfDate", advisoryIds: [] };
	return { status: l.tcbStatus, advisoryIds: [...l.advisoryIds] };
}
