/**
 * Guest side, pure: the TDX evidence as Trustee's TdxEvidence has it, which dadi-broker reads too:
 * {"cc_eventlog": base64(CC event log) | null, "quote": base64(DCAP quote)}. The quote is parsed with
 * the verifier's own parser and its REPORT_DATA checked against what was asked for; the event log
 * goes as the firmware wrote it (the broker parses and replays it against the quote's RTMRs).
 */
import { timingSafeEqual } from "node:crypto";
import { DadiError } from "../errors.js";
import { parseQuote } from "./tdx/quote.js";

export interface TdxEvidence {
	cc_eventlog: string | null;
	quote: string;
}

export function tdxEvidence(o: {
	quote: Buffer;
	reportData: Buffer;
	ccel?: Buffer | null;
}): TdxEvidence {
	const q = parseQuote(o.quote);
	const got = q.body.reportData;
	if (o.reportData.length !== got.length || !timingSafeEqual(got, o.reportData))
		throw new DadiError(
			"EVIDENCE_INVALID",
			"TDX: the quote's REPORT_DATA is not the one requested (a stale or foreign quote)",
		);
	return {
		cc_eventlog: o.ccel ? o.ccel.toString("base64") : null,
		quote: o.quote.toString("base64"),
	};
}
