/**
 * The broker's Verifier for Intel TDX.
 *
 * Evidence: {"quote": base64(DCAP quote v4/v5)}, as a JSON object or its text. Trustee's TDX attester
 * sends {"cc_eventlog": base64(CCEL), "quote": base64}; the event log is accepted and ignored (it is
 * not covered by the quote's signature; RTMR replay against it is not implemented, so policies can
 * only rely on RTMR values themselves). Other members are refused.
 *
 * Collateral (TCB info, QE identity, CRLs) comes from an injected `collateralSource(fmspc)` (the I/O
 * edge: a directory or Intel PCS client). Without one, claims carry tcb_status "" and
 * tee_specific.collateral_checked false, and policies decide.
 */

import { DadiError } from "../../errors.js";
import type { Claims, Verifier, VerifyInput } from "../claims.js";
import { evidenceObject } from "../evidence-json.js";
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

/** Base64 of a quote of at most 64 KiB. */
const MAX_B64 = Math.ceil((64 * 1024) / 3) * 4;

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `TDX evidence: ${detail}`);
}

export function parseTdxEvidence(evidence: unknown): Buffer {
	const o = evidenceObject(evidence, {
		maxChars: 4 * 1024 * 1024,
		members: ["quote", "cc_eventlog"],
		invalid,
	});
	const q = o.quote;
	if (
		typeof q !== "string" ||
		q.length > MAX_B64 ||
		!/^[A-Za-z0-9+/]*={0,2}$/.test(q) ||
		q.length % 4 !== 0
	)
		throw invalid('"quote" must be standard base64 of at most 64 KiB');
	return Buffer.from(q, "base64");
}

export function tdxVerifier(opts: TdxVerifierOptions = {}): Verifier & {
	readonly context: TdxContext;
} {
	const context = createTdxContext(opts.trust ?? DEFAULT_TDX_TRUST);
	return {
		tee: "tdx",
		context,
		async verify(input: VerifyInput): Promise<Claims> {
			const quote = parseTdxEvidence(input.evidence);
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
			return r.claims;
		},
	};
}
