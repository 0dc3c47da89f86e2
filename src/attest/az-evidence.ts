/**
 * Guest side, pure: Azure vTPM evidence in the shape Trustee's az-snp-vtpm and az-tdx-vtpm verifiers
 * read (deps/verifier/src/az_{snp,tdx}_vtpm, evidence version 2: the HCL report's user-data carries
 * report_data):
 *
 *   {"version": 2,
 *    "tpm_quote": {"signature": hex(RSASSA signature), "message": hex(TPMS_ATTEST),
 *                  "pcrs": [hex(SHA-256 PCR 0), …, hex(PCR 23)]},
 *    "hcl_report": base64url(the HCL report, NV index 0x01400001),
 *    "vcek": base64url(DER)          — az-snp-vtpm: the VCEK from the instance metadata service
 *    "td_quote": base64url(quote)}   — az-tdx-vtpm: the TD quote the metadata service made
 *
 * base64url is padded (serde_with's Base64<UrlSafe> default). The quote's qualifying data
 * (TPMS_ATTEST.extraData) is the KBS report_data digest itself, unpadded.
 */
import { timingSafeEqual } from "node:crypto";
import { DadiError } from "../errors.js";
import { parseTpmsAttestQuote, splitPcrs } from "./tpm-quote.js";
import type { RawTpmQuote } from "./tpm2-tools.js";

export const AZ_EVIDENCE_VERSION = 2;
const TPM_ALG_SHA256 = 0x000b;

export interface AzTpmQuote {
	signature: string;
	message: string;
	pcrs: string[];
}

/** Padded base64url, as serde_with's Base64<UrlSafe> writes and requires. */
export function base64UrlPadded(b: Buffer): string {
	return b.toString("base64").replace(/\+/g, "-").replace(/\//g, "_");
}

/** The quote as Trustee reads it, after checking it quotes PCRs 0–23 (SHA-256) over `reportData`. */
export function azTpmQuote(q: RawTpmQuote, reportData: Buffer): AzTpmQuote {
	const info = parseTpmsAttestQuote(q.message);
	if (
		info.extraData.length !== reportData.length ||
		!timingSafeEqual(info.extraData, reportData)
	)
		throw new DadiError(
			"EVIDENCE_INVALID",
			"TPM quote: its qualifying data is not the report_data requested",
		);
	const sel = info.selections;
	if (
		sel.length !== 1 ||
		sel[0]?.hash !== TPM_ALG_SHA256 ||
		sel[0].pcrs.join(",") !== Array.from({ length: 24 }, (_, i) => i).join(",")
	)
		throw new DadiError(
			"EVIDENCE_INVALID",
			"TPM quote: it does not cover exactly the SHA-256 PCRs 0 to 23",
		);
	if (q.signature.length === 0 || q.signature.length > 512)
		throw new DadiError("EVIDENCE_INVALID", "TPM quote: no plain signature");
	return {
		signature: q.signature.toString("hex"),
		message: q.message.toString("hex"),
		pcrs: splitPcrs(q.pcrValues).map((p) => p.toString("hex")),
	};
}

export function azSnpVtpmEvidence(o: {
	quote: AzTpmQuote;
	hclReport: Buffer;
	vcek: Buffer;
}): Record<string, unknown> {
	return {
		version: AZ_EVIDENCE_VERSION,
		tpm_quote: o.quote,
		hcl_report: base64UrlPadded(o.hclReport),
		vcek: base64UrlPadded(o.vcek),
	};
}

export function azTdxVtpmEvidence(o: {
	quote: AzTpmQuote;
	hclReport: Buffer;
	tdQuote: Buffer;
}): Record<string, unknown> {
	return {
		version: AZ_EVIDENCE_VERSION,
		tpm_quote: o.quote,
		hcl_report: base64UrlPadded(o.hclReport),
		td_quote: base64UrlPadded(o.tdQuote),
	};
}
