/**
 * TDX evidence as the broker receives it (tee-evidence.primary_evidence), a JSON object or its text.
 * Pure. One shape, Trustee's TdxEvidence, which guest-components' attestation agent sends:
 *
 *   {"quote": "<standard base64 of a DCAP quote v4/v5>",
 *    "cc_eventlog": "<standard base64 of the CC event log>" | null}   // optional
 *
 * (our own earlier form, {"quote": ...} alone, is the same shape without the log). No other member is
 * accepted: guest-components appends its own runtime events (AAEL) to the CCEL bytes themselves, in
 * TCG form, rather than in a separate member.
 */
import { DadiError } from "../../errors.js";
import { evidenceObject } from "../evidence-json.js";

/** Base64 of a quote of at most 64 KiB. */
const MAX_QUOTE_B64 = Math.ceil((64 * 1024) / 3) * 4;
/**
 * A CCEL log area is commonly 64 KiB (up to 1 MiB reserved, mostly unused). The broker's attest
 * body limit (1 MiB) bounds what arrives; this bounds what the parser will look at.
 */
export const MAX_CCEL_BYTES = 1024 * 1024;
const MAX_CCEL_B64 = Math.ceil(MAX_CCEL_BYTES / 3) * 4;

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `TDX evidence: ${detail}`);
}

function base64(v: string, max: number): boolean {
	return (
		v.length <= max && v.length % 4 === 0 && /^[A-Za-z0-9+/]*={0,2}$/.test(v)
	);
}

export interface TdxEvidence {
	quote: Buffer;
	/** The CC event log bytes, when the guest sent one. */
	ccEventlog?: Buffer;
}

export function parseTdxEvidenceDocument(evidence: unknown): TdxEvidence {
	const o = evidenceObject(evidence, {
		maxChars: 4 * 1024 * 1024,
		members: ["quote", "cc_eventlog"],
		invalid,
	});
	const q = o.quote;
	if (typeof q !== "string" || q.length === 0 || !base64(q, MAX_QUOTE_B64))
		throw invalid('"quote" must be standard base64 of at most 64 KiB');
	const out: TdxEvidence = { quote: Buffer.from(q, "base64") };
	const el = o.cc_eventlog;
	if (el !== undefined && el !== null) {
		if (typeof el !== "string" || el.length === 0 || !base64(el, MAX_CCEL_B64))
			throw invalid(
				`"cc_eventlog" must be null or standard base64 of at most ${MAX_CCEL_BYTES} bytes`,
			);
		out.ccEventlog = Buffer.from(el, "base64");
	}
	return out;
}
