/**
 * Trust anchors for Intel TDX (and SGX) attestation, and certificate-chain checking against them.
 *
 * The only anchor is the Intel SGX Root CA, pinned by the SHA-256 fingerprint of its DER encoding.
 * Provenance: Intel publishes it at https://certificates.trustedservices.intel.com/Intel_SGX_Provisioning_Certification_RootCA.pem
 * (also https://api.trustedservices.intel.com/sgx/certification/v4/ in PCS responses); the same
 * certificate is vendored by google/go-tdx-guest (verify/trusted_root.pem) and ends every PCK chain in
 * the public sample quotes. Subject CN=Intel SGX Root CA, O=Intel Corporation, L=Santa Clara, ST=CA,
 * C=US; valid 2018-05-21T10:45:10Z to 2049-12-31T23:59:59Z. See keys/intel-sgx-root-ca.md.
 */
import { X509Certificate } from "node:crypto";
import { DadiError } from "../../errors.js";
import { type CertFields, certFields } from "./crl.js";

export const INTEL_SGX_ROOT_CA_FINGERPRINT =
	"44:A0:19:6B:2B:99:F8:89:B8:E1:49:E9:5B:80:7A:35:0E:74:24:96:43:99:E8:85:A7:CB:B8:CC:FA:B6:74:D3";

export interface TdxTrust {
	/** SHA-256 fingerprints of acceptable root certificates (hex, any case, colons optional). */
	rootFingerprints: string[];
}

export const DEFAULT_TDX_TRUST: TdxTrust = {
	rootFingerprints: [INTEL_SGX_ROOT_CA_FINGERPRINT],
};

export function normalizeFingerprint(fp: string): string {
	return fp.replace(/:/g, "").toLowerCase();
}

export interface CheckedCert {
	x509: X509Certificate;
	der: Buffer;
	fields: CertFields;
	notBefore: number;
	notAfter: number;
}

export interface CheckedChain {
	certs: CheckedCert[];
	/** The intersection of the certificates' validity windows (ms since the epoch). */
	notBefore: number;
	notAfter: number;
}

/** Parses one DER certificate; malformed input is EVIDENCE_INVALID. */
export function parseCert(der: Buffer, what: string): CheckedCert {
	let x509: X509Certificate;
	try {
		x509 = new X509Certificate(der);
	} catch {
		throw new DadiError("EVIDENCE_INVALID", `${what}: not a certificate`);
	}
	const fields = certFields(der);
	const notBefore = Date.parse(x509.validFrom);
	const notAfter = Date.parse(x509.validTo);
	if (!Number.isFinite(notBefore) || !Number.isFinite(notAfter))
		throw new DadiError("EVIDENCE_INVALID", `${what}: unreadable validity`);
	return { x509, der, fields, notBefore, notAfter };
}

/**
 * Checks a chain given leaf first: it must end in a pinned root (CHAIN_UNTRUSTED), each certificate
 * must be issued (names, CA flag) and signed by the next (CHAIN_UNTRUSTED / SIGNATURE_INVALID).
 * Validity at a given time is checked separately (checkChainWindow) so verified chains can be cached.
 */
export function checkChain(
	ders: Buffer[],
	trust: TdxTrust,
	what: string,
): CheckedChain {
	if (ders.length === 0)
		throw new DadiError("CHAIN_UNTRUSTED", `${what}: empty chain`);
	const certs = ders.map((d, i) => parseCert(d, `${what} certificate ${i}`));
	const pins = new Set(trust.rootFingerprints.map(normalizeFingerprint));
	const root = certs[certs.length - 1] as CheckedCert;
	if (!pins.has(normalizeFingerprint(root.x509.fingerprint256)))
		throw new DadiError(
			"CHAIN_UNTRUSTED",
			`${what}: does not end in a pinned root (ends in "${root.x509.subject.replace(/\n/g, ", ").slice(0, 120)}", fingerprint ${root.x509.fingerprint256})`,
		);
	if (!root.x509.verify(root.x509.publicKey))
		throw new DadiError(
			"SIGNATURE_INVALID",
			`${what}: the root's self-signature does not verify`,
		);
	for (let i = 0; i + 1 < certs.length; i++) {
		const c = certs[i] as CheckedCert;
		const issuer = certs[i + 1] as CheckedCert;
		if (!issuer.x509.ca || !c.fields.issuer.equals(issuer.fields.subject))
			throw new DadiError(
				"CHAIN_UNTRUSTED",
				`${what}: certificate ${i} is not issued by certificate ${i + 1}`,
			);
		let ok = false;
		try {
			ok = c.x509.verify(issuer.x509.publicKey);
		} catch {
			ok = false;
		}
		if (!ok)
			throw new DadiError(
				"SIGNATURE_INVALID",
				`${what}: certificate ${i}'s signature does not verify with its issuer's key`,
			);
	}
	return {
		certs,
		notBefore: Math.max(...certs.map((c) => c.notBefore)),
		notAfter: Math.min(...certs.map((c) => c.notAfter)),
	};
}

export function checkChainWindow(
	chain: CheckedChain,
	now: Date,
	what: string,
): void {
	const t = now.getTime();
	if (t >= chain.notBefore && t <= chain.notAfter) return;
	for (const [i, c] of chain.certs.entries())
		if (t < c.notBefore || t > c.notAfter)
			throw new DadiError(
				"CERT_EXPIRED",
				`${what}: certificate ${i} ("${c.x509.subject.split("\n")[0]}") is valid ${c.x509.validFrom} to ${c.x509.validTo}, not at ${now.toISOString()}`,
			);
}
