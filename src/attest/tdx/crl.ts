/**
 * A minimal, bounds-checked DER reader and what the TDX verifier needs from it: X.509 CRLs
 * (issuer, thisUpdate/nextUpdate, revoked serial numbers, the signature over the TBS), and the
 * raw names, serial and extensions of certificates (Node's X509Certificate does the rest). Pure.
 *
 * Only definite lengths and single-byte tags are accepted (DER never needs more here); anything
 * else, and every length that runs past its parent, is EVIDENCE_INVALID.
 */
import { verify as cryptoVerify, type KeyObject } from "node:crypto";
import { DadiError } from "../../errors.js";

export interface DerNode {
	tag: number;
	/** Offset of the tag byte. */
	start: number;
	/** Offset of the content. */
	content: number;
	/** Offset one past the content. */
	end: number;
}

function bad(what: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `DER: ${what}`);
}

/** Reads one TLV at `pos`, which must end by `limit`. */
export function derAt(buf: Buffer, pos: number, limit: number): DerNode {
	if (limit > buf.length || pos + 2 > limit) throw bad("truncated header");
	const tag = buf[pos] as number;
	if ((tag & 0x1f) === 0x1f) throw bad("multi-byte tag");
	let len = buf[pos + 1] as number;
	let content = pos + 2;
	if (len & 0x80) {
		const n = len & 0x7f;
		if (n === 0 || n > 4) throw bad("unsupported length form");
		if (content + n > limit) throw bad("truncated length");
		len = 0;
		for (let i = 0; i < n; i++) len = len * 256 + (buf[content + i] as number);
		content += n;
	}
	const end = content + len;
	if (end > limit) throw bad("length runs past its container");
	return { tag, start: pos, content, end };
}

export function derChildren(buf: Buffer, node: DerNode): DerNode[] {
	if ((node.tag & 0x20) === 0) throw bad("expected a constructed value");
	const out: DerNode[] = [];
	let p = node.content;
	while (p < node.end) {
		const c = derAt(buf, p, node.end);
		out.push(c);
		p = c.end;
		if (out.length > 100_000) throw bad("too many elements");
	}
	return out;
}

export function derExpect(
	node: DerNode | undefined,
	tag: number,
	what: string,
): DerNode {
	if (!node || node.tag !== tag)
		throw bad(`expected ${what} (tag 0x${tag.toString(16)})`);
	return node;
}

export function derBytes(buf: Buffer, n: DerNode): Buffer {
	return buf.subarray(n.content, n.end);
}

export function derRaw(buf: Buffer, n: DerNode): Buffer {
	return buf.subarray(n.start, n.end);
}

export function derOid(buf: Buffer, n: DerNode): string {
	derExpect(n, 0x06, "OBJECT IDENTIFIER");
	const b = derBytes(buf, n);
	if (b.length === 0) throw bad("empty OID");
	const parts: number[] = [];
	let v = 0;
	for (let i = 0; i < b.length; i++) {
		const x = b[i] as number;
		v = v * 128 + (x & 0x7f);
		if (v > Number.MAX_SAFE_INTEGER / 256) throw bad("OID arc too large");
		if ((x & 0x80) === 0) {
			if (parts.length === 0) {
				const first = v < 80 ? Math.floor(v / 40) : 2;
				parts.push(first, v - first * 40);
			} else parts.push(v);
			v = 0;
		} else if (i === b.length - 1) throw bad("truncated OID");
	}
	return parts.join(".");
}

/** A small non-negative INTEGER (SVNs); refuses negative or oversized values. */
export function derSmallInt(buf: Buffer, n: DerNode): number {
	if (n.tag !== 0x02 && n.tag !== 0x0a) throw bad("expected INTEGER");
	const b = derBytes(buf, n);
	if (b.length === 0 || b.length > 6) throw bad("INTEGER size");
	if ((b[0] as number) & 0x80) throw bad("negative INTEGER");
	let v = 0;
	for (const x of b) v = v * 256 + x;
	return v;
}

/** An INTEGER's magnitude as lowercase hex without leading zero bytes (serial numbers). */
export function derSerialHex(buf: Buffer, n: DerNode): string {
	derExpect(n, 0x02, "INTEGER");
	let b = derBytes(buf, n);
	if (b.length === 0) throw bad("empty INTEGER");
	let i = 0;
	while (i < b.length - 1 && b[i] === 0) i++;
	b = b.subarray(i);
	return b.toString("hex");
}

export function derTime(buf: Buffer, n: DerNode): Date {
	const s = derBytes(buf, n).toString("latin1");
	const u = n.tag === 0x17 ? /^(\d\d)(\d{10})Z$/.exec(s) : null;
	if (u) {
		const yy = Number(u[1]);
		return utc(yy >= 50 ? 1900 + yy : 2000 + yy, u[2] as string);
	}
	const g = n.tag === 0x18 ? /^(\d{4})(\d{10})Z$/.exec(s) : null;
	if (g) return utc(Number(g[1]), g[2] as string);
	throw bad("malformed time");
}

function utc(year: number, rest: string): Date {
	const d = (i: number) => Number(rest.slice(i, i + 2));
	const t = Date.UTC(year, d(0) - 1, d(2), d(4), d(6), d(8));
	if (!Number.isFinite(t)) throw bad("malformed time");
	return new Date(t);
}

/** The parts of a certificate Node's X509Certificate does not give as bytes. */
export interface CertFields {
	serialHex: string;
	issuer: Buffer;
	subject: Buffer;
	/** Extension OID → extnValue content (the OCTET STRING's bytes). */
	extensions: Map<string, Buffer>;
}

export function certFields(der: Buffer): CertFields {
	const cert = derExpect(derAt(der, 0, der.length), 0x30, "Certificate");
	if (cert.end !== der.length) throw bad("bytes after the certificate");
	const [tbsNode] = derChildren(der, cert);
	const tbs = derChildren(der, derExpect(tbsNode, 0x30, "TBSCertificate"));
	let i = 0;
	if (tbs[0]?.tag === 0xa0) i = 1; // [0] version
	const serialHex = derSerialHex(der, derExpect(tbs[i], 0x02, "serial"));
	derExpect(tbs[i + 1], 0x30, "signature algorithm");
	const issuer = derRaw(der, derExpect(tbs[i + 2], 0x30, "issuer"));
	derExpect(tbs[i + 3], 0x30, "validity");
	const subject = derRaw(der, derExpect(tbs[i + 4], 0x30, "subject"));
	derExpect(tbs[i + 5], 0x30, "subjectPublicKeyInfo");
	const extensions = new Map<string, Buffer>();
	for (const n of tbs.slice(i + 6)) {
		if (n.tag !== 0xa3) continue;
		const [seq] = derChildren(der, n);
		for (const ext of derChildren(der, derExpect(seq, 0x30, "Extensions"))) {
			const parts = derChildren(der, derExpect(ext, 0x30, "Extension"));
			const oid = derOid(der, derExpect(parts[0], 0x06, "extnID"));
			const value = parts[parts.length - 1];
			extensions.set(
				oid,
				derBytes(der, derExpect(value, 0x04, "extnValue OCTET STRING")),
			);
		}
	}
	return { serialHex, issuer, subject, extensions };
}

export interface ParsedCrl {
	tbs: Buffer;
	/** DER of the issuer Name, compared byte for byte with certificates' subject/issuer. */
	issuer: Buffer;
	thisUpdate: Date;
	nextUpdate?: Date;
	/** Revoked serial numbers, lowercase hex without leading zero bytes. */
	revoked: Set<string>;
	signatureAlgorithm: string;
	/** DER-encoded ECDSA signature (the BIT STRING's content after the unused-bits byte). */
	signature: Buffer;
}

const ECDSA_SHA256 = "1.2.840.10045.4.3.2";

export function parseCrl(der: Buffer): ParsedCrl {
	if (!Buffer.isBuffer(der) || der.length > 16 * 1024 * 1024)
		throw bad("CRL: expected at most 16 MiB of DER");
	const top = derExpect(derAt(der, 0, der.length), 0x30, "CertificateList");
	if (top.end !== der.length) throw bad("CRL: bytes after the CRL");
	const [tbsNode, algNode, sigNode] = derChildren(der, top);
	const tbsN = derExpect(tbsNode, 0x30, "TBSCertList");
	const alg = derChildren(der, derExpect(algNode, 0x30, "signatureAlgorithm"));
	const signatureAlgorithm = derOid(der, derExpect(alg[0], 0x06, "algorithm"));
	const sigBits = derBytes(der, derExpect(sigNode, 0x03, "signatureValue"));
	if (sigBits.length < 2 || sigBits[0] !== 0) throw bad("CRL: signature bits");
	const t = derChildren(der, tbsN);
	let i = 0;
	if (t[0]?.tag === 0x02) i = 1; // version
	derExpect(t[i], 0x30, "CRL signature algorithm");
	const issuer = derRaw(der, derExpect(t[i + 1], 0x30, "CRL issuer"));
	const tu = t[i + 2];
	if (!tu) throw bad("CRL: no thisUpdate");
	const thisUpdate = derTime(der, tu);
	let j = i + 3;
	let nextUpdate: Date | undefined;
	const nu = t[j];
	if (nu && (nu.tag === 0x17 || nu.tag === 0x18)) {
		nextUpdate = derTime(der, nu);
		j++;
	}
	const revoked = new Set<string>();
	const rv = t[j];
	if (rv && rv.tag === 0x30) {
		for (const entry of derChildren(der, rv)) {
			const e = derChildren(der, derExpect(entry, 0x30, "revoked entry"));
			revoked.add(derSerialHex(der, derExpect(e[0], 0x02, "revoked serial")));
		}
	}
	return {
		tbs: derRaw(der, tbsN),
		issuer,
		thisUpdate,
		nextUpdate,
		revoked,
		signatureAlgorithm,
		signature: sigBits.subarray(1),
	};
}

/** Checks the CRL's signature with its issuer's key and its window at `now`. */
export function checkCrl(
	crl: ParsedCrl,
	issuerKey: KeyObject,
	now: Date,
	what: string,
): void {
	if (crl.signatureAlgorithm !== ECDSA_SHA256)
		throw new DadiError(
			"EVIDENCE_UNSUPPORTED",
			`${what}: signature algorithm ${crl.signatureAlgorithm} (only ecdsa-with-SHA256)`,
		);
	let ok = false;
	try {
		ok = cryptoVerify("sha256", crl.tbs, issuerKey, crl.signature);
	} catch {
		ok = false;
	}
	if (!ok)
		throw new DadiError(
			"SIGNATURE_INVALID",
			`${what}: the CRL signature does not verify with its issuer's key`,
		);
	const t = now.getTime();
	if (t < crl.thisUpdate.getTime())
		throw new DadiError(
			"CERT_EXPIRED",
			`${what}: not valid before ${crl.thisUpdate.toISOString()}`,
		);
	if (crl.nextUpdate && t > crl.nextUpdate.getTime())
		throw new DadiError(
			"CERT_EXPIRED",
			`${what}: stale since its nextUpdate ${crl.nextUpdate.toISOString()}`,
		);
}
