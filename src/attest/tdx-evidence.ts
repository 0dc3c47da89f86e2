/**
 * Guest side, pure: the TDX evidence the broker's verifier reads (src/attest/tdx/verifier.ts) and
 * Trustee's TDX verifier reads: {"quote": base64(DCAP quote)}. The quote is parsed with the
 * verifier's own parser and its REPORT_DATA checked against what was asked for.
 */
import { timingSafeEqual } from "node:crypto";
import { DadiError } from "../errors.js";
import { parseQuote } from "./tdx/quote.js";

export interface TdxEvidence {
	quote: string;
}

export function tdxEvidence(o: {
	quote: Buffer;
	reportData: Buffer;
}): TdxEvidence {
	const q = parseQuote(o.quote);
	const got = q.body.reportData;
	if (o.reportData.length !== got.length || !timingSafeEqual(got, o.reportData))
		throw new DadiError(
			"EVIDENCE_INVALID",
			"TDX: the quote's REPORT_DATA is not the one requested (a stale or foreign quote)",
		);
	return { quote: o.quote.toString("base64") };
}
