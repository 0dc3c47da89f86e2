/**
 * The broker's Verifier for Intel TDX.
 *
 * Evidence (evidence.ts): Trustee's TdxEvidence {"quote": base64, "cc_eventlog": base64 | null}, as
 * a JSON object or its text. When a CC event log comes with the quote, it is parsed (ccel.ts) and
 * replayed (ccel-replay.ts) after the quote verified: it must give exactly the quote's RTMR0..3
 * (else EVENTLOG_MISMATCH), and its measured events become claims (ccel-claims.ts:
 * tee_specific.ccel_*). Without one, ccel_present is false and the ccel_* claims are empty.
 *
 * Collateral (TCB info, QE identity, CRLs) comes from an injected `collateralSource(fmspc)` (the I/O
 * edge: a directory or Intel PCS client). Without one, claims carry tcb_status "" and
 * tee_specific.collateral_checked false, and policies decide.
 */

import type { Claims, Verifier, VerifyInput } from "../claims.js";
import { type CcelLog, parseCcel } from "./ccel.js";
import { ccelClaims } from "./ccel-claims.js";
import { checkCcelReplay } from "./ccel-replay.js";
import { parseTdxEvidenceDocument } from "./evidence.js";
import { DEFAULT_TDX_TRUST, type TdxTrust } from "./trust.js";
import {
	createTdxContext,
	quoteFmspc,
	quotePckCa,
	type TdxCollateral,
	type TdxContext,
} from "./verify.js";

export interface TdxVerifierOptions {
	trust?: TdxTrust;
	/**
	 * Collateral for a platform (FMSPC, lowercase hex; the PCK CA, for the PCK CRL); undefined when
	 * none is available.
	 */
	collateralSource?: (
		fmspc: string,
		pckCa?: "processor" | "platform",
	) => Promise<TdxCollateral | undefined>;
}

/**
 * Replays `log` (when there is one) against the verified quote's RTMRs (EVENTLOG_MISMATCH if it
 * does not give them) and adds the ccel_* claims; without a log, ccel_present is false and the
 * others are empty.
 */
export function addEventLogClaims(
	claims: Claims,
	rtmrs: readonly Buffer[],
	log: CcelLog | undefined,
): void {
	if (log) checkCcelReplay(log, rtmrs);
	Object.assign(claims.tee_specific, {
		ccel_present: log !== undefined,
		...(log
			? ccelClaims(log)
			: {
					ccel_events: [],
					ccel_kernel: "",
					ccel_kernel_parameters: "",
					ccel_kernel_parameters_digest: "",
					ccel_initrd: "",
				}),
	});
}

/** The quote bytes of TDX evidence (kept for callers that need only the quote). */
export function parseTdxEvidence(evidence: unknown): Buffer {
	return parseTdxEvidenceDocument(evidence).quote;
}

export function tdxVerifier(opts: TdxVerifierOptions = {}): Verifier & {
	readonly context: TdxContext;
} {
	const context = createTdxContext(opts.trust ?? DEFAULT_TDX_TRUST);
	return {
		tee: "tdx",
		context,
		async verify(input: VerifyInput): Promise<Claims> {
			const ev = parseTdxEvidenceDocument(input.evidence);
			const quote = ev.quote;
			// Parse the log before any verification work: malformed evidence fails fast.
			const log = ev.ccEventlog ? parseCcel(ev.ccEventlog) : undefined;
			let collateral: TdxCollateral | undefined;
			if (opts.collateralSource)
				collateral = await opts.collateralSource(
					quoteFmspc(quote),
					quotePckCa(quote),
				);
			const r = context.verify({
				quote,
				collateral,
				now: input.now,
				expectedReportData: input.expectedReportData,
				expectedConfigId: input.expectedInitData,
			});
			addEventLogClaims(r.claims, r.quote.body.rtmr, log);
			return r.claims;
		},
	};
}
