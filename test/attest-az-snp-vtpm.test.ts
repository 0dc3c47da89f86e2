/**
 * Azure confidential VM (SEV-SNP + vTPM) evidence: Trustee's real v1/v2 samples verify; every part
 * tampered with is refused with its code; synthetic evidence covers the bindings; the parsers of
 * untrusted bytes are fuzzed (arbitrary input → DadiError only).
 */
import { createHash, generateKeyPairSync } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseAzEvidence } from "../src/attest/azure/evidence.js";
import { parseHclReport } from "../src/attest/azure/hcl-report.js";
import { createAzSnpVtpmVerifier } from "../src/attest/azure/snp-vtpm-verifier.js";
import { parseVarData } from "../src/attest/azure/var-data.js";
import type { Verifier } from "../src/attest/claims.js";
import { pemToDer } from "../src/attest/snp/vcek.js";
import { parseTpmsAttest } from "../src/attest/tpm/attest.js";
import { DadiError, type ErrorCode } from "../src/errors.js";
import {
	hclReport,
	makeSyntheticAzSnp,
	runtimeData,
	syntheticAzTrust,
	syntheticPcrs,
	tpmsAttest,
} from "./attest/az-vtpm-synthetic.js";
import { syntheticChain } from "./attest/snp-synthetic.js";
import { attestationFixtures } from "./fixtures.js";
import { ROOT, rejection, thrown } from "./helpers.js";

const HERE = `${ROOT}/test/fixtures/azure-vtpm/`;
const V1 = JSON.parse(readFileSync(`${HERE}snp-evidence-v1.json`, "utf8"));
const V2 = JSON.parse(readFileSync(`${HERE}snp-evidence-v2.json`, "utf8"));
const V1_NONCE = Buffer.from("challenge");
const V2_NONCE = Buffer.from(
	"982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef",
	"hex",
);
/** Inside the samples' VCEK validity (2025-01-28 .. 2032-01-28). */
const NOW = new Date("2026-06-01T00:00:00Z");

const MILAN = `${attestationFixtures()}snp/ask_ark_milan.pem`;
const haveMilan = existsSync(MILAN);
if (!haveMilan)
	console.warn(
		`SKIPPED: the real Azure SEV-SNP vTPM samples need AMD's Milan ASK/ARK at ${MILAN} (set DADI_FIXTURES)`,
	);

function milanVerifier(): Verifier {
	const [ask, ark] = pemToDer(readFileSync(MILAN, "utf8"));
	return createAzSnpVtpmVerifier({ certSource: async () => ({ ask, ark }) });
}

type Ev = typeof V1;
const clone = (e: Ev): Ev => JSON.parse(JSON.stringify(e));

function editHcl(e: Ev, f: (b: Buffer) => void): Ev {
	const out = clone(e);
	const b = Buffer.from(out.hcl_report, "base64url");
	f(b);
	out.hcl_report = b.toString("base64url");
	return out;
}

function flipHex(s: string, byte: number): string {
	const b = Buffer.from(s, "hex");
	b[byte] = (b[byte] as number) ^ 1;
	return b.toString("hex");
}

async function code(
	v: Verifier,
	evidence: unknown,
	expectedReportData: Buffer,
	now = NOW,
	expectedInitData?: Buffer,
): Promise<ErrorCode> {
	return (
		await rejection(
			v.verify({ evidence, expectedReportData, now, expectedInitData }),
		)
	).code;
}

describe.skipIf(!haveMilan)(
	"real Azure SEV-SNP vTPM evidence (Trustee samples)",
	() => {
		it("v1 and v2 verify, with the SNP report's and the vTPM's claims", async () => {
			const v = milanVerifier();
			const c1 = await v.verify({
				evidence: V1,
				expectedReportData: V1_NONCE,
				now: NOW,
			});
			expect(c1).toMatchObject({
				tee: "azsnpvtpm",
				debug: false,
				measurement:
					"6a063be9dd79f6371c842e480f8dc3b5c725961344e57130e88c5adf49e8f7f6c79b75a5eb77fc769959f4aeb2f9401e",
				report_data: V1_NONCE.toString("hex"),
				init_data: "00".repeat(32),
				tcb: { bootloader: 4, tee: 0, snp: 24, microcode: 219 },
				tcb_status: "",
			});
			expect(c1.tee_specific).toMatchObject({
				product: "milan",
				vmpl: 0,
				evidence_version: 1,
				hcl_report_version: 1,
				pcr00:
					"e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced",
				secure_boot: true,
				tpm_enabled: true,
				console_enabled: true,
				vm_unique_id: "26F8BC30-774E-4290-8E7A-535F3B672AEE",
				snp_report_data: `af2910341dd8108360e485f1b72494255190b9cdd5ccb44b73b883037cf99f21${"00".repeat(32)}`,
			});
			const c2 = await v.verify({
				evidence: JSON.stringify(V2),
				expectedReportData: V2_NONCE,
				now: NOW,
			});
			expect(c2.report_data).toBe(V2_NONCE.toString("hex"));
			expect(c2.tee_specific.pcr00).toBe(
				"84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7",
			);
			expect(c2.tee_specific.evidence_version).toBe(2);
		});

		it("refuses each tampered part with its code", async () => {
			const v = milanVerifier();
			const cases: [string, Ev, ErrorCode][] = [
				[
					"HCL header",
					editHcl(V1, (b) => b.writeUInt8(b.readUInt8(0) ^ 1, 0)),
					"EVIDENCE_INVALID",
				],
				[
					"HCL report type",
					editHcl(V1, (b) => (b[0x4c8] = 3)),
					"EVIDENCE_UNSUPPORTED",
				],
				// the SNP report: its signature, and a signed field (MEASUREMENT)
				[
					"SNP signature",
					editHcl(V1, (b) => b.writeUInt8(b.readUInt8(0x2c0) ^ 1, 0x2c0)),
					"SIGNATURE_INVALID",
				],
				[
					"SNP measurement",
					editHcl(V1, (b) => b.writeUInt8(b.readUInt8(0xb0) ^ 1, 0xb0)),
					"SIGNATURE_INVALID",
				],
				// the runtime data: a character of vmUniqueId, and of the AK's modulus
				[
					"runtime data",
					editHcl(V1, (b) => {
						const i = b.indexOf("26F8BC30");
						b[i] = 0x37;
					}),
					"EVIDENCE_INVALID",
				],
				[
					"AK",
					editHcl(V1, (b) => {
						const i = b.indexOf('"n":"') + 10;
						b[i] = b[i] === 0x41 ? 0x42 : 0x41;
					}),
					"EVIDENCE_INVALID",
				],
			];
			const q = (f: (e: Ev) => void): Ev => {
				const e = clone(V1);
				f(e);
				return e;
			};
			cases.push(
				[
					"TPM quote message",
					q((e) => (e.tpm_quote.message = flipHex(e.tpm_quote.message, 40))),
					"SIGNATURE_INVALID",
				],
				[
					"TPM quote signature",
					q((e) => (e.tpm_quote.signature = flipHex(e.tpm_quote.signature, 0))),
					"SIGNATURE_INVALID",
				],
				[
					"PCR value",
					q((e) => (e.tpm_quote.pcrs[3] = flipHex(e.tpm_quote.pcrs[3], 5))),
					"EVIDENCE_INVALID",
				],
				["a PCR missing", q((e) => e.tpm_quote.pcrs.pop()), "EVIDENCE_INVALID"],
				["VCEK", q((e) => (e.vcek = V2.vcek)), "SIGNATURE_INVALID"],
			);
			for (const [what, ev, want] of cases)
				expect([what, await code(v, ev, V1_NONCE)]).toEqual([what, want]);
		});

		it("refuses a nonce other than the quote's", async () => {
			const v = milanVerifier();
			expect(await code(v, V1, Buffer.from("challengf"))).toBe(
				"EVIDENCE_INVALID",
			);
			expect(await code(v, V1, Buffer.from("challenge\0"))).toBe(
				"EVIDENCE_INVALID",
			);
			expect(await code(v, V2, V1_NONCE)).toBe("EVIDENCE_INVALID");
		});

		it("refuses a foreign root, the wrong product's chain, and an expired VCEK", async () => {
			const c = syntheticChain();
			const foreign = createAzSnpVtpmVerifier({
				certSource: async () => ({ ask: c.ask, ark: c.ark }),
			});
			expect(await code(foreign, V1, V1_NONCE)).toBe("CHAIN_UNTRUSTED");
			const genoa = `${attestationFixtures()}snp/ask_ark_genoa.pem`;
			if (existsSync(genoa)) {
				const [ask, ark] = pemToDer(readFileSync(genoa, "utf8"));
				const wrong = createAzSnpVtpmVerifier({
					certSource: async () => ({ ask, ark }),
				});
				expect(await code(wrong, V1, V1_NONCE)).toBe("CHAIN_UNTRUSTED");
			}
			expect(
				await code(milanVerifier(), V1, V1_NONCE, new Date("2033-01-01")),
			).toBe("CERT_EXPIRED");
			expect(await code(createAzSnpVtpmVerifier(), V1, V1_NONCE)).toBe(
				"EVIDENCE_INVALID",
			); // no ASK/ARK configured
		});

		it("refuses init-data that PCR 8 does not bind", async () => {
			const v = milanVerifier();
			expect(await code(v, V1, V1_NONCE, NOW, Buffer.alloc(32, 1))).toBe(
				"EVIDENCE_INVALID",
			);
			expect(await code(v, V1, V1_NONCE, NOW, Buffer.alloc(48, 1))).toBe(
				"EVIDENCE_UNSUPPORTED",
			);
		});
	},
);

describe("Azure SEV-SNP vTPM evidence format", () => {
	it("accepts versions 1 and 2 only, and refuses unknown members", () => {
		expect(parseAzEvidence(V1, "snp").version).toBe(1);
		const legacy = { quote: {}, report: [1, 2], vcek: "x" };
		expect(thrown(() => parseAzEvidence(legacy, "snp")).code).toBe(
			"EVIDENCE_UNSUPPORTED",
		);
		expect(
			thrown(() => parseAzEvidence({ ...V1, version: 3 }, "snp")).code,
		).toBe("EVIDENCE_UNSUPPORTED");
		expect(
			thrown(() => parseAzEvidence({ ...V1, version: "1" }, "snp")).code,
		).toBe("EVIDENCE_UNSUPPORTED");
		for (const bad of [
			{ ...V1, extra: 1 },
			{ ...V1, td_quote: "AA" },
			{ ...V1, tpm_quote: { ...V1.tpm_quote, x: 1 } },
			{ ...V1, hcl_report: `${V1.hcl_report}!` },
			{ ...V1, hcl_report: V1.hcl_report.replace(/-/g, "+") },
			{ ...V1, vcek: undefined },
			{
				...V1,
				tpm_quote: { ...V1.tpm_quote, pcrs: [...V1.tpm_quote.pcrs, "00"] },
			},
		])
			expect(thrown(() => parseAzEvidence(bad, "snp")).code).toBe(
				"EVIDENCE_INVALID",
			);
	});

	it("reads the HCL report's layout", () => {
		const h = parseHclReport(Buffer.from(V1.hcl_report, "base64url"));
		expect(h).toMatchObject({ version: 1, reportType: "snp" });
		expect(h.hwReport.length).toBe(1184);
		expect(h.varData.length).toBe(1110);
		const a = parseTpmsAttest(Buffer.from(V1.tpm_quote.message, "hex"));
		expect(a.extraData).toEqual(V1_NONCE);
		expect(a.pcrSelections).toEqual([
			{ hash: 0x000b, pcrs: Array.from({ length: 24 }, (_, i) => i) },
		]);
	});
});

describe("synthetic Azure SEV-SNP vTPM evidence", () => {
	const t = syntheticAzTrust();
	const v = createAzSnpVtpmVerifier({
		trust: t.trust,
		certSource: t.certSource,
	});
	const nonce = createHash("sha384").update("session").digest();

	it("verifies, v1 and v2", async () => {
		for (const version of [1, 2] as const) {
			const s = makeSyntheticAzSnp({ nonce, version });
			const c = await v.verify({
				evidence: s.evidence,
				expectedReportData: nonce,
				now: t.now,
			});
			expect(c.tee).toBe("azsnpvtpm");
			expect(c.report_data).toBe(nonce.toString("hex"));
		}
	});

	it("v2: refuses user-data that does not bind the session", async () => {
		const s = makeSyntheticAzSnp({ nonce, userData: Buffer.alloc(48, 9) });
		expect(await code(v, s.evidence, nonce, t.now)).toBe("EVIDENCE_INVALID");
		// v1 does not carry it
		const s1 = makeSyntheticAzSnp({
			nonce,
			version: 1,
			userData: Buffer.alloc(48, 9),
		});
		await v.verify({
			evidence: s1.evidence,
			expectedReportData: nonce,
			now: t.now,
		});
	});

	it("refuses a quote signed by another key than the runtime data's AK", async () => {
		const other = generateKeyPairSync("rsa", { modulusLength: 2048 });
		const s = makeSyntheticAzSnp({ nonce, signer: other.privateKey });
		expect(await code(v, s.evidence, nonce, t.now)).toBe("SIGNATURE_INVALID");
	});

	it("refuses a report from VMPL 1, a debug-free but TDX-typed HCL report, and fewer PCRs than selected", async () => {
		const vmpl = makeSyntheticAzSnp({ nonce, report: { vmpl: 1 } });
		expect(await code(v, vmpl.evidence, nonce, t.now)).toBe("EVIDENCE_INVALID");
		const tdx = makeSyntheticAzSnp({
			nonce,
			editHcl: (b) => b.writeUInt32LE(4, 0x4c8),
		});
		expect(await code(v, tdx.evidence, nonce, t.now)).toBe("EVIDENCE_INVALID");
		const pcrs = syntheticPcrs();
		const few = makeSyntheticAzSnp({
			nonce,
			pcrs,
			editMessage: () =>
				tpmsAttest(nonce, pcrs.slice(0, 16), Buffer.from([0xff, 0xff, 0x00])),
		});
		expect(await code(v, few.evidence, nonce, t.now)).toBe("EVIDENCE_INVALID");
	});

	it("binds init-data through PCR 8 = SHA-256(zeros ‖ digest)", async () => {
		const init = createHash("sha256").update("init-data").digest();
		const pcr8 = createHash("sha256")
			.update(Buffer.alloc(32))
			.update(init)
			.digest();
		const s = makeSyntheticAzSnp({ nonce, pcrs: syntheticPcrs({ pcr8 }) });
		const c = await v.verify({
			evidence: s.evidence,
			expectedReportData: nonce,
			expectedInitData: init,
			now: t.now,
		});
		expect(c.init_data).toBe(pcr8.toString("hex"));
		expect(await code(v, s.evidence, nonce, t.now, Buffer.alloc(32))).toBe(
			"EVIDENCE_INVALID",
		);
	});
});

describe("fuzz: the Azure vTPM parsers refuse with DadiError only", () => {
	const onlyDadi = (f: () => unknown) => {
		try {
			f();
		} catch (e) {
			if (!(e instanceof DadiError)) throw e;
		}
	};
	const good = {
		hcl: Buffer.from(V1.hcl_report, "base64url"),
		msg: Buffer.from(V1.tpm_quote.message, "hex"),
	};
	const mutate = (base: Buffer) =>
		fc
			.array(
				fc.tuple(fc.nat(base.length - 1), fc.integer({ min: 0, max: 255 })),
				{
					maxLength: 8,
				},
			)
			.chain((edits) =>
				fc.nat(base.length).map((cut) => {
					const b = Buffer.from(base);
					for (const [i, x] of edits) b[i] = x;
					return b.subarray(0, cut);
				}),
			);

	it("HCL report", () => {
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 4096 }), (b) =>
				onlyDadi(() => parseHclReport(b)),
			),
		);
		fc.assert(
			fc.property(mutate(good.hcl), (b) => onlyDadi(() => parseHclReport(b))),
		);
	});

	it("TPMS_ATTEST", () => {
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 2048 }), (b) =>
				onlyDadi(() => parseTpmsAttest(b)),
			),
		);
		fc.assert(
			fc.property(mutate(good.msg), (b) => onlyDadi(() => parseTpmsAttest(b))),
		);
	});

	it("runtime data", () => {
		const base = runtimeData();
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 2048 }), (b) =>
				onlyDadi(() => parseVarData(Buffer.from(b))),
			),
		);
		fc.assert(
			fc.property(mutate(base), (b) => onlyDadi(() => parseVarData(b))),
		);
		fc.assert(
			fc.property(fc.json(), (j) =>
				onlyDadi(() => parseVarData(Buffer.from(j))),
			),
		);
	});

	it("evidence JSON", () => {
		fc.assert(
			fc.property(fc.jsonValue(), (j) =>
				onlyDadi(() => parseAzEvidence(j, "snp")),
			),
		);
		fc.assert(
			fc.property(
				fc.record(
					{
						version: fc.oneof(fc.constant(1), fc.constant(2), fc.jsonValue()),
						tpm_quote: fc.oneof(fc.constant(V1.tpm_quote), fc.jsonValue()),
						hcl_report: fc.oneof(fc.constant(V1.hcl_report), fc.string()),
						vcek: fc.oneof(fc.constant(V1.vcek), fc.string()),
					},
					{ requiredKeys: [] },
				),
				(j) => onlyDadi(() => parseAzEvidence(j, "snp")),
			),
		);
	});

	it("whole synthetic HCL reports with arbitrary runtime data", () => {
		fc.assert(
			fc.property(fc.uint8Array({ minLength: 1, maxLength: 1500 }), (vd) => {
				const b = hclReport(Buffer.alloc(1184), Buffer.from(vd));
				const h = parseHclReport(b);
				expect(h.varData).toEqual(Buffer.from(vd));
				onlyDadi(() => parseVarData(h.varData));
			}),
		);
	});
});
