/**
 * AMD SEV-SNP verification: pure and synchronous. Bytes, trust anchors and the clock come in;
 * an SnpResult or a DadiError goes out.
 *
 * Order: parse the report → verify the ASK/ARK chain (product from the names; ARK pinned) →
 * verify the VCEK/VLEK under it → check validity of all three at `now` → verify the report's
 * ECDSA P-384 signature with the leaf's key → the report's signing key is the leaf's kind →
 * (VCEK) the leaf's TCB extensions equal REPORTED_TCB and its hardware ID equals CHIP_ID →
 * REPORT_DATA / HOST_DATA binding.
 *
 * An SnpContext caches verified chains and leaves by the SHA-256 of their DER, so verifying many
 * reports from the same machines costs one parse, one ECDSA verification and a few comparisons.
 */
import {
	createHash,
	verify as cryptoVerify,
	timingSafeEqual,
} from "node:crypto";
import { DadiError } from "../../errors.js";
import { reportDataMatches } from "../../kbs/report-data.js";
import type { Claims } from "../claims.js";
import {
	decodeTcb,
	type ParsedReport,
	parseReport,
	productFromCpuid,
	type SnpProduct,
	type SnpTcb,
	tcbHex,
} from "./report.js";
import { AMD_TRUST, type TrustAnchors } from "./trust.js";
import {
	checkValidity,
	parseCert,
	type SignerKind,
	type VerifiedChain,
	type VerifiedLeaf,
	verifyChain,
	verifyLeaf,
} from "./vcek.js";

export interface SnpVerifyOptions {
	/** The 1184-byte ATTESTATION_REPORT. */
	report: Buffer;
	/** DER VCEK or VLEK. */
	leaf: Buffer;
	/** DER ASK (or ASVK for a VLEK) and ARK. */
	chain: { ask: Buffer; ark: Buffer };
	/** When given, the chain (and a v3+ report's CPUID) must be of this product. */
	product?: SnpProduct;
	/** Defaults to AMD's pinned ARKs (or the context's). */
	trust?: TrustAnchors;
	now: Date;
	/** REPORT_DATA must start with this and be zero after it. */
	expectedReportData?: Buffer;
	/** HOST_DATA must start with this and be zero after it. */
	expectedHostData?: Buffer;
}

export interface SnpResult {
	report: ParsedReport;
	claims: Claims;
	signer: SignerKind;
	product: SnpProduct;
}

export interface SnpContext {
	readonly trust: TrustAnchors;
	verify(o: Omit<SnpVerifyOptions, "trust">): SnpResult;
}

const MAX_CACHE = 256;

function sha256(b: Buffer): string {
	return createHash("sha256").update(b).digest("hex");
}

function remember<V>(m: Map<string, V>, k: string, v: V): V {
	if (m.size >= MAX_CACHE) {
		const first = m.keys().next();
		if (!first.done) m.delete(first.value);
	}
	m.set(k, v);
	return v;
}

function tcbMismatch(detail: string): DadiError {
	return new DadiError("TCB_MISMATCH", `SEV-SNP: ${detail}`);
}

function checkTcb(
	report: ParsedReport,
	leaf: VerifiedLeaf,
	product: SnpProduct,
): SnpTcb {
	const tcb = decodeTcb(report.reportedTcb, product);
	const names: (keyof SnpTcb)[] =
		product === "turin"
			? ["fmc", "bootloader", "tee", "snp", "microcode"]
			: ["bootloader", "tee", "snp", "microcode"];
	for (const n of names) {
		const certV = leaf.ext[n];
		if (certV === undefined)
			throw tcbMismatch(`the VCEK has no ${n} SPL extension`);
		if (certV !== tcb[n])
			throw tcbMismatch(
				`the VCEK is for ${n} SPL ${certV}, the report's reported TCB has ${tcb[n]}`,
			);
	}
	if (!report.chipIdMasked) {
		const hwid = leaf.ext.hwid;
		if (!hwid) throw tcbMismatch("the VCEK has no hardware ID extension");
		const chip =
			hwid.length === 64
				? report.chipId
				: report.chipId.subarray(0, hwid.length);
		const ok =
			(hwid.length === 64 || product === "turin") &&
			timingSafeEqual(hwid, chip);
		if (!ok)
			throw tcbMismatch("the VCEK's hardware ID is not the report's CHIP_ID");
	}
	return tcb;
}

function claimsOf(
	r: ParsedReport,
	tcb: SnpTcb,
	signer: SignerKind,
	product: SnpProduct,
	leaf: VerifiedLeaf,
): Claims {
	const tcbClaim: Record<string, number> = {
		bootloader: tcb.bootloader,
		tee: tcb.tee,
		snp: tcb.snp,
		microcode: tcb.microcode,
	};
	if (tcb.fmc !== undefined) tcbClaim.fmc = tcb.fmc;
	const ts: Claims["tee_specific"] = {
		product,
		signer,
		vmpl: r.vmpl,
		guest_svn: r.guestSvn,
		policy: r.policy.raw.toString(16),
		policy_abi_major: r.policy.abiMajor,
		policy_abi_minor: r.policy.abiMinor,
		smt_allowed: r.policy.smtAllowed,
		migration_agent: r.policy.migrationAgent,
		single_socket: r.policy.singleSocket,
		platform_smt_enabled: r.platformInfo.smtEnabled,
		platform_tsme_enabled: r.platformInfo.tsmeEnabled,
		platform_info: r.platformInfo.raw.toString(16),
		chip_id: r.chipIdMasked ? "" : r.chipId.toString("hex"),
		report_version: r.version,
		family_id: r.familyId.toString("hex"),
		image_id: r.imageId.toString("hex"),
		id_key_digest: r.idKeyDigest.toString("hex"),
		author_key_digest: r.authorKeyDigest.toString("hex"),
		author_key_en: r.authorKeyEn,
		report_id: r.reportId.toString("hex"),
		current_tcb: tcbHex(r.currentTcb),
		reported_tcb: tcbHex(r.reportedTcb),
		committed_tcb: tcbHex(r.committedTcb),
		launch_tcb: tcbHex(r.launchTcb),
		current_firmware: `${r.current.major}.${r.current.minor}.${r.current.build}`,
		committed_firmware: `${r.committed.major}.${r.committed.minor}.${r.committed.build}`,
		cloud_provider: leaf.ext.cloudProvider ?? "",
	};
	if (r.cpuid) {
		ts.cpuid_fam_id = r.cpuid.family;
		ts.cpuid_mod_id = r.cpuid.model;
		ts.cpuid_step = r.cpuid.stepping;
	}
	if (r.launchMitVector !== undefined)
		ts.launch_mit_vector = r.launchMitVector.toString(16);
	if (r.currentMitVector !== undefined)
		ts.current_mit_vector = r.currentMitVector.toString(16);
	return {
		tee: "snp",
		debug: r.policy.debug,
		measurement: r.measurement.toString("hex"),
		report_data: r.reportData.toString("hex"),
		init_data: r.hostData.toString("hex"),
		tcb: tcbClaim,
		tcb_status: "",
		tee_specific: ts,
	};
}

function requireBuffer(v: unknown, what: string): Buffer {
	if (!Buffer.isBuffer(v))
		throw new DadiError("EVIDENCE_INVALID", `SEV-SNP: ${what} must be bytes`);
	return v;
}

/**
 * A verification context bound to one set of trust anchors, caching verified ASK/ARK chains and
 * VCEK/VLEK leaves (by the SHA-256 of their DER; at most 256 of each). Keep one per process.
 */
export function createSnpContext(trust: TrustAnchors = AMD_TRUST): SnpContext {
	const chains = new Map<string, VerifiedChain>();
	const leaves = new Map<string, VerifiedLeaf>();
	return {
		trust,
		verify(o) {
			if (!(o.now instanceof Date) || !Number.isFinite(o.now.getTime()))
				throw new DadiError("USAGE", "SEV-SNP: `now` must be a valid Date");
			const report = parseReport(requireBuffer(o.report, "the report"));
			const askDer = requireBuffer(o.chain?.ask, "the ASK");
			const arkDer = requireBuffer(o.chain?.ark, "the ARK");
			const leafDer = requireBuffer(o.leaf, "the VCEK/VLEK");

			const chainKey = `${sha256(askDer)}/${sha256(arkDer)}`;
			let chain = chains.get(chainKey);
			if (!chain)
				chain = remember(
					chains,
					chainKey,
					verifyChain(
						parseCert(askDer, "ASK"),
						parseCert(arkDer, "ARK"),
						trust,
					),
				);
			if (o.product !== undefined && o.product !== chain.product)
				throw new DadiError(
					"CHAIN_UNTRUSTED",
					`SEV-SNP chain: expected a ${o.product} chain, got ${chain.product}`,
				);
			const cpuidProduct = productFromCpuid(report.cpuid);
			if (cpuidProduct !== undefined && cpuidProduct !== chain.product)
				throw new DadiError(
					"CHAIN_UNTRUSTED",
					`SEV-SNP: the report comes from a ${cpuidProduct} CPU, the chain is for ${chain.product}`,
				);

			const leafKey = `${sha256(leafDer)}/${chainKey}`;
			let leaf = leaves.get(leafKey);
			if (!leaf)
				leaf = remember(
					leaves,
					leafKey,
					verifyLeaf(parseCert(leafDer, chain.signer.toUpperCase()), chain),
				);

			checkValidity(chain.ark, o.now, "the ARK");
			checkValidity(
				chain.ask,
				o.now,
				`the ${chain.signer === "vlek" ? "ASVK" : "ASK"}`,
			);
			checkValidity(leaf.cert, o.now, `the ${chain.signer.toUpperCase()}`);

			const sig = Buffer.concat([report.signatureR, report.signatureS]);
			let ok = false;
			try {
				ok = cryptoVerify(
					"sha384",
					report.signed,
					{ key: leaf.cert.publicKey, dsaEncoding: "ieee-p1363" },
					sig,
				);
			} catch {
				ok = false;
			}
			if (!ok)
				throw new DadiError(
					"SIGNATURE_INVALID",
					`SEV-SNP: the report's signature does not verify under the ${chain.signer.toUpperCase()}`,
				);

			if (report.signingKey !== chain.signer)
				throw new DadiError(
					"CHAIN_UNTRUSTED",
					`SEV-SNP: the report says it is signed by a ${report.signingKey.toUpperCase()}, the certificate is a ${chain.signer.toUpperCase()}`,
				);

			const tcb =
				chain.signer === "vcek"
					? checkTcb(report, leaf, chain.product)
					: decodeTcb(report.reportedTcb, chain.product);

			if (o.expectedReportData !== undefined) {
				if (!reportDataMatches(report.reportData, o.expectedReportData, 64))
					throw new DadiError(
						"EVIDENCE_INVALID",
						"SEV-SNP: REPORT_DATA does not bind this session's nonce and tee-pubkey (replayed or forged evidence)",
					);
			}
			if (o.expectedHostData !== undefined) {
				if (!reportDataMatches(report.hostData, o.expectedHostData, 32))
					throw new DadiError(
						"EVIDENCE_INVALID",
						"SEV-SNP: HOST_DATA does not match the init-data the guest sent",
					);
			}
			return {
				report,
				claims: claimsOf(report, tcb, chain.signer, chain.product, leaf),
				signer: chain.signer,
				product: chain.product,
			};
		},
	};
}

const contexts = new WeakMap<TrustAnchors, SnpContext>();

/** The shared context for a trust-anchor object (one per distinct object, cached weakly). */
export function snpContextFor(trust: TrustAnchors = AMD_TRUST): SnpContext {
	let c = contexts.get(trust);
	if (!c) {
		c = createSnpContext(trust);
		contexts.set(trust, c);
	}
	return c;
}

/** Verifies one report (see the module comment); caches chains in the shared context for `trust`. */
export function verifySnp(o: SnpVerifyOptions): SnpResult {
	return snpContextFor(o.trust ?? AMD_TRUST).verify(o);
}
