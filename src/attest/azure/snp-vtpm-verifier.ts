/**
 * The broker's Verifier for Azure confidential VMs on AMD SEV-SNP (KBS tee "azsnpvtpm"; Trustee's
 * az-snp-vtpm evidence, evidence.ts). Order:
 *
 *   parse the evidence → parse the HCL report (SNP type) → the SNP report under the VCEK sent and
 *   the ASK/ARK from `certSource` (product from the VCEK's issuer; ARK pinned; snp/verify.ts) →
 *   VMPL 0 → REPORT_DATA = SHA-256(runtime data) ‖ 32 zero bytes → the AK from the runtime data →
 *   the vTPM quote signed by it, its PCRs → the session bindings (vtpm-binding.ts).
 *
 * Claims are the SNP report's (tee "azsnpvtpm") with report_data the quote's nonce, init_data
 * PCR 8, and the vTPM's PCRs and VM configuration in tee_specific (docs/claims.md). Pure but for
 * the injected certificate source.
 */
import { createHash } from "node:crypto";
import { DadiError } from "../../errors.js";
import { reportDataMatches } from "../../kbs/report-data.js";
import type { Claims, Verifier, VerifyInput } from "../claims.js";
import { parseReport, SNP_PRODUCTS, type SnpProduct } from "../snp/report.js";
import { AMD_TRUST, type TrustAnchors } from "../snp/trust.js";
import { parseCert } from "../snp/vcek.js";
import type { CertSource } from "../snp/verifier.js";
import { createSnpContext, type SnpContext } from "../snp/verify.js";
import { parseAzEvidence } from "./evidence.js";
import { parseHclReport } from "./hcl-report.js";
import { verifyTpmQuote } from "./tpm-quote.js";
import { parseVarData } from "./var-data.js";
import { checkVtpmBindings } from "./vtpm-binding.js";
import { INITDATA_PCR, vtpmTeeSpecific } from "./vtpm-claims.js";

const WHAT = "Azure SEV-SNP vTPM";

export interface AzSnpVtpmVerifierOptions {
	trust?: TrustAnchors;
	/** Where the ASK and ARK come from (Azure evidence carries only the VCEK). */
	certSource?: CertSource;
	/** Share a context (and its chain cache) with the SNP verifier; its trust wins over `trust`. */
	context?: SnpContext;
}

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `${WHAT}: ${detail}`);
}

export function createAzSnpVtpmVerifier(
	o: AzSnpVtpmVerifierOptions = {},
): Verifier {
	const ctx = o.context ?? createSnpContext(o.trust ?? AMD_TRUST);
	const source: CertSource = o.certSource ?? (async () => ({}));
	return {
		tee: "azsnpvtpm",
		async verify(input: VerifyInput): Promise<Claims> {
			const ev = parseAzEvidence(input.evidence, "snp");
			const hcl = parseHclReport(ev.hclReport);
			if (hcl.reportType !== "snp")
				throw invalid("the HCL report holds a TDX report, not an SEV-SNP one");
			const report = parseReport(hcl.hwReport);
			const vcek = parseCert(ev.hardware, "the VCEK");
			if (vcek.subjectCn !== "SEV-VCEK")
				throw invalid('the certificate sent as "vcek" is not a VCEK');
			const product: SnpProduct | undefined = SNP_PRODUCTS.find(
				(p) => vcek.issuerCn.toLowerCase() === `sev-${p}`,
			);
			if (!product)
				throw new DadiError(
					"CHAIN_UNTRUSTED",
					`${WHAT}: the VCEK's issuer "${vcek.issuerCn.slice(0, 64)}" is not an AMD ASK`,
				);
			const got = await source({
				product,
				chipId: report.chipId,
				reportedTcb: report.reportedTcb,
				signer: "vcek",
			});
			if (!got.ask || !got.ark)
				throw invalid(
					`no ASK/ARK for ${product}: configure the AMD certificates (--snp-certs / --certs)`,
				);
			const snp = ctx.verify({
				report: hcl.hwReport,
				leaf: ev.hardware,
				chain: { ask: got.ask, ark: got.ark },
				product,
				now: input.now,
			});
			if (snp.signer !== "vcek")
				throw invalid("the SNP report must be signed by a VCEK");
			if (report.vmpl !== 0)
				throw invalid(
					`the SNP report comes from VMPL ${report.vmpl}, not the paravisor's VMPL 0`,
				);
			const varDigest = createHash("sha256").update(hcl.varData).digest();
			if (!reportDataMatches(report.reportData, varDigest, 64))
				throw invalid(
					"the SNP report's REPORT_DATA is not the SHA-256 of the HCL runtime data",
				);
			const varData = parseVarData(hcl.varData);
			const quote = verifyTpmQuote(ev.tpmQuote, varData.akPub);
			checkVtpmBindings(WHAT, ev.version, quote, varData, input);
			const c = snp.claims;
			return {
				...c,
				tee: "azsnpvtpm",
				report_data: quote.info.extraData.toString("hex"),
				init_data: quote.pcrs.get(INITDATA_PCR)?.toString("hex") ?? "",
				tee_specific: {
					...c.tee_specific,
					snp_report_data: c.report_data,
					host_data: c.init_data,
					...vtpmTeeSpecific(ev.version, hcl.version, quote, varData),
				},
			};
		},
	};
}
