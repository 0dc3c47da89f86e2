/**
 * The broker's SEV-SNP Verifier.
 *
 * Evidence (tee-evidence.primary_evidence), a JSON object or its text:
 *
 *   {
 *     "report": "<standard base64 of the 1184-byte ATTESTATION_REPORT>",
 *     "certs": {                      // optional, and so is each member
 *       "vcek": "<base64 DER>",       // the leaf for a report signed by a VCEK (signing_key 0)
 *       "vlek": "<base64 DER>",       // the leaf for a report signed by a VLEK (signing_key 1)
 *       "ask":  "<base64 DER>",       // the ASK (for a VCEK) or ASVK (for a VLEK)
 *       "ark":  "<base64 DER>"        // the ARK (checked against the pinned fingerprints)
 *     },
 *     "cert_table": "<base64>"        // optional: the extended report's certificate table as the
 *   }                                 // firmware returns it (cert-table.ts); "certs" wins over it
 *
 * or, as Confidential Containers guests send it (guest-components' attestation agent, Trustee's
 * SnpEvidence), told apart by its "attestation_report" member:
 *
 *   {
 *     "attestation_report": { ...the sev crate's serde form of the report (serde-report.ts)... },
 *     "cert_chain": [{"cert_type": "VCEK", "data": [bytes]}, ...] | null
 *   }
 *
 * Certificates the guest does not send come from the injected `certSource` (a cache directory or
 * AMD KDS, at the edge); the default source has none. Verification itself is pure (verify.ts).
 */

import { DadiError } from "../../errors.js";
import type { Claims, Verifier, VerifyInput } from "../claims.js";
import { evidenceObject } from "../evidence-json.js";
import { parseCertTable } from "./cert-table.js";
import {
	parseReport,
	productFromCpuid,
	REPORT_SIZE,
	type SnpProduct,
} from "./report.js";
import { certsFromSerdeChain, reportFromSerde } from "./serde-report.js";
import { AMD_TRUST, type TrustAnchors } from "./trust.js";
import type { SignerKind } from "./vcek.js";
import { createSnpContext, type SnpContext } from "./verify.js";

export interface CertRequest {
	/** Configured, or named by a v3+ report's CPUID; undefined when unknown. */
	product?: SnpProduct;
	chipId: Buffer;
	/** The 8 raw REPORTED_TCB bytes. */
	reportedTcb: Buffer;
	signer: SignerKind;
}

export type CertSource = (
	o: CertRequest,
) => Promise<{ leaf?: Buffer; ask?: Buffer; ark?: Buffer }>;

/** The serde form spells each byte as a JSON number: a report with three certificates is ~30 KiB. */
const MAX_EVIDENCE_CHARS = 256 * 1024;
const MAX_CERT_BYTES = 8 * 1024;
const REPORT_B64_CHARS = Math.ceil(REPORT_SIZE / 3) * 4;

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `SEV-SNP evidence: ${detail}`);
}

function b64(v: unknown, name: string, maxBytes: number): Buffer {
	const maxChars = Math.ceil(maxBytes / 3) * 4;
	if (
		typeof v !== "string" ||
		v.length === 0 ||
		v.length > maxChars ||
		!/^[A-Za-z0-9+/]*={0,2}$/.test(v)
	)
		throw invalid(
			`"${name}" must be standard base64 of at most ${maxBytes} bytes`,
		);
	return Buffer.from(v, "base64");
}

interface Evidence {
	report: Buffer;
	certs: { vcek?: Buffer; vlek?: Buffer; ask?: Buffer; ark?: Buffer };
}

/** Which form the evidence is in, and its report bytes and certificates (no verification). */
export function parseSnpEvidence(evidence: unknown): Evidence {
	const o = evidenceObject(evidence, {
		maxChars: MAX_EVIDENCE_CHARS,
		members: [
			"report",
			"certs",
			"cert_table",
			"attestation_report",
			"cert_chain",
		],
		invalid,
	});
	if ("attestation_report" in o) {
		for (const k of Object.keys(o))
			if (k !== "attestation_report" && k !== "cert_chain")
				throw invalid(
					`"${k}" cannot be mixed with "attestation_report" (the CoCo form has attestation_report and cert_chain)`,
				);
		return {
			report: reportFromSerde(o.attestation_report),
			certs: certsFromSerdeChain(o.cert_chain, MAX_CERT_BYTES),
		};
	}
	if ("cert_chain" in o)
		throw invalid('"cert_chain" belongs with "attestation_report"');
	if (typeof o.report !== "string" || o.report.length > REPORT_B64_CHARS)
		throw invalid(`"report" must be base64 of ${REPORT_SIZE} bytes`);
	const out: Evidence = {
		report: b64(o.report, "report", REPORT_SIZE),
		certs: {},
	};
	if (o.certs !== undefined) {
		if (
			typeof o.certs !== "object" ||
			o.certs === null ||
			Array.isArray(o.certs)
		)
			throw invalid('"certs" must be an object');
		for (const [k, v] of Object.entries(o.certs as Record<string, unknown>)) {
			if (k !== "vcek" && k !== "vlek" && k !== "ask" && k !== "ark")
				throw invalid(`unknown certificate "${k.slice(0, 64)}"`);
			out.certs[k] = b64(v, `certs.${k}`, MAX_CERT_BYTES);
		}
	}
	if (o.cert_table !== undefined) {
		if (
			typeof o.cert_table !== "string" ||
			o.cert_table.length > MAX_EVIDENCE_CHARS
		)
			throw invalid(
				'"cert_table" must be base64 of an extended report\'s certificate table',
			);
		const t = parseCertTable(
			b64(o.cert_table, "cert_table", MAX_EVIDENCE_CHARS),
		);
		for (const k of ["vcek", "vlek", "ask", "ark"] as const) {
			const v = t[k];
			if (v && v.length > MAX_CERT_BYTES)
				throw invalid(`the ${k.toUpperCase()} in cert_table is too large`);
			out.certs[k] ??= v;
		}
	}
	return out;
}

const noCerts: CertSource = async () => ({});

export interface SnpVerifierOptions {
	trust?: TrustAnchors;
	/** Restrict to one product line. */
	product?: SnpProduct;
	certSource?: CertSource;
	/** Share a context (and its chain cache) with other callers; its trust wins over `trust`. */
	context?: SnpContext;
}

export function createSnpVerifier(o: SnpVerifierOptions = {}): Verifier {
	const ctx = o.context ?? createSnpContext(o.trust ?? AMD_TRUST);
	const source = o.certSource ?? noCerts;
	return {
		tee: "snp",
		async verify(input: VerifyInput): Promise<Claims> {
			const ev = parseSnpEvidence(input.evidence);
			const report = parseReport(ev.report);
			const signer = report.signingKey;
			let leaf = signer === "vlek" ? ev.certs.vlek : ev.certs.vcek;
			let ask = ev.certs.ask;
			let ark = ev.certs.ark;
			if (!leaf || !ask || !ark) {
				const got = await source({
					product: o.product ?? productFromCpuid(report.cpuid),
					chipId: report.chipId,
					reportedTcb: report.reportedTcb,
					signer,
				});
				leaf ??= got.leaf;
				ask ??= got.ask;
				ark ??= got.ark;
			}
			if (!leaf)
				throw invalid(
					`no ${signer.toUpperCase()} for this report: send it in certs or configure a cache`,
				);
			if (!ask || !ark)
				throw invalid(
					`no ${signer === "vlek" ? "ASVK" : "ASK"}/ARK for this report: send them in certs or configure a cache`,
				);
			const opts: Parameters<SnpContext["verify"]>[0] = {
				report: ev.report,
				leaf,
				chain: { ask, ark },
				now: input.now,
				expectedReportData: input.expectedReportData,
			};
			if (o.product !== undefined) opts.product = o.product;
			if (input.expectedInitData !== undefined)
				opts.expectedHostData = input.expectedInitData;
			return ctx.verify(opts).claims;
		},
	};
}

/** The broker's default: AMD's pinned roots, certificates only from the evidence. */
export const snpVerifier: Verifier = createSnpVerifier();
