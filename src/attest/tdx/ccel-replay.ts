/**
 * Replaying a CC event log into TDX RTMRs. Pure.
 *
 * From four zero registers, every event except EV_NO_ACTION (which the TCG profile says is never
 * extended) extends RTMR[index - 1] = SHA-384(RTMR ‖ its SHA-384 digest), for log index 1..4 =
 * RTMR0..3. An event for any other register (0 is MRTD, which firmware cannot extend) or without a
 * SHA-384 digest cannot be checked and is refused (EVIDENCE_INVALID). The replayed registers must
 * equal the quote's RTMR0..3 exactly, else EVENTLOG_MISMATCH: the log is not the one the TD's
 * registers measured.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { DadiError } from "../../errors.js";
import { type CcelLog, EV_NO_ACTION, TPM_ALG_SHA384 } from "./ccel.js";

export type Rtmrs = [Buffer, Buffer, Buffer, Buffer];

export function sha384Digest(e: CcelLog["events"][number]): Buffer | undefined {
	return e.digests.find((d) => d.alg === TPM_ALG_SHA384)?.digest;
}

/** The registers the log's events extend to. */
export function replayCcel(log: CcelLog): Rtmrs {
	const mr: Rtmrs = [
		Buffer.alloc(48),
		Buffer.alloc(48),
		Buffer.alloc(48),
		Buffer.alloc(48),
	];
	log.events.forEach((e, i) => {
		if (e.type === EV_NO_ACTION) return;
		if (e.index < 1 || e.index > 4)
			throw new DadiError(
				"EVIDENCE_INVALID",
				`TDX event log: event ${i + 1} is for register index ${e.index}; only 1..4 (RTMR0..3) can be replayed`,
			);
		const d = sha384Digest(e);
		if (!d)
			throw new DadiError(
				"EVIDENCE_INVALID",
				`TDX event log: event ${i + 1} has no SHA-384 digest`,
			);
		const k = e.index - 1;
		mr[k] = createHash("sha384")
			.update(mr[k] as Buffer)
			.update(d)
			.digest();
	});
	return mr;
}

/** Replays the log and requires the result to be the quote's RTMRs (EVENTLOG_MISMATCH if not). */
export function checkCcelReplay(
	log: CcelLog,
	quoteRtmrs: readonly Buffer[],
): Rtmrs {
	const got = replayCcel(log);
	for (let i = 0; i < 4; i++) {
		const q = quoteRtmrs[i];
		const g = got[i] as Buffer;
		if (q?.length !== 48 || !timingSafeEqual(g, q))
			throw new DadiError(
				"EVENTLOG_MISMATCH",
				`TDX event log: replaying it gives RTMR${i} ${g.toString("hex")}, but the quote has ${q?.toString("hex") ?? "none"}`,
			);
	}
	return got;
}
