/**
 * The `sample` TEE: DEVELOPMENT ONLY. Its "evidence" is a JSON document anyone can write, so it
 * proves nothing about where the guest runs; it exists so the protocol, policies and key release
 * can be exercised on machines without SEV-SNP or TDX (as Trustee's sample TEE does). The broker
 * registers this verifier only with --insecure-dev, and policies refuse it otherwise.
 *
 * Evidence: {"svn": "<decimal>", "report_data": base64(digest), "init_data": base64(digest) | ""}.
 */

import { DadiError } from "../errors.js";
import { reportDataMatches } from "../kbs/report-data.js";
import type { Claims, Verifier, VerifyInput } from "./claims.js";
import { evidenceObject } from "./evidence-json.js";

/** The field size sample report_data / init_data stand in for (SNP and TDX report_data are 64 bytes). */
const FIELD = 64;

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `sample evidence: ${detail}`);
}

function b64field(v: unknown, name: string): Buffer {
	if (
		typeof v !== "string" ||
		v.length > 128 ||
		!/^[A-Za-z0-9+/]*={0,2}$/.test(v)
	)
		throw invalid(
			`"${name}" must be standard base64 of at most ${FIELD} bytes`,
		);
	const b = Buffer.from(v, "base64");
	if (b.length > FIELD)
		throw invalid(`"${name}" is longer than ${FIELD} bytes`);
	return b;
}

function parseEvidence(evidence: unknown): {
	svn: number;
	reportData: Buffer;
	initData: Buffer;
} {
	const o = evidenceObject(evidence, {
		maxChars: 4096,
		members: ["svn", "report_data", "init_data"],
		invalid,
	});
	if (typeof o.svn !== "string" || !/^\d{1,9}$/.test(o.svn))
		throw invalid('"svn" must be a decimal string');
	return {
		svn: Number(o.svn),
		reportData: b64field(o.report_data, "report_data"),
		initData:
			o.init_data === undefined
				? Buffer.alloc(0)
				: b64field(o.init_data, "init_data"),
	};
}

export const sampleVerifier: Verifier = {
	tee: "sample",
	async verify(input: VerifyInput): Promise<Claims> {
		const ev = parseEvidence(input.evidence);
		if (!reportDataMatches(ev.reportData, input.expectedReportData, FIELD))
			throw invalid(
				"report_data does not bind this session's nonce and tee-pubkey (replayed or forged evidence)",
			);
		if (input.expectedInitData) {
			if (!reportDataMatches(ev.initData, input.expectedInitData, FIELD))
				throw invalid("init_data does not match the init-data the guest sent");
		}
		return {
			tee: "sample",
			debug: false,
			measurement: "",
			report_data: ev.reportData.toString("hex"),
			init_data: ev.initData.toString("hex"),
			tcb: { svn: ev.svn },
			tcb_status: "",
			tee_specific: { insecure: true },
		};
	},
};

/** Guest side: sample evidence binding `reportData` (and init-data's digest when there is one). */
export function sampleEvidence(
	reportData: Buffer,
	initData?: Buffer,
): Record<string, string> {
	return {
		svn: "1",
		report_data: reportData.toString("base64"),
		init_data: initData ? initData.toString("base64") : "",
	};
}
