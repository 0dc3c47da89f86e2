/**
 * TDX collateral bundles as other verifiers exchange them (pure: text in, collateral out).
 *
 * 1. dcap-qvl's `QuoteCollateralV3` JSON (Phala-Network/dcap-qvl; also its JS and Go bindings):
 *    `{"pck_crl_issuer_chain": PEM, "root_ca_crl": bytes, "pck_crl": bytes,
 *      "tcb_info_issuer_chain": PEM, "tcb_info": "<the tcbInfo JSON value, as a string>",
 *      "tcb_info_signature": bytes, "qe_identity_issuer_chain": PEM,
 *      "qe_identity": "<the enclaveIdentity JSON value, as a string>", "qe_identity_signature": bytes}`
 *    where bytes are hex text (its samples and generators) or an array of byte numbers (serde_bytes
 *    through serde_json, and its JS `getCollateral`). `tcb_info` / `qe_identity` hold the exact
 *    signed text: the signature is checked over those characters, never over a re-serialization.
 *
 * 2. The "platform collaterals" file of Intel's PCS Client Tool, which Trustee reads through a
 *    `file://` collateral_service URL: `{"collaterals": {"tcbinfos": [{"fmspc": hex,
 *    "tdx_tcbinfo"?: <PCS TCB info response>, "tdx_tcbinfo_early"?: ...}], "tdqeidentity"?:
 *    <PCS QE identity response>, "tdqeidentity_early"?: ..., "pckcacrl": {"processorCrl": hex,
 *    "platformCrl": hex}, "rootcacrl": hex, "certificates": {"TCB-Info-Issuer-Chain": URL-encoded
 *    PEM, "SGX-Enclave-Identity-Issuer-Chain": ..., "SGX-PCK-Certificate-Issuer-Chain"?:
 *    {"PROCESSOR": ..., "PLATFORM": ...}}}}`. The responses are embedded as JSON objects, so the
 *    signed text is the member's raw text with insignificant whitespace removed (the tool may
 *    re-indent; removing whitespace outside strings does not change the value, and a
 *    re-ordered or re-escaped value still fails the signature check).
 *
 * Both produce, per FMSPC, a TdxCollateral whose `tcbInfo` / `qeIdentity` are PCS response texts
 * (`{"tcbInfo":<signed text>,"signature":"<hex>"}`), so verification is exactly that of PCS files.
 * Every problem is an INPUT_INVALID DadiError naming the source and the member.
 */
import { DadiError } from "../../errors.js";
import { rawMemberValue } from "./collateral.js";
import type { TdxCollateral } from "./verify.js";

export type PckCa = "processor" | "platform";

/** One FMSPC's collateral from a bundle. */
export interface BundleEntry {
	/** Lowercase hex. */
	fmspc: string;
	collateral: TdxCollateral;
	/** Trustee's form carries both PCK CRLs; the one for the quote's PCK CA is chosen later. */
	pckCrls?: Record<PckCa, { crl: Buffer; issuerChain?: string }>;
	/** What the entry supplies, for the report. */
	gives: string[];
}

export type BundleKind = "dcap-qvl" | "pcs-client-tool";

export interface ParsedBundle {
	kind: BundleKind;
	entries: BundleEntry[];
}

const MAX_TEXT = 1024 * 1024;

type Obj = Record<string, unknown>;

function bad(source: string, detail: string): DadiError {
	return new DadiError("INPUT_INVALID", `${source}: ${detail}`);
}

function isObj(v: unknown): v is Obj {
	return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Which bundle form a parsed JSON value is, if any. */
export function bundleKind(v: unknown): BundleKind | undefined {
	if (!isObj(v)) return undefined;
	if ("tcb_info" in v || "qe_identity" in v) return "dcap-qvl";
	if (isObj(v.collaterals)) return "pcs-client-tool";
	return undefined;
}

/** Bytes given as hex text or as an array of numbers 0..255. */
export function bundleBytes(
	v: unknown,
	source: string,
	member: string,
	max = MAX_TEXT,
): Buffer {
	if (typeof v === "string") {
		if (v.length > max * 2 || v.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(v))
			throw bad(source, `"${member}" must be hex text or an array of bytes`);
		return Buffer.from(v, "hex");
	}
	if (Array.isArray(v) && v.length <= max) {
		for (const x of v)
			if (typeof x !== "number" || !Number.isInteger(x) || x < 0 || x > 255)
				throw bad(source, `"${member}" must be hex text or an array of bytes`);
		return Buffer.from(v as number[]);
	}
	throw bad(source, `"${member}" must be hex text or an array of bytes`);
}

/** A PEM chain as given (PEM text, or URL-encoded PEM as in PCS response headers). */
export function bundlePem(v: unknown, source: string, member: string): string {
	if (typeof v !== "string" || v.length > 64 * 1024)
		throw bad(source, `"${member}" must be a PEM certificate chain`);
	let pem = v;
	if (
		!pem.includes("-----BEGIN CERTIFICATE-----") &&
		/%[0-9A-Fa-f]{2}/.test(pem)
	)
		try {
			pem = decodeURIComponent(pem);
		} catch {
			throw bad(source, `"${member}": malformed URL encoding`);
		}
	if (!pem.includes("-----BEGIN CERTIFICATE-----"))
		throw bad(source, `"${member}" must be a PEM certificate chain`);
	return pem;
}

/** Removes whitespace outside strings from JSON text (the value is unchanged). */
export function compactJson(text: string): string {
	let out = "";
	let inString = false;
	for (let i = 0; i < text.length; i++) {
		const c = text[i] as string;
		if (inString) {
			out += c;
			if (c === "\\") {
				out += text[i + 1] ?? "";
				i++;
			} else if (c === '"') inString = false;
		} else if (c === '"') {
			inString = true;
			out += c;
		} else if (c !== " " && c !== "\t" && c !== "\n" && c !== "\r") out += c;
	}
	return out;
}

/** A signed JSON object text → a PCS response text around it. */
function responseText(
	signed: string,
	key: "tcbInfo" | "enclaveIdentity",
	signature: Buffer,
	source: string,
	member: string,
): { text: string; value: Obj } {
	let value: unknown;
	try {
		value = JSON.parse(signed);
	} catch {
		throw bad(source, `"${member}" is not JSON text`);
	}
	if (!isObj(value)) throw bad(source, `"${member}" must be a JSON object`);
	if (signature.length !== 64)
		throw bad(source, `the ${member} signature must be 64 bytes (r||s)`);
	// `signed` parses as exactly one object, so it is one value inside the wrapper.
	return {
		text: `{"${key}":${signed},"signature":"${signature.toString("hex")}"}`,
		value,
	};
}

function fmspcOf(tcbInfo: Obj, source: string, member: string): string {
	const f = tcbInfo.fmspc;
	if (typeof f !== "string" || !/^[0-9a-fA-F]{12}$/.test(f))
		throw bad(source, `"${member}" has no 6-byte hex fmspc`);
	return f.toLowerCase();
}

/** dcap-qvl's QuoteCollateralV3 (one FMSPC). */
export function parseDcapQvlBundle(v: Obj, source: string): BundleEntry {
	const known = new Set([
		"pck_crl_issuer_chain",
		"root_ca_crl",
		"pck_crl",
		"tcb_info_issuer_chain",
		"tcb_info",
		"tcb_info_signature",
		"qe_identity_issuer_chain",
		"qe_identity",
		"qe_identity_signature",
		"pck_certificate_chain",
	]);
	for (const k of Object.keys(v))
		if (!known.has(k))
			throw bad(
				source,
				`unknown member "${k.slice(0, 64)}" in a dcap-qvl collateral bundle`,
			);
	const need = (k: string) => {
		if (v[k] === undefined)
			throw bad(source, `the dcap-qvl collateral bundle lacks "${k}"`);
		return v[k];
	};
	const str = (k: string) => {
		const s = need(k);
		if (typeof s !== "string" || s.length > MAX_TEXT)
			throw bad(source, `"${k}" must be a string`);
		return s;
	};
	const tcb = responseText(
		str("tcb_info"),
		"tcbInfo",
		bundleBytes(need("tcb_info_signature"), source, "tcb_info_signature", 64),
		source,
		"tcb_info",
	);
	const qe = responseText(
		str("qe_identity"),
		"enclaveIdentity",
		bundleBytes(
			need("qe_identity_signature"),
			source,
			"qe_identity_signature",
			64,
		),
		source,
		"qe_identity",
	);
	const tcbChain = bundlePem(
		need("tcb_info_issuer_chain"),
		source,
		"tcb_info_issuer_chain",
	);
	const qeChain = bundlePem(
		need("qe_identity_issuer_chain"),
		source,
		"qe_identity_issuer_chain",
	);
	if (compactJson(tcbChain) !== compactJson(qeChain))
		throw bad(
			source,
			"tcb_info_issuer_chain and qe_identity_issuer_chain differ; both must be the Intel SGX TCB Signing chain",
		);
	return {
		fmspc: fmspcOf(tcb.value, source, "tcb_info"),
		collateral: {
			tcbInfo: tcb.text,
			qeIdentity: qe.text,
			tcbSigningChain: tcbChain,
			pckCrl: bundleBytes(need("pck_crl"), source, "pck_crl"),
			rootCrl: bundleBytes(need("root_ca_crl"), source, "root_ca_crl"),
			pckCrlIssuerChain: bundlePem(
				need("pck_crl_issuer_chain"),
				source,
				"pck_crl_issuer_chain",
			),
		},
		gives: [
			"tcb-info",
			"qe-identity",
			"tcb-signing-chain",
			"pck-crl",
			"root-crl",
			"pck-crl-issuer-chain",
		],
	};
}

/** Finds the raw text of each element of a JSON array text (strings and nesting aware). */
function rawArrayItems(text: string, source: string, what: string): string[] {
	const t = text.trim();
	if (!t.startsWith("[") || !t.endsWith("]"))
		throw bad(source, `"${what}" must be an array`);
	const items: string[] = [];
	let depth = 0;
	let start = 1;
	let inString = false;
	for (let i = 1; i < t.length - 1; i++) {
		const c = t[i];
		if (inString) {
			if (c === "\\") i++;
			else if (c === '"') inString = false;
			continue;
		}
		if (c === '"') inString = true;
		else if (c === "{" || c === "[") depth++;
		else if (c === "}" || c === "]") depth--;
		else if (c === "," && depth === 0) {
			items.push(t.slice(start, i));
			start = i + 1;
		}
	}
	const last = t.slice(start, t.length - 1);
	if (last.trim() !== "" || items.length > 0) items.push(last);
	return items;
}

/** The raw text of member `key` of the object text `text`, or undefined when absent. */
function rawMember(
	text: string,
	parsed: Obj,
	key: string,
	source: string,
): string | undefined {
	if (parsed[key] === undefined) return undefined;
	try {
		return rawMemberValue(text, key);
	} catch (e) {
		const m = e instanceof DadiError ? e.message : "malformed JSON";
		throw bad(source, `"${key}": ${m.replace(/^TDX collateral: /, "")}`);
	}
}

/**
 * Intel PCS Client Tool's platform collaterals (Trustee's `file://` source): one entry per FMSPC
 * that has a TDX TCB info.
 */
export function parsePcsClientToolBundle(
	text: string,
	v: Obj,
	source: string,
): BundleEntry[] {
	const colText = rawMember(text, v, "collaterals", source) as string;
	const col = v.collaterals as Obj;
	const certs = col.certificates;
	if (!isObj(certs)) throw bad(source, '"collaterals.certificates" is missing');
	const tcbChain = bundlePem(
		certs["TCB-Info-Issuer-Chain"],
		source,
		"TCB-Info-Issuer-Chain",
	);
	const qeChain =
		certs["SGX-Enclave-Identity-Issuer-Chain"] === undefined
			? tcbChain
			: bundlePem(
					certs["SGX-Enclave-Identity-Issuer-Chain"],
					source,
					"SGX-Enclave-Identity-Issuer-Chain",
				);
	if (compactJson(tcbChain) !== compactJson(qeChain))
		throw bad(
			source,
			"TCB-Info-Issuer-Chain and SGX-Enclave-Identity-Issuer-Chain differ; both must be the Intel SGX TCB Signing chain",
		);
	const signedResponse = (
		respText: string | undefined,
		key: "tcbInfo" | "enclaveIdentity",
		member: string,
	): string | undefined => {
		if (respText === undefined) return undefined;
		let resp: unknown;
		try {
			resp = JSON.parse(respText);
		} catch {
			throw bad(source, `"${member}" is not JSON`);
		}
		if (!isObj(resp)) throw bad(source, `"${member}" must be an object`);
		const inner = rawMember(respText, resp, key, source);
		if (inner === undefined) throw bad(source, `"${member}" has no "${key}"`);
		const sig = resp.signature;
		if (typeof sig !== "string")
			throw bad(source, `"${member}" has no "signature"`);
		return responseText(
			compactJson(inner),
			key,
			bundleBytes(sig, source, `${member}.signature`, 64),
			source,
			member,
		).text;
	};
	const qeMember =
		col.tdqeidentity_early !== undefined
			? "tdqeidentity_early"
			: "tdqeidentity";
	const qeIdentity = signedResponse(
		rawMember(colText, col, qeMember, source),
		"enclaveIdentity",
		qeMember,
	);
	const rootCrl =
		col.rootcacrl === undefined
			? undefined
			: bundleBytes(col.rootcacrl, source, "rootcacrl");
	let pckCrls: BundleEntry["pckCrls"];
	if (col.pckcacrl !== undefined) {
		if (!isObj(col.pckcacrl)) throw bad(source, '"pckcacrl" must be an object');
		const chains = certs["SGX-PCK-Certificate-Issuer-Chain"];
		if (chains !== undefined && !isObj(chains))
			throw bad(source, '"SGX-PCK-Certificate-Issuer-Chain" must be an object');
		const one = (crlKey: string, chainKey: string) => ({
			crl: bundleBytes(
				(col.pckcacrl as Obj)[crlKey],
				source,
				`pckcacrl.${crlKey}`,
			),
			issuerChain:
				chains?.[chainKey] === undefined
					? undefined
					: bundlePem(chains[chainKey], source, `${chainKey} issuer chain`),
		});
		pckCrls = {
			processor: one("processorCrl", "PROCESSOR"),
			platform: one("platformCrl", "PLATFORM"),
		};
	}
	const listText = rawMember(colText, col, "tcbinfos", source);
	if (listText === undefined || !Array.isArray(col.tcbinfos))
		throw bad(source, '"collaterals.tcbinfos" must be an array');
	const items = rawArrayItems(listText, source, "tcbinfos");
	if (items.length !== col.tcbinfos.length || items.length > 4096)
		throw bad(source, '"collaterals.tcbinfos" is malformed');
	const out: BundleEntry[] = [];
	items.forEach((itemText, i) => {
		const item = (col.tcbinfos as unknown[])[i];
		if (!isObj(item)) throw bad(source, `tcbinfos[${i}] must be an object`);
		const member =
			item.tdx_tcbinfo_early !== undefined
				? "tdx_tcbinfo_early"
				: "tdx_tcbinfo";
		const tcbInfo = signedResponse(
			rawMember(itemText.trim(), item, member, source),
			"tcbInfo",
			`tcbinfos[${i}].${member}`,
		);
		if (tcbInfo === undefined) return; // an SGX-only platform
		const f = item.fmspc;
		if (typeof f !== "string" || !/^[0-9a-fA-F]{12}$/.test(f))
			throw bad(source, `tcbinfos[${i}].fmspc must be 6 bytes of hex`);
		const inner = (JSON.parse(tcbInfo) as { tcbInfo: Obj }).tcbInfo;
		if (fmspcOf(inner, source, `tcbinfos[${i}].${member}`) !== f.toLowerCase())
			throw bad(
				source,
				`tcbinfos[${i}]: fmspc ${f} is not its TCB info's ${String(inner.fmspc)}`,
			);
		const gives = ["tcb-info", "tcb-signing-chain"];
		if (qeIdentity) gives.push("qe-identity");
		if (rootCrl) gives.push("root-crl");
		if (pckCrls) gives.push("pck-crl");
		out.push({
			fmspc: f.toLowerCase(),
			collateral: {
				tcbInfo,
				qeIdentity,
				tcbSigningChain: tcbChain,
				rootCrl,
			},
			pckCrls,
			gives,
		});
	});
	return out;
}

/** Any supported bundle; INPUT_INVALID when `text` is JSON of neither form. */
export function parseCollateralBundle(
	text: string,
	source: string,
): ParsedBundle {
	if (typeof text !== "string" || text.length > MAX_TEXT)
		throw bad(source, "a collateral bundle must be text of at most 1 MiB");
	let v: unknown;
	try {
		v = JSON.parse(text);
	} catch {
		throw bad(source, "not JSON");
	}
	const kind = bundleKind(v);
	if (kind === "dcap-qvl")
		return { kind, entries: [parseDcapQvlBundle(v as Obj, source)] };
	if (kind === "pcs-client-tool")
		return {
			kind,
			entries: parsePcsClientToolBundle(text, v as Obj, source),
		};
	throw bad(
		source,
		"neither a dcap-qvl collateral bundle nor a PCS Client Tool file",
	);
}
