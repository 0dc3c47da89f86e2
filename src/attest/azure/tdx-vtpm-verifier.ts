/**
 * The broker's Verifier for Azure confidential VMs on Intel TDX (KBS tee "aztdxvtpm"; Trustee's
 * az-tdx-vtpm evidence, evidence.ts). Order:
 *
 *   parse the evidence → parse the HCL report (TDX type) → the TD quote (tdx/verify.ts: PCK chain
 *   to the pinned Intel root, QE report, quote signature; collateral when `collateralSource` has
 *   it) with REPORTDATA = SHA-256(runtime data) ‖ 32 zero bytes → the AK from the runtime data →
 *   the vTPM quote signed by it, its PCRs → the session bindings (vtpm-binding.ts).
 *
 * The TD report inside the HCL report is MAC'd for the local platform only and cannot be checked
 * here; the TD quote (which the paravisor obtained for it) is what is verified. Claims are the TD
 * quote's (tee "aztdxvtpm") with report_data the vTPM quote's nonce, init_data PCR 8, and the PCRs
 * and VM configuration in tee_specific (docs/claims.md).
 */
import { createHash } from "node:crypto";
import { DadiError } from "../../errors.js";
import type { Claims, Verifier, VerifyInput } from "../claims.js";
import { DEFAULT_TDX_TRUST, type TdxTrust } from "../tdx/trust.js";
import {
	createTdxContext,
	quoteFmspc,
	quotePckCa,
	type TdxCollateral,
} from "../tdx/verify.js";
import { parseAzEvidence } from "./evidence.js";
import { parseHclReport } from "./hcl-report.js";
import { verifyTpmQuote } from "./tpm-quote.js";
import { parseVarData } from "./var-data.js";
import { checkVtpmBindings } from "./vtpm-binding.js";
import { INITDATA_PCR, vtpmTeeSpecific } from "./vtpm-claims.js";

const WHAT = "Azure TDX vTPM";

export interface AzTdxVtpmVerifierOptions {
	trust?: TdxTrust;
	collateralSource?: (
		fmspc: string,
		pckCa?: "processor" | "platform",
	) => Promise<TdxCollateral | undefined>;
}

export function createAzTdxVtpmVerifier(
	o: AzTdxVtpmVerifierOptions = {},
): Verifier {
	const ctx = createTdxContext(o.trust ?? DEFAULT_TDX_TRUST);
	return {
		tee: "aztdxvtpm",
		async verify(input: VerifyInput): Promise<Claims> {
			const ev = parseAzEvidence(input.evidence, "tdx");
			const hcl = parseHclReport(ev.hclReport);
			if (hcl.reportType !== "tdx")
				throw new DadiError(
					"EVIDENCE_INVALID",
					`${WHAT}: the HCL report holds an SEV-SNP report, not a TDX one`,
				);
			const collateral = o.collateralSource
				? await o.collateralSource(
						quoteFmspc(ev.hardware),
						quotePckCa(ev.hardware),
					)
				: undefined;
			const td = ctx.verify({
				quote: ev.hardware,
				collateral,
				now: input.now,
				expectedReportData: createHash("sha256").update(hcl.varData).digest(),
			});
			const varData = parseVarData(hcl.varData);
			const quote = verifyTpmQuote(ev.tpmQuote, varData.akPub);
			checkVtpmBindings(WHAT, ev.version, quote, varData, input);
			const c = td.claims;
			return {
				...c,
				tee: "aztdxvtpm",
				report_data: quote.info.extraData.toString("hex"),
				init_data: quote.pcrs.get(INITDATA_PCR)?.toString("hex") ?? "",
				tee_specific: {
					...c.tee_specific,
					td_report_data: c.report_data,
					mrconfigid: c.init_data,
					...vtpmTeeSpecific(ev.version, hcl.version, quote, varData),
				},
			};
		},
	};
}
