/**
 * Azure confidential VM (TDX + vTPM) evidence: Trustee's real v1 sample verifies (without PCS
 * collateral: tcb_status "" and collateral_checked false); each tampered part is refused with its
 * code; a foreign root is refused.
 */
import { readFileSync } from "node:fs";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseAzEvidence } from "../src/attest/azure/evidence.js";
import { createAzSnpVtpmVerifier } from "../src/attest/azure/snp-vtpm-verifier.js";
import { createAzTdxVtpmVerifier } from "../src/attest/azure/tdx-vtpm-verifier.js";
import type { Verifier } from "../src/attest/claims.js";
import { DadiError, type ErrorCode } from "../src/errors.js";
import { ROOT, rejection, thrown } from "./helpers.js";

const EV = JSON.parse(
	readFileSync(`${ROOT}/test/fixtures/azure-vtpm/tdx-evidence-v1.json`, "utf8"),
);
const SNP_EV = JSON.parse(
	readFileSync(`${ROOT}/test/fixtures/azure-vtpm/snp-evidence-v1.json`, "utf8"),
);
const NONCE = Buffer.from("challenge");
const NOW = new Date("2026-01-01T00:00:00Z");
type Ev = typeof EV;
const clone = (e: Ev): Ev => JSON.parse(JSON.stringify(e));

function edit(
	e: Ev,
	member: "hcl_report" | "td_quote",
	f: (b: Buffer) => void,
): Ev {
	const out = clone(e);
	const b = Buffer.from(out[member], "base64url");
	f(b);
	out[member] = b.toString("base64url");
	return out;
}

function flip(b: Buffer, i: number): void {
	b.writeUInt8(b.readUInt8(i) ^ 1, i);
}

function flipHex(s: string, i: number): string {
	const b = Buffer.from(s, "hex");
	flip(b, i);
	return b.toString("hex");
}

async function code(
	v: Verifier,
	evidence: unknown,
	nonce = NONCE,
): Promise<ErrorCode> {
	return (
		await rejection(v.verify({ evidence, expectedReportData: nonce, now: NOW }))
	).code;
}

describe("real Azure TDX vTPM evidence (Trustee sample)", () => {
	const v = createAzTdxVtpmVerifier();

	it("verifies, with the TD quote's and the vTPM's claims", async () => {
		const c = await v.verify({
			evidence: EV,
			expectedReportData: NONCE,
			now: NOW,
		});
		expect(c).toMatchObject({
			tee: "aztdxvtpm",
			debug: false,
			measurement:
				"024a32b070383331181619fa387cb4d55d1e38879f989933055ccad5bc2db795d1737b66205949d15469dc8c1ba7ab7b",
			report_data: NONCE.toString("hex"),
			tcb_status: "",
		});
		expect(c.tee_specific).toMatchObject({
			fmspc: "00806f050000",
			collateral_checked: false,
			evidence_version: 1,
			hcl_report_version: 2,
			tpm_persisted: false,
			vm_unique_id: "6332533D-5649-4D02-8AA7-8F64B7C3EE21",
			root_cert_thumbprint: "6nZZnYaJc4KqUZ_yvA-mucFdYNouvlPnITnNMXsHl-0",
			td_report_data: `9734504f161d104c74e3165c15f779b06a9bb40dfa71937817d7eee68e593839${"00".repeat(32)}`,
		});
		expect(typeof c.tee_specific.pcr00).toBe("string");
	});

	it("refuses each tampered part with its code", async () => {
		const cases: [string, Ev, ErrorCode][] = [
			[
				"HCL header",
				edit(EV, "hcl_report", (b) => flip(b, 1)),
				"EVIDENCE_INVALID",
			],
			[
				"runtime data",
				edit(EV, "hcl_report", (b) => flip(b, b.indexOf("6332533D"))),
				"EVIDENCE_INVALID",
			],
			[
				"TD quote body (MRTD)",
				edit(EV, "td_quote", (b) => flip(b, 0xb8)),
				"SIGNATURE_INVALID",
			],
			[
				"TD quote signature",
				edit(EV, "td_quote", (b) => flip(b, 0x27c + 3)),
				"SIGNATURE_INVALID",
			],
		];
		const q = (f: (e: Ev) => void): Ev => {
			const e = clone(EV);
			f(e);
			return e;
		};
		cases.push(
			[
				"vTPM quote",
				q((e) => (e.tpm_quote.message = flipHex(e.tpm_quote.message, 40))),
				"SIGNATURE_INVALID",
			],
			[
				"vTPM signature",
				q((e) => (e.tpm_quote.signature = flipHex(e.tpm_quote.signature, 9))),
				"SIGNATURE_INVALID",
			],
			[
				"PCR value",
				q((e) => (e.tpm_quote.pcrs[0] = flipHex(e.tpm_quote.pcrs[0], 0))),
				"EVIDENCE_INVALID",
			],
		);
		for (const [what, ev, want] of cases)
			expect([what, await code(v, ev)]).toEqual([what, want]);
		expect(await code(v, EV, Buffer.from("challengf"))).toBe(
			"EVIDENCE_INVALID",
		);
	});

	it("refuses a foreign root, and each kind's HCL report in the other verifier", async () => {
		const foreign = createAzTdxVtpmVerifier({
			trust: { rootFingerprints: ["00".repeat(32)] },
		});
		expect(await code(foreign, EV)).toBe("CHAIN_UNTRUSTED");
		const mixed = { ...clone(EV), hcl_report: SNP_EV.hcl_report };
		expect(await code(v, mixed)).toBe("EVIDENCE_INVALID");
		const asSnp = {
			version: 1,
			tpm_quote: EV.tpm_quote,
			hcl_report: EV.hcl_report,
			vcek: SNP_EV.vcek,
		};
		expect(await code(createAzSnpVtpmVerifier(), asSnp)).toBe(
			"EVIDENCE_INVALID",
		);
	});

	it("the TDX evidence has td_quote, not vcek", () => {
		expect(parseAzEvidence(EV, "tdx").version).toBe(1);
		expect(thrown(() => parseAzEvidence(EV, "snp")).code).toBe(
			"EVIDENCE_INVALID",
		);
		expect(thrown(() => parseAzEvidence(SNP_EV, "tdx")).code).toBe(
			"EVIDENCE_INVALID",
		);
	});

	it("fuzz: arbitrary evidence JSON and HCL reports are refused with DadiError only", async () => {
		const only = async (p: Promise<unknown>) => {
			try {
				await p;
			} catch (e) {
				if (!(e instanceof DadiError)) throw e;
			}
		};
		await fc.assert(
			fc.asyncProperty(fc.jsonValue(), (j) =>
				only(v.verify({ evidence: j, expectedReportData: NONCE, now: NOW })),
			),
			{ numRuns: 200 },
		);
		await fc.assert(
			fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 3000 }), (b) =>
				only(
					v.verify({
						evidence: {
							...EV,
							hcl_report: Buffer.from(b).toString("base64url"),
						},
						expectedReportData: NONCE,
						now: NOW,
					}),
				),
			),
			{ numRuns: 200 },
		);
	});
});
