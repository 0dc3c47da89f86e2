/**
 * Intel TDX quote verification (pure and synchronous: quote, collateral, trust and clock come in).
 *
 * Order of checks, each with its error code:
 *  1. parse the quote (EVIDENCE_INVALID / EVIDENCE_UNSUPPORTED);
 *  2. the PCK chain in the quote ends in a pinned Intel SGX Root CA (CHAIN_UNTRUSTED), each link
 *     signed by the next (SIGNATURE_INVALID), all valid at `now` (CERT_EXPIRED);
 *  3. the QE report is signed by the PCK key (SIGNATURE_INVALID);
 *  4. QE REPORTDATA = SHA-256(attestation key || QE auth data) || 32 zero bytes (TCB_MISMATCH);
 *  5. the quote (header and body) is signed by the attestation key (SIGNATURE_INVALID);
 *  6. when given, the root CRL and PCK CRL are signed by their issuers, current, and list neither the
 *     PCK nor its CA (CERT_REVOKED);
 *  7. when given, TCB info and QE identity: signed by the Intel SGX TCB Signing key chained to the
 *     pinned root, current, FMSPC/PCE-ID/QE identity agree (TCB_MISMATCH) → TCB status + advisories;
 *  8. REPORTDATA and MRCONFIGID bind the expected values when given (EVIDENCE_INVALID).
 *
 * A context caches what does not depend on the quote's own bytes or the clock (verified chains,
 * collateral signatures, CRL signatures, QE report signatures per PCK) by SHA-256 digest, so that a
 * repeated verification costs about one ECDSA verification (the quote's own signature).
 */
import { createHash, type KeyObject, X509Certificate } from "node:crypto";
import { DadiError } from "../../errors.js";
import { reportDataMatches } from "../../kbs/report-data.js";
import type { Claims } from "../claims.js";
import {
	checkCollateralWindow,
	checkSigningChain,
	convergeStatus,
	evaluateQe,
	evaluateTdxTcb,
	p256Key,
	type QeIdentity,
	type TcbInfo,
	verifyP1363,
	verifyQeIdentitySignature,
	verifyTcbInfoSignature,
} from "./collateral.js";
import {
	certFields,
	checkCrl,
	derAt,
	derBytes,
	derChildren,
	derExpect,
	derOid,
	derSmallInt,
	type ParsedCrl,
	parseCrl,
} from "./crl.js";
import { type ParsedQuote, parseQuote, pemCertificates } from "./quote.js";
import {
	type CheckedChain,
	checkChain,
	checkChainWindow,
	DEFAULT_TDX_TRUST,
	type TdxTrust,
} from "./trust.js";

export interface TdxCollateral {
	/** Intel PCS TCB info response body (text, exactly as received). */
	tcbInfo?: string;
	/** Intel PCS QE identity response body (text, exactly as received). */
	qeIdentity?: string;
	/** The TCB-Info-Issuer-Chain / SGX-Enclave-Identity-Issuer-Chain (PEM, URL-decoded). */
	tcbSigningChain?: string;
	pckCrl?: Buffer;
	rootCrl?: Buffer;
	/** The PCK CRL's issuer chain (PEM); when absent the issuer is taken from the quote's chain. */
	pckCrlIssuerChain?: string;
}

export interface TdxVerifyOptions {
	quote: Buffer;
	collateral?: TdxCollateral;
	now: Date;
	/** The digest REPORTDATA must start with (rest zero). */
	expectedReportData?: Buffer;
	/** The digest MRCONFIGID must start with (rest zero). */
	expectedConfigId?: Buffer;
}

export interface TdxResult {
	quote: ParsedQuote;
	/** What the (verified) PCK certificate says about the platform. */
	pck: PckInfo;
	claims: Claims;
	/** Set when TCB info was checked. */
	tcbStatus?: string;
	advisoryIds: string[];
	/** True when TCB info, QE identity and both CRLs were all given and checked. */
	collateralChecked: boolean;
}

export interface TdxContext {
	readonly trust: TdxTrust;
	verify(o: TdxVerifyOptions): TdxResult;
}

/** SGX extension OIDs in the PCK certificate. */
const SGX_EXT = "1.2.840.113741.1.13.1";

export interface PckInfo {
	fmspc: string;
	pceId: string;
	pceSvn: number;
	cpuSvn: Buffer;
	sgxComponents: number[];
}

function pckInvalid(detail: string): DadiError {
	return new DadiError(
		"EVIDENCE_INVALID",
		`TDX PCK certificate SGX extension: ${detail}`,
	);
}

/** Reads FMSPC, PCE-ID and the TCB (16 component SVNs, PCESVN, CPUSVN) from the SGX extension. */
export function parsePckExtension(ext: Buffer): PckInfo {
	const top = derExpect(derAt(ext, 0, ext.length), 0x30, "SGX extensions");
	if (top.end !== ext.length) throw pckInvalid("trailing bytes");
	let fmspc: Buffer | undefined;
	let pceId: Buffer | undefined;
	let pceSvn: number | undefined;
	let cpuSvn: Buffer | undefined;
	const comps: (number | undefined)[] = new Array(16).fill(undefined);
	for (const item of derChildren(ext, top)) {
		const [o, v] = derChildren(ext, derExpect(item, 0x30, "SGX extension"));
		if (!o || !v) throw pckInvalid("entry without a value");
		const oid = derOid(ext, o);
		if (oid === `${SGX_EXT}.4`)
			fmspc = derBytes(ext, derExpect(v, 0x04, "FMSPC"));
		else if (oid === `${SGX_EXT}.3`)
			pceId = derBytes(ext, derExpect(v, 0x04, "PCE-ID"));
		else if (oid === `${SGX_EXT}.2`) {
			for (const t of derChildren(ext, derExpect(v, 0x30, "TCB"))) {
				const [to, tv] = derChildren(ext, derExpect(t, 0x30, "TCB entry"));
				if (!to || !tv) throw pckInvalid("TCB entry without a value");
				const toid = derOid(ext, to);
				const prefix = `${SGX_EXT}.2.`;
				if (!toid.startsWith(prefix)) continue;
				const n = Number(toid.slice(prefix.length));
				if (n >= 1 && n <= 16) comps[n - 1] = derSmallInt(ext, tv);
				else if (n === 17) pceSvn = derSmallInt(ext, tv);
				else if (n === 18)
					cpuSvn = derBytes(ext, derExpect(tv, 0x04, "CPUSVN"));
			}
		}
	}
	if (fmspc?.length !== 6) throw pckInvalid("no 6-byte FMSPC");
	if (pceId?.length !== 2) throw pckInvalid("no 2-byte PCE-ID");
	if (pceSvn === undefined) throw pckInvalid("no PCESVN");
	if (cpuSvn?.length !== 16) throw pckInvalid("no 16-byte CPUSVN");
	if (comps.some((c) => c === undefined))
		throw pckInvalid("missing TCB component SVNs");
	return {
		fmspc: fmspc.toString("hex"),
		pceId: pceId.toString("hex"),
		pceSvn,
		cpuSvn,
		sgxComponents: comps as number[],
	};
}

/** A bounded cache: cleared when full (simple, and enough for a handful of platforms). */
class Cache<V> {
	private readonly m = new Map<string, V>();
	constructor(private readonly max = 256) {}
	get(k: string): V | undefined {
		return this.m.get(k);
	}
	set(k: string, v: V): V {
		if (this.m.size >= this.max) this.m.clear();
		this.m.set(k, v);
		return v;
	}
}

function digest(...parts: (Buffer | string)[]): string {
	const h = createHash("sha256");
	for (const p of parts) {
		const b = typeof p === "string" ? Buffer.from(p, "utf8") : p;
		const len = Buffer.alloc(4);
		len.writeUInt32BE(b.length);
		h.update(len).update(b);
	}
	return h.digest("hex");
}

const hex = (b: Buffer) => b.toString("hex");

export function createTdxContext(
	trust: TdxTrust = DEFAULT_TDX_TRUST,
): TdxContext {
	const chains = new Cache<{ chain: CheckedChain; pck: PckInfo }>();
	const signingChains = new Cache<CheckedChain>();
	const qeSigs = new Cache<true>(1024);
	const attKeys = new Cache<KeyObject>(1024);
	const tcbInfos = new Cache<TcbInfo>();
	const qeIds = new Cache<QeIdentity>();
	const crls = new Cache<ParsedCrl>();

	function pckChain(q: ParsedQuote) {
		const k = digest(...q.pckChain);
		const hit = chains.get(k);
		if (hit) return hit;
		const chain = checkChain(q.pckChain, trust, "TDX PCK chain");
		if (chain.certs.length < 2)
			throw new DadiError(
				"CHAIN_UNTRUSTED",
				"TDX PCK chain: a bare root is not a PCK certificate",
			);
		const leaf = chain.certs[0];
		const ext = leaf?.fields.extensions.get(SGX_EXT);
		if (!ext) throw pckInvalid("absent from the PCK certificate");
		return chains.set(k, { chain, pck: parsePckExtension(ext) });
	}

	function signingChain(pem: string, what: string): CheckedChain {
		const k = digest(pem);
		return (
			signingChains.get(k) ??
			signingChains.set(k, checkSigningChain(pem, trust, what))
		);
	}

	function checkedCrl(
		der: Buffer,
		issuer: { key: KeyObject; der: Buffer; subject: Buffer },
		now: Date,
		what: string,
	): ParsedCrl {
		const k = digest(der, issuer.der);
		let c = crls.get(k);
		if (!c) {
			c = parseCrl(der);
			if (!c.issuer.equals(issuer.subject))
				throw new DadiError(
					"CHAIN_UNTRUSTED",
					`${what}: not issued by the expected CA (wrong CRL: platform vs processor CA, or another issuer)`,
				);
			// Signature (and algorithm) once; the window below on every call.
			checkCrl(c, issuer.key, c.thisUpdate, what);
			crls.set(k, c);
		}
		const t = now.getTime();
		if (
			t < c.thisUpdate.getTime() ||
			(c.nextUpdate && t > c.nextUpdate.getTime())
		)
			throw new DadiError(
				"CERT_EXPIRED",
				`${what}: valid ${c.thisUpdate.toISOString()} to ${c.nextUpdate?.toISOString() ?? "(no nextUpdate)"}, not at ${now.toISOString()}`,
			);
		return c;
	}

	function verify(o: TdxVerifyOptions): TdxResult {
		if (!(o.now instanceof Date) || !Number.isFinite(o.now.getTime()))
			throw new DadiError("INTERNAL", "verifyTdx: now must be a valid Date");
		const q = parseQuote(o.quote);

		// 2. PCK chain to the pinned root, valid now.
		const { chain, pck } = pckChain(q);
		checkChainWindow(chain, o.now, "TDX PCK chain");
		const leaf = chain.certs[0];
		if (!leaf) throw new DadiError("INTERNAL", "empty chain");

		// 3. QE report signed by the PCK key.
		const qk = digest(leaf.der, q.qeReport.raw, q.qeReportSignature);
		if (!qeSigs.get(qk)) {
			if (
				!verifyP1363(q.qeReport.raw, q.qeReportSignature, leaf.x509.publicKey)
			)
				throw new DadiError(
					"SIGNATURE_INVALID",
					"TDX quote: the QE report signature does not verify with the PCK key",
				);
			qeSigs.set(qk, true);
		}

		// 4. QE report binds the attestation key and QE auth data.
		const bind = createHash("sha256")
			.update(q.attestationKey)
			.update(q.qeAuthData)
			.digest();
		if (!reportDataMatches(q.qeReport.reportData, bind, 64))
			throw new DadiError(
				"TCB_MISMATCH",
				"TDX quote: the QE report does not bind the attestation key and QE auth data",
			);

		// 5. The quote signature.
		const ak = hex(q.attestationKey);
		const key = attKeys.get(ak) ?? attKeys.set(ak, p256Key(q.attestationKey));
		if (!verifyP1363(q.signedRegion, q.signature, key))
			throw new DadiError(
				"SIGNATURE_INVALID",
				"TDX quote: the quote signature does not verify with the attestation key",
			);

		// 6. CRLs.
		const c = o.collateral ?? {};
		const root = chain.certs[chain.certs.length - 1];
		if (!root) throw new DadiError("INTERNAL", "empty chain");
		if (c.rootCrl) {
			if (!Buffer.isBuffer(c.rootCrl))
				throw new DadiError("EVIDENCE_INVALID", "root CRL must be bytes");
			const rc = checkedCrl(
				c.rootCrl,
				{
					key: root.x509.publicKey,
					der: root.der,
					subject: root.fields.subject,
				},
				o.now,
				"TDX root CRL",
			);
			if (!rc.issuer.equals(root.fields.subject))
				throw new DadiError(
					"CHAIN_UNTRUSTED",
					"TDX root CRL: not issued by the pinned root",
				);
			for (const cert of chain.certs.slice(1, -1))
				if (rc.revoked.has(cert.fields.serialHex))
					throw new DadiError(
						"CERT_REVOKED",
						`TDX PCK chain: CA certificate ${cert.fields.serialHex} is revoked`,
					);
		}
		if (c.pckCrl) {
			if (!Buffer.isBuffer(c.pckCrl))
				throw new DadiError("EVIDENCE_INVALID", "PCK CRL must be bytes");
			let issuer = chain.certs[1];
			if (c.pckCrlIssuerChain !== undefined) {
				const ders = pemCertificates(
					c.pckCrlIssuerChain,
					"TDX PCK CRL issuer chain",
				);
				const k = digest(...ders);
				const ic =
					signingChains.get(k) ??
					signingChains.set(
						k,
						checkChain(ders, trust, "TDX PCK CRL issuer chain"),
					);
				checkChainWindow(ic, o.now, "TDX PCK CRL issuer chain");
				issuer = ic.certs[0];
			}
			if (!issuer?.x509.ca)
				throw new DadiError(
					"CHAIN_UNTRUSTED",
					"TDX PCK CRL: no CA issuer certificate",
				);
			const pc = checkedCrl(
				c.pckCrl,
				{
					key: issuer.x509.publicKey,
					der: issuer.der,
					subject: issuer.fields.subject,
				},
				o.now,
				"TDX PCK CRL",
			);
			if (
				!pc.issuer.equals(issuer.fields.subject) ||
				!pc.issuer.equals(leaf.fields.issuer)
			)
				throw new DadiError(
					"CHAIN_UNTRUSTED",
					"TDX PCK CRL: not issued by the PCK certificate's issuer (wrong CRL: platform vs processor CA?)",
				);
			if (pc.revoked.has(leaf.fields.serialHex))
				throw new DadiError(
					"CERT_REVOKED",
					`TDX PCK certificate ${leaf.fields.serialHex} is revoked`,
				);
		}

		// 7. TCB info and QE identity.
		let tcbStatus: string | undefined;
		let advisoryIds: string[] = [];
		let tcbDate = "";
		let tdxModuleId = "";
		let qeStatus = "";
		if (
			(c.tcbInfo !== undefined || c.qeIdentity !== undefined) &&
			c.tcbSigningChain === undefined
		)
			throw new DadiError(
				"EVIDENCE_INVALID",
				"TDX collateral: TCB info or QE identity given without its signing chain",
			);
		if (c.tcbInfo !== undefined && c.tcbSigningChain !== undefined) {
			const sc = signingChain(c.tcbSigningChain, "TDX TCB info");
			const k = digest(c.tcbInfo, c.tcbSigningChain);
			const info =
				tcbInfos.get(k) ??
				tcbInfos.set(k, verifyTcbInfoSignature(c.tcbInfo, sc));
			checkCollateralWindow(info, sc, o.now, "TDX TCB info");
			const ev = evaluateTdxTcb(
				info,
				{ ...pck },
				{
					teeTcbSvn: q.body.teeTcbSvn,
					mrSignerSeam: q.body.mrSignerSeam,
					seamAttributes: q.body.seamAttributes,
				},
			);
			tcbStatus = ev.status;
			advisoryIds = ev.advisoryIds;
			tcbDate = ev.tcbDate;
			tdxModuleId = ev.tdxModuleId;
		}
		if (c.qeIdentity !== undefined && c.tcbSigningChain !== undefined) {
			const sc = signingChain(c.tcbSigningChain, "TDX QE identity");
			const k = digest(c.qeIdentity, c.tcbSigningChain);
			const id =
				qeIds.get(k) ??
				qeIds.set(k, verifyQeIdentitySignature(c.qeIdentity, sc));
			checkCollateralWindow(id, sc, o.now, "TDX QE identity");
			const qe = evaluateQe(id, q.qeReport);
			qeStatus = qe.status;
			if (tcbStatus !== undefined) {
				tcbStatus = convergeStatus(tcbStatus, qe.status);
				advisoryIds = [...new Set([...advisoryIds, ...qe.advisoryIds])];
			}
		}
		const collateralChecked =
			c.tcbInfo !== undefined &&
			c.qeIdentity !== undefined &&
			c.pckCrl !== undefined &&
			c.rootCrl !== undefined;

		// 8. Bindings.
		if (
			o.expectedReportData &&
			!reportDataMatches(q.body.reportData, o.expectedReportData, 64)
		)
			throw new DadiError(
				"EVIDENCE_INVALID",
				"TDX quote: REPORTDATA does not bind this session's nonce and tee-pubkey (replayed or forged evidence)",
			);
		if (
			o.expectedConfigId &&
			!reportDataMatches(q.body.mrConfigId, o.expectedConfigId, 48)
		)
			throw new DadiError(
				"EVIDENCE_INVALID",
				"TDX quote: MRCONFIGID does not bind the init-data the guest sent",
			);

		const b = q.body;
		const svn = b.teeTcbSvn;
		const claims: Claims = {
			tee: "tdx",
			debug: ((b.tdAttributes[0] as number) & 1) === 1,
			measurement: hex(b.mrTd),
			report_data: hex(b.reportData),
			init_data: hex(b.mrConfigId),
			tcb: {
				tdx_module_svn_minor: svn[0] as number,
				tdx_module_svn_major: svn[1] as number,
				tdx_late_microcode_svn: svn[2] as number,
				pce_svn: pck.pceSvn,
				qe_svn: q.qeReport.isvSvn,
			},
			tcb_status: tcbStatus ?? "",
			tee_specific: {
				quote_version: q.version,
				body_type: q.bodyType,
				qe_vendor_id: hex(q.qeVendorId),
				user_data: hex(q.userData),
				fmspc: pck.fmspc,
				pce_id: pck.pceId,
				cpu_svn: hex(pck.cpuSvn),
				pck_serial: leaf.fields.serialHex,
				mrseam: hex(b.mrSeam),
				mrsignerseam: hex(b.mrSignerSeam),
				seam_attributes: hex(b.seamAttributes),
				td_attributes: hex(b.tdAttributes),
				septve_disable: ((b.tdAttributes[3] as number) & 0x10) !== 0,
				xfam: hex(b.xfam),
				mrowner: hex(b.mrOwner),
				mrownerconfig: hex(b.mrOwnerConfig),
				rtmr0: hex(b.rtmr[0]),
				rtmr1: hex(b.rtmr[1]),
				rtmr2: hex(b.rtmr[2]),
				rtmr3: hex(b.rtmr[3]),
				tee_tcb_svn: hex(svn),
				tee_tcb_svn_2: b.teeTcbSvn2 ? hex(b.teeTcbSvn2) : "",
				mrservicetd: b.mrServiceTd ? hex(b.mrServiceTd) : "",
				qe_svn: q.qeReport.isvSvn,
				qe_tcb_status: qeStatus,
				tcb_date: tcbDate,
				tdx_module_id: tdxModuleId,
				advisory_ids: advisoryIds,
				collateral_checked: collateralChecked,
			},
		};
		return {
			quote: q,
			pck,
			claims,
			tcbStatus,
			advisoryIds,
			collateralChecked,
		};
	}

	return { trust, verify };
}

/**
 * The FMSPC the quote's (not yet verified) PCK certificate names: used only to choose which
 * collateral to fetch before verification.
 */
export function quoteFmspc(quote: Buffer): string {
	const q = parseQuote(quote);
	const leaf = q.pckChain[0];
	if (!leaf) throw pckInvalid("no PCK certificate");
	const ext = certFields(leaf).extensions.get(SGX_EXT);
	if (!ext) throw pckInvalid("absent from the PCK certificate");
	return parsePckExtension(ext).fmspc;
}

/**
 * Which Intel PCK CA issued the quote's PCK certificate (by its issuer's CN), for choosing the PCK
 * CRL; undefined when the issuer is neither (the CRL check then refuses any CRL given).
 */
export function quotePckCa(
	quote: Buffer,
): "processor" | "platform" | undefined {
	const leaf = parseQuote(quote).pckChain[0];
	if (!leaf) return undefined;
	let issuer: string;
	try {
		issuer = new X509Certificate(leaf).issuer;
	} catch {
		return undefined;
	}
	if (/^CN=Intel SGX PCK Processor CA$/m.test(issuer)) return "processor";
	if (/^CN=Intel SGX PCK Platform CA$/m.test(issuer)) return "platform";
	return undefined;
}

/** One-shot verification (no cache shared between calls). */
export function verifyTdx(
	o: TdxVerifyOptions & { trust?: TdxTrust },
): TdxResult {
	return createTdxContext(o.trust ?? DEFAULT_TDX_TRUST).verify(o);
}
