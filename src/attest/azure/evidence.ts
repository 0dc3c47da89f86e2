/**
 * Trustee's Azure vTPM evidence (tee-evidence.primary_evidence for "azsnpvtpm" / "aztdxvtpm"), a
 * JSON object or its text, versions 1 and 2 (v2 = v1 whose HCL runtime data carries the session's
 * report data in "user-data"):
 *
 *   {"version": 1 | 2,
 *    "tpm_quote": {"signature": hex, "message": hex (TPMS_ATTEST), "pcrs": [hex of 32 bytes, ...]},
 *    "hcl_report": base64url (padded or not),
 *    "vcek": base64url DER            // azsnpvtpm
 *    "td_quote": base64url            // aztdxvtpm
 *   }
 *
 * The legacy v0 shape (no "version", the report as a list of numbers) is refused as unsupported;
 * unknown members are refused. Pure.
 */
import { DadiError } from "../../errors.js";
import { evidenceObject } from "../evidence-json.js";
import { HCL_MAX_SIZE } from "./hcl-report.js";
import type { TpmQuote } from "./tpm-quote.js";

export type AzKind = "snp" | "tdx";

export interface AzEvidence {
	version: 1 | 2;
	tpmQuote: TpmQuote;
	hclReport: Buffer;
	/** azsnpvtpm: the VCEK (DER); aztdxvtpm: the TD quote. */
	hardware: Buffer;
}

const MAX_CHARS = 256 * 1024;
const MAX_VCEK = 8 * 1024;
const MAX_TD_QUOTE = 64 * 1024;

function name(kind: AzKind): string {
	return kind === "snp" ? "Azure SEV-SNP vTPM" : "Azure TDX vTPM";
}

function b64url(
	v: unknown,
	member: string,
	maxBytes: number,
	invalid: (d: string) => DadiError,
): Buffer {
	const bad = () =>
		invalid(`"${member}" must be base64url of at most ${maxBytes} bytes`);
	if (typeof v !== "string" || v.length === 0) throw bad();
	if (
		v.length > Math.ceil(maxBytes / 3) * 4 ||
		!/^[A-Za-z0-9_-]+={0,2}$/.test(v)
	)
		throw bad();
	const body = v.replace(/=+$/, "");
	if (v.length !== body.length && v.length % 4 !== 0) throw bad();
	const out = Buffer.from(body, "base64url");
	if (out.length === 0 || out.toString("base64url") !== body) throw bad();
	return out;
}

function hex(
	v: unknown,
	member: string,
	maxBytes: number,
	invalid: (d: string) => DadiError,
): Buffer {
	if (
		typeof v !== "string" ||
		v.length === 0 ||
		v.length > maxBytes * 2 ||
		!/^(?:[0-9a-fA-F]{2})+$/.test(v)
	)
		throw invalid(`"${member}" must be hex of at most ${maxBytes} bytes`);
	return Buffer.from(v, "hex");
}

export function parseAzEvidence(evidence: unknown, kind: AzKind): AzEvidence {
	const invalid = (d: string) =>
		new DadiError("EVIDENCE_INVALID", `${name(kind)} evidence: ${d}`);
	const hw = kind === "snp" ? "vcek" : "td_quote";
	const o = evidenceObject(evidence, {
		maxChars: MAX_CHARS,
		members: ["version", "tpm_quote", "hcl_report", hw, "quote", "report"],
		invalid,
	});
	if (o.version === undefined)
		throw new DadiError(
			"EVIDENCE_UNSUPPORTED",
			`${name(kind)} evidence: no "version": the legacy v0 format is not verified (versions 1 and 2 are)`,
		);
	if (o.version !== 1 && o.version !== 2)
		throw new DadiError(
			"EVIDENCE_UNSUPPORTED",
			`${name(kind)} evidence: version ${JSON.stringify(o.version).slice(0, 16)} (1 and 2 are verified)`,
		);
	for (const k of ["quote", "report"])
		if (o[k] !== undefined)
			throw invalid(
				`unknown member "${k}" (a v0 member in v${o.version} evidence)`,
			);
	const tq = o.tpm_quote;
	if (typeof tq !== "object" || tq === null || Array.isArray(tq))
		throw invalid('"tpm_quote" must be an object');
	const t = tq as Record<string, unknown>;
	for (const k of Object.keys(t))
		if (k !== "signature" && k !== "message" && k !== "pcrs")
			throw invalid(`unknown member "tpm_quote.${k.slice(0, 64)}"`);
	if (!Array.isArray(t.pcrs) || t.pcrs.length === 0 || t.pcrs.length > 24)
		throw invalid('"tpm_quote.pcrs" must be a list of 1 to 24 PCR values');
	const pcrs = t.pcrs.map((p, i) => {
		const v = hex(p, `tpm_quote.pcrs[${i}]`, 32, invalid);
		if (v.length !== 32)
			throw invalid(`"tpm_quote.pcrs[${i}]" must be 32 bytes`);
		return v;
	});
	return {
		version: o.version,
		tpmQuote: {
			signature: hex(t.signature, "tpm_quote.signature", 512, invalid),
			message: hex(t.message, "tpm_quote.message", 1024, invalid),
			pcrs,
		},
		hclReport: b64url(o.hcl_report, "hcl_report", HCL_MAX_SIZE, invalid),
		hardware: b64url(
			o[hw],
			hw,
			kind === "snp" ? MAX_VCEK : MAX_TD_QUOTE,
			invalid,
		),
	};
}
