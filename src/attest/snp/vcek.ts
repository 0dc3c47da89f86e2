/**
 * AMD SEV-SNP certificates: the VCEK / VLEK leaf, the ASK / ASVK intermediate and the ARK root.
 *
 * node:crypto's X509Certificate parses the certificates, exposes their keys and checks their
 * signatures (RSA-PSS included); everything it does not expose (AMD's private extensions, the
 * exact names, the validity instants, the signature algorithm parameters) is read here with a
 * small, bounds-checked DER reader. Pure: no I/O; the clock comes in as an argument.
 *
 * AMD extensions under 1.3.6.1.4.1.3704.1: .1 struct version, .2 product name ("Milan-B0"),
 * .3.1 bootloader SPL, .3.2 TEE SPL, .3.3 SNP SPL, .3.8 microcode SPL, .3.9 FMC SPL (Turin),
 * .4 hardware ID (= the report's CHIP_ID; VCEK only), .5 cloud-provider ID (VLEK only). The SPLs are
 * DER INTEGERs, seen both bare and wrapped in an OCTET STRING; the hardware ID is seen both as the
 * raw 64 bytes and as a DER OCTET STRING of them. Both forms are accepted.
 */
import { createHash, type KeyObject, X509Certificate } from "node:crypto";
import { DadiError } from "../../errors.js";
import { pemCertificates } from "../pem.js";
import type { SnpProduct } from "./report.js";
import type { TrustAnchors } from "./trust.js";

// ---------------------------------------------------------------------------------------------
// DER

interface Tlv {
	tag: number;
	/** First content byte. */
	start: number;
	/** One past the last content byte. */
	end: number;
}

function derError(what: string, detail: string): DadiError {
	return new DadiError(
		"EVIDENCE_INVALID",
		`${what}: malformed DER (${detail})`,
	);
}

/** Reads one TLV at `off`, which must end at or before `limit`. Single-byte tags, definite lengths. */
function readTlv(b: Buffer, off: number, limit: number, what: string): Tlv {
	if (off + 2 > limit) throw derError(what, "truncated header");
	const tag = b[off] as number;
	if ((tag & 0x1f) === 0x1f) throw derError(what, "multi-byte tag");
	let len = b[off + 1] as number;
	let p = off + 2;
	if (len & 0x80) {
		const n = len & 0x7f;
		if (n === 0 || n > 4) throw derError(what, "unsupported length form");
		if (p + n > limit) throw derError(what, "truncated length");
		len = 0;
		for (let i = 0; i < n; i++) len = len * 256 + (b[p + i] as number);
		p += n;
	}
	if (len > limit - p) throw derError(what, "content runs past its container");
	return { tag, start: p, end: p + len };
}

/** The TLVs inside a constructed value, which must tile it exactly. */
function children(b: Buffer, t: Tlv, what: string): Tlv[] {
	const out: Tlv[] = [];
	let p = t.start;
	while (p < t.end) {
		const c = readTlv(b, p, t.end, what);
		out.push(c);
		p = c.end;
	}
	return out;
}

function expectTag(
	t: Tlv | undefined,
	tag: number,
	what: string,
	field: string,
): Tlv {
	if (!t || t.tag !== tag)
		throw derError(what, `${field}: expected tag 0x${tag.toString(16)}`);
	return t;
}

function decodeOid(b: Buffer, t: Tlv, what: string): string {
	if (t.tag !== 0x06 || t.end === t.start) throw derError(what, "bad OID");
	const parts: number[] = [];
	let v = 0;
	for (let i = t.start; i < t.end; i++) {
		const x = b[i] as number;
		if (v > 0x1fffffff) throw derError(what, "OID arc too large");
		v = v * 128 + (x & 0x7f);
		if (!(x & 0x80)) {
			if (parts.length === 0) {
				const first = v < 80 ? Math.floor(v / 40) : 2;
				parts.push(first, v - first * 40);
			} else parts.push(v);
			v = 0;
		} else if (i === t.end - 1) throw derError(what, "truncated OID");
	}
	return parts.join(".");
}

function decodeSmallInt(b: Buffer, t: Tlv, what: string): number {
	if (t.tag !== 0x02) throw derError(what, "expected INTEGER");
	const n = t.end - t.start;
	if (n < 1 || n > 4) throw derError(what, "INTEGER length out of range");
	if ((b[t.start] as number) & 0x80) throw derError(what, "negative INTEGER");
	let v = 0;
	for (let i = t.start; i < t.end; i++) v = v * 256 + (b[i] as number);
	return v;
}

function decodeTime(b: Buffer, t: Tlv, what: string): Date {
	let s = b.toString("latin1", t.start, t.end);
	if (t.tag === 0x17 && /^\d{12}Z$/.test(s))
		s = (Number(s.slice(0, 2)) < 50 ? "20" : "19") + s; // UTCTime: YY < 50 is 20YY
	else if (t.tag !== 0x18 || !/^\d{14}Z$/.test(s))
		throw derError(what, "bad validity time");
	const n = (from: number, len: number): number =>
		Number(s.slice(from, from + len));
	const [year, month, day, hour, minute, second] = [
		n(0, 4),
		n(4, 2),
		n(6, 2),
		n(8, 2),
		n(10, 2),
		n(12, 2),
	];
	if (
		month < 1 ||
		month > 12 ||
		day < 1 ||
		day > 31 ||
		hour > 23 ||
		minute > 59 ||
		second > 59
	)
		throw derError(what, "bad validity time");
	return new Date(Date.UTC(year, month - 1, day, hour, minute, second));
}

/** The CN of a Name (the last one if several), or "" when there is none. */
function commonName(b: Buffer, name: Tlv, what: string): string {
	let cn = "";
	for (const rdn of children(b, name, what)) {
		expectTag(rdn, 0x31, what, "RDN");
		for (const atv of children(b, rdn, what)) {
			expectTag(atv, 0x30, what, "AttributeTypeAndValue");
			const [type, value] = children(b, atv, what);
			if (!type || !value) throw derError(what, "short AttributeTypeAndValue");
			if (decodeOid(b, type, what) === "2.5.4.3")
				cn = b.toString(
					value.tag === 0x1e ? "utf16le" : "utf8",
					value.start,
					value.end,
				);
		}
	}
	return cn;
}

// ---------------------------------------------------------------------------------------------
// Certificates

const OID_RSASSA_PSS = "1.2.840.113549.1.1.10";
const OID_MGF1 = "1.2.840.113549.1.1.8";
const OID_SHA384 = "2.16.840.1.101.3.4.2.2";
const AMD_ARC = "1.3.6.1.4.1.3704.1.";

export interface ParsedCert {
	der: Buffer;
	/** Lowercase hex SHA-256 of the DER. */
	sha256: string;
	x509: X509Certificate;
	publicKey: KeyObject;
	subjectCn: string;
	issuerCn: string;
	/** The DER of the subject and issuer Names, for exact name chaining. */
	subjectDer: Buffer;
	issuerDer: Buffer;
	notBefore: Date;
	notAfter: Date;
	/** True when the signature algorithm is RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48. */
	rsaPssSha384: boolean;
	/** extnID (dotted) → the extnValue OCTET STRING's content. */
	extensions: Map<string, Buffer>;
}

/** RSASSA-PSS-params must be SHA-384, MGF1 with SHA-384, salt length 48, trailer 1. */
function isRsaPssSha384(b: Buffer, alg: Tlv, what: string): boolean {
	const [oid, params] = children(
		b,
		expectTag(alg, 0x30, what, "AlgorithmIdentifier"),
		what,
	);
	if (
		!oid ||
		decodeOid(b, oid, what) !== OID_RSASSA_PSS ||
		!params ||
		params.tag !== 0x30
	)
		return false;
	let hashOk = false;
	let mgfOk = false;
	let salt = 20;
	let trailer = 1;
	const hashIs384 = (seq: Tlv): boolean => {
		if (seq.tag !== 0x30) return false;
		const [h, nul] = children(b, seq, what);
		return (
			!!h &&
			decodeOid(b, h, what) === OID_SHA384 &&
			(!nul || (nul.tag === 0x05 && nul.end === nul.start))
		);
	};
	for (const f of children(b, params, what)) {
		const [inner] = children(b, f, what);
		if (!inner) return false;
		if (f.tag === 0xa0) hashOk = hashIs384(inner);
		else if (f.tag === 0xa1) {
			const [mOid, mParams] = children(b, inner, what);
			mgfOk =
				!!mOid &&
				!!mParams &&
				decodeOid(b, mOid, what) === OID_MGF1 &&
				hashIs384(mParams);
		} else if (f.tag === 0xa2) salt = decodeSmallInt(b, inner, what);
		else if (f.tag === 0xa3) trailer = decodeSmallInt(b, inner, what);
		else return false;
	}
	return hashOk && mgfOk && salt === 48 && trailer === 1;
}

/** Parses a DER certificate. Throws EVIDENCE_INVALID when it is not one. */
export function parseCert(input: Uint8Array, what: string): ParsedCert {
	if (!(input instanceof Uint8Array) || input.length === 0)
		throw new DadiError("EVIDENCE_INVALID", `${what}: expected DER bytes`);
	const der = Buffer.from(input);
	const cert = readTlv(der, 0, der.length, what);
	if (cert.tag !== 0x30 || cert.end !== der.length)
		throw derError(what, "not a single DER SEQUENCE");
	const [tbs, sigAlg, sigValue, extra] = children(der, cert, what);
	if (!tbs || !sigAlg || !sigValue || extra)
		throw derError(what, "Certificate shape");
	expectTag(tbs, 0x30, what, "tbsCertificate");
	expectTag(sigValue, 0x03, what, "signatureValue");
	const f = children(der, tbs, what);
	let i = 0;
	if (f[0]?.tag === 0xa0) i++; // [0] version
	expectTag(f[i++], 0x02, what, "serialNumber");
	const innerAlg = expectTag(f[i++], 0x30, what, "signature");
	const issuer = expectTag(f[i++], 0x30, what, "issuer");
	const validity = expectTag(f[i++], 0x30, what, "validity");
	const subject = expectTag(f[i++], 0x30, what, "subject");
	expectTag(f[i++], 0x30, what, "subjectPublicKeyInfo");
	const extensions = new Map<string, Buffer>();
	for (; i < f.length; i++) {
		const t = f[i] as Tlv;
		if (t.tag === 0x81 || t.tag === 0x82) continue; // issuer/subject unique IDs
		if (t.tag !== 0xa3)
			throw derError(what, "unexpected field in tbsCertificate");
		const [seq] = children(der, t, what);
		for (const ext of children(
			der,
			expectTag(seq, 0x30, what, "extensions"),
			what,
		)) {
			const parts = children(
				der,
				expectTag(ext, 0x30, what, "Extension"),
				what,
			);
			const id = parts[0];
			const value = parts[parts.length - 1];
			if (!id || !value || parts.length > 3 || parts.length < 2)
				throw derError(what, "Extension shape");
			const oid = decodeOid(der, id, what);
			expectTag(value, 0x04, what, "extnValue");
			if (extensions.has(oid))
				throw derError(what, `duplicate extension ${oid}`);
			extensions.set(oid, der.subarray(value.start, value.end));
		}
	}
	const innerAlgDer = der.subarray(innerAlg.start, innerAlg.end);
	const outerAlgDer = der.subarray(sigAlg.start, sigAlg.end);
	if (
		innerAlg.end - innerAlg.start !== sigAlg.end - sigAlg.start ||
		!innerAlgDer.equals(outerAlgDer)
	)
		throw derError(what, "the inner and outer signature algorithms differ");
	const [nb, na] = children(der, validity, what);
	if (!nb || !na) throw derError(what, "validity");
	let x509: X509Certificate;
	let publicKey: KeyObject;
	try {
		x509 = new X509Certificate(der);
		publicKey = x509.publicKey;
	} catch (e) {
		throw new DadiError(
			"EVIDENCE_INVALID",
			`${what}: not a usable X.509 certificate`,
			{
				cause: e,
			},
		);
	}
	return {
		der,
		sha256: createHash("sha256").update(der).digest("hex"),
		x509,
		publicKey,
		subjectCn: commonName(der, subject, what),
		issuerCn: commonName(der, issuer, what),
		subjectDer: der.subarray(subject.start, subject.end),
		issuerDer: der.subarray(issuer.start, issuer.end),
		notBefore: decodeTime(der, nb, what),
		notAfter: decodeTime(der, na, what),
		rsaPssSha384: isRsaPssSha384(der, sigAlg, what),
		extensions,
	};
}

/** The certificates of an AMD PEM bundle (KDS `cert_chain`: ASK, then ARK), as DER. */
export function pemToDer(pem: string): Buffer[] {
	return pemCertificates(
		pem,
		"SEV-SNP certificate bundle",
		(d) => new DadiError("EVIDENCE_INVALID", d),
	);
}

// ---------------------------------------------------------------------------------------------
// AMD extensions

export interface AmdExtensions {
	/** .2, e.g. "Milan-B0". */
	productName?: string;
	bootloader?: number;
	tee?: number;
	snp?: number;
	microcode?: number;
	fmc?: number;
	/** .4 (VCEK). */
	hwid?: Buffer;
	/** .5 (VLEK), with a leading "CN=" removed. */
	cloudProvider?: string;
}

function extInteger(v: Buffer, what: string, depth = 0): number {
	const t = readTlv(v, 0, v.length, what);
	if (t.end !== v.length)
		throw derError(what, "trailing bytes in an SPL extension");
	if (t.tag === 0x04 && depth === 0)
		return extInteger(v.subarray(t.start, t.end), what, 1);
	const n = decodeSmallInt(v, t, what);
	if (n > 255) throw derError(what, "SPL out of range (0..255)");
	return n;
}

function extString(v: Buffer, what: string): string {
	if (v.length >= 2 && [0x0c, 0x13, 0x16].includes(v[0] as number)) {
		const t = readTlv(v, 0, v.length, what);
		if (t.end === v.length) return v.toString("utf8", t.start, t.end);
	}
	if (/^[\x20-\x7e]*$/.test(v.toString("latin1"))) return v.toString("latin1");
	throw derError(what, "string extension");
}

function extHwid(v: Buffer, what: string): Buffer {
	for (const n of [64, 8]) {
		if (v.length === n) return Buffer.from(v);
		if (v.length === n + 2 && v[0] === 0x04 && v[1] === n)
			return Buffer.from(v.subarray(2));
	}
	throw derError(what, `hardware ID of ${v.length} bytes`);
}

/** Reads AMD's extensions from a VCEK / VLEK. Throws EVIDENCE_INVALID when one is malformed. */
export function amdExtensions(
	cert: ParsedCert,
	what = "VCEK/VLEK",
): AmdExtensions {
	const out: AmdExtensions = {};
	const e = cert.extensions;
	const get = (arc: string): Buffer | undefined => e.get(AMD_ARC + arc);
	const name = get("2");
	if (name) out.productName = extString(name, `${what} product name`);
	const spl: [keyof AmdExtensions, string][] = [
		["bootloader", "3.1"],
		["tee", "3.2"],
		["snp", "3.3"],
		["microcode", "3.8"],
		["fmc", "3.9"],
	];
	for (const [k, arc] of spl) {
		const v = get(arc);
		if (v)
			(out as Record<string, number>)[k] = extInteger(v, `${what} ${k} SPL`);
	}
	const hwid = get("4");
	if (hwid) out.hwid = extHwid(hwid, `${what} hardware ID`);
	const csp = get("5");
	if (csp)
		out.cloudProvider = extString(csp, `${what} cloud provider`).replace(
			/^CN=/,
			"",
		);
	return out;
}

// ---------------------------------------------------------------------------------------------
// Chain

export type SignerKind = "vcek" | "vlek";

export interface VerifiedChain {
	product: SnpProduct;
	/** What the intermediate signs: VCEKs (ASK) or VLEKs (ASVK). */
	signer: SignerKind;
	ask: ParsedCert;
	ark: ParsedCert;
}

export interface VerifiedLeaf {
	cert: ParsedCert;
	ext: AmdExtensions;
}

function untrusted(detail: string): DadiError {
	return new DadiError("CHAIN_UNTRUSTED", `SEV-SNP chain: ${detail}`);
}

function badSignature(detail: string): DadiError {
	return new DadiError("SIGNATURE_INVALID", `SEV-SNP chain: ${detail}`);
}

const PRODUCT_NAMES: Record<string, SnpProduct> = {
	Milan: "milan",
	Genoa: "genoa",
	Turin: "turin",
};

function signedBy(cert: ParsedCert, issuer: ParsedCert): boolean {
	try {
		return cert.x509.verify(issuer.publicKey);
	} catch {
		return false;
	}
}

function requirePss(cert: ParsedCert, what: string): void {
	if (!cert.rsaPssSha384)
		throw new DadiError(
			"EVIDENCE_UNSUPPORTED",
			`${what}: signature algorithm is not RSASSA-PSS SHA-384 (salt 48)`,
		);
}

function requireRsa(cert: ParsedCert, what: string): void {
	const t = cert.publicKey.asymmetricKeyType;
	const bits = cert.publicKey.asymmetricKeyDetails?.modulusLength ?? 0;
	if ((t !== "rsa" && t !== "rsa-pss") || bits < 2048)
		throw new DadiError(
			"EVIDENCE_UNSUPPORTED",
			`${what}: expected an RSA key of at least 2048 bits`,
		);
}

/**
 * Verifies ASK (or ASVK) → ARK: product names, exact name chaining, the RSA-PSS signatures, and the
 * ARK's (and when pinned, the intermediate's) fingerprint. It does not look at validity (see
 * checkValidity), so a verified chain can be cached and re-checked against each `now`.
 */
export function verifyChain(
	ask: ParsedCert,
	ark: ParsedCert,
	trust: TrustAnchors,
	product?: SnpProduct,
): VerifiedChain {
	requirePss(ark, "ARK");
	requirePss(ask, "ASK");
	requireRsa(ark, "ARK");
	requireRsa(ask, "ASK");
	const arkM = /^ARK-(Milan|Genoa|Turin)$/.exec(ark.subjectCn);
	if (!arkM)
		throw untrusted(
			`the root "${ark.subjectCn.slice(0, 64)}" is not an AMD ARK`,
		);
	const askM = /^SEV-(VLEK-)?(Milan|Genoa|Turin)$/.exec(ask.subjectCn);
	if (!askM)
		throw untrusted(
			`the intermediate "${ask.subjectCn.slice(0, 64)}" is not an AMD ASK/ASVK`,
		);
	if (askM[2] !== arkM[1])
		throw untrusted(
			`the intermediate (${askM[2]}) and root (${arkM[1]}) are of different products`,
		);
	const p = PRODUCT_NAMES[arkM[1] as string] as SnpProduct;
	if (product !== undefined && product !== p)
		throw untrusted(`expected a ${product} chain, got ${p}`);
	if (!ark.issuerDer.equals(ark.subjectDer))
		throw untrusted("the ARK is not self-issued");
	if (!ask.issuerDer.equals(ark.subjectDer))
		throw untrusted("the ASK was not issued by this ARK");
	if (!signedBy(ark, ark))
		throw badSignature("the ARK's self-signature does not verify");
	if (!signedBy(ask, ark))
		throw badSignature("the ASK's signature does not verify under the ARK");
	const arks = trust.ark[p] ?? [];
	if (!arks.includes(ark.sha256))
		throw untrusted(`the ARK (sha256 ${ark.sha256}) is not a pinned ${p} root`);
	const pinned = trust.intermediates?.[p];
	if (pinned && !pinned.includes(ask.sha256))
		throw untrusted(
			`the intermediate (sha256 ${ask.sha256}) is not pinned for ${p}`,
		);
	return { product: p, signer: askM[1] ? "vlek" : "vcek", ask, ark };
}

/**
 * Verifies the VCEK / VLEK under a verified chain: its kind matches the intermediate (ASK signs
 * VCEKs, ASVK signs VLEKs), its issuer is exactly the intermediate, its product name (when present)
 * is the chain's, its signature verifies, and its key is ECDSA P-384.
 */
export function verifyLeaf(
	leaf: ParsedCert,
	chain: VerifiedChain,
): VerifiedLeaf {
	const what = chain.signer.toUpperCase();
	requirePss(leaf, what);
	const expectedCn = chain.signer === "vlek" ? "SEV-VLEK" : "SEV-VCEK";
	if (leaf.subjectCn !== expectedCn)
		throw untrusted(
			`the leaf "${leaf.subjectCn.slice(0, 64)}" is not a ${what} (the intermediate is ${chain.ask.subjectCn})`,
		);
	if (!leaf.issuerDer.equals(chain.ask.subjectDer))
		throw untrusted(
			`the ${what} was issued by "${leaf.issuerCn.slice(0, 64)}", not by ${chain.ask.subjectCn}`,
		);
	const ext = amdExtensions(leaf, what);
	if (ext.productName !== undefined) {
		const name = ext.productName.split("-")[0] ?? "";
		if (PRODUCT_NAMES[name] !== chain.product)
			throw untrusted(
				`the ${what} is for product "${ext.productName.slice(0, 32)}", the chain for ${chain.product}`,
			);
	}
	if (!signedBy(leaf, chain.ask))
		throw badSignature(
			`the ${what}'s signature does not verify under ${chain.ask.subjectCn}`,
		);
	const k = leaf.publicKey;
	if (
		k.asymmetricKeyType !== "ec" ||
		k.asymmetricKeyDetails?.namedCurve !== "secp384r1"
	)
		throw new DadiError(
			"EVIDENCE_UNSUPPORTED",
			`${what}: expected an ECDSA P-384 key`,
		);
	return { cert: leaf, ext };
}

/** CERT_EXPIRED unless notBefore <= now <= notAfter. */
export function checkValidity(cert: ParsedCert, now: Date, what: string): void {
	const t = now.getTime();
	if (!Number.isFinite(t))
		throw new DadiError("USAGE", "SEV-SNP: `now` is not a valid date");
	if (t < cert.notBefore.getTime() || t > cert.notAfter.getTime())
		throw new DadiError(
			"CERT_EXPIRED",
			`${what} is valid from ${cert.notBefore.toISOString()} to ${cert.notAfter.toISOString()}, not at ${now.toISOString()}`,
		);
}
