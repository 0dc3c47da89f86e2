/**
 * The bindings every Azure vTPM verifier checks once the quote verified: the quote's extraData is
 * exactly this session's report-data digest; v2 evidence also carries it in the runtime data's
 * user-data (zero-padded to 64 bytes); init-data, when the guest sent some, is bound by PCR 8 =
 * SHA-256(32 zero bytes ‖ SHA-256 digest of the init-data). Pure.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { DadiError } from "../../errors.js";
import { reportDataMatches } from "../../kbs/report-data.js";
import type { VerifyInput } from "../claims.js";
import type { VerifiedTpmQuote } from "./tpm-quote.js";
import type { VarData } from "./var-data.js";
import { INITDATA_PCR } from "./vtpm-claims.js";

export function checkVtpmBindings(
	what: string,
	version: number,
	quote: VerifiedTpmQuote,
	v: VarData,
	input: Pick<VerifyInput, "expectedReportData" | "expectedInitData">,
): void {
	const expected = input.expectedReportData;
	const nonce = quote.info.extraData;
	if (
		!Buffer.isBuffer(expected) ||
		expected.length === 0 ||
		nonce.length !== expected.length ||
		!timingSafeEqual(nonce, expected)
	)
		throw new DadiError(
			"EVIDENCE_INVALID",
			`${what}: the vTPM quote's nonce (extraData) does not bind this session's nonce and tee-pubkey (replayed or forged evidence)`,
		);
	if (version >= 2) {
		if (!v.userData || !reportDataMatches(v.userData, expected, 64))
			throw new DadiError(
				"EVIDENCE_INVALID",
				`${what}: the HCL runtime data's user-data does not bind this session (v2 evidence)`,
			);
	}
	const init = input.expectedInitData;
	if (init !== undefined) {
		if (init.length !== 32)
			throw new DadiError(
				"EVIDENCE_UNSUPPORTED",
				`${what}: init-data is bound through PCR ${INITDATA_PCR} only as a SHA-256 digest (negotiate sha256)`,
			);
		const want = createHash("sha256")
			.update(Buffer.alloc(32))
			.update(init)
			.digest();
		const pcr = quote.pcrs.get(INITDATA_PCR);
		if (!pcr || !timingSafeEqual(pcr, want))
			throw new DadiError(
				"EVIDENCE_INVALID",
				`${what}: PCR ${INITDATA_PCR} does not bind the init-data the guest sent`,
			);
	}
}
