/**
 * SEV-SNP evidence in the Confidential Containers form (Trustee's SnpEvidence: the sev crate's
 * serde object of the report and a cert_chain): a real Genoa sample verifies; the rebuilt bytes are
 * the firmware's; every field is range-checked; flipped values are refused; the raw form still works.
 */
import { existsSync, readFileSync } from "node:fs";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseReport } from "../src/attest/snp/report.js";
import {
	reportFromSerde,
	serdeFromReport,
} from "../src/attest/snp/serde-report.js";
import { pemToDer } from "../src/attest/snp/vcek.js";
import {
	createSnpVerifier,
	parseSnpEvidence,
} from "../src/attest/snp/verifier.js";
import { DadiError, type ErrorCode } from "../src/errors.js";
import {
	makeSyntheticSnp,
	signedReport,
	syntheticLeaf,
} from "./attest/snp-synthetic.js";
import { attestationFixtures } from "./fixtures.js";
import { ROOT } from "./helpers.js";

const SAMPLE = JSON.parse(
	readFileSync(`${ROOT}/test/fixtures/coco/snp-evidence-genoa.json`, "utf8"),
) as { attestation_report: Record<string, unknown>; cert_chain: unknown };
const SNP = `${attestationFixtures()}snp/`;
const HAVE = existsSync(`${SNP}ask_ark_genoa.pem`);
if (!HAVE)
	console.warn(
		`\n*** SEV-SNP CoCo REAL-CHAIN TESTS SKIPPED: ${SNP}ask_ark_genoa.pem not found (set DADI_FIXTURES) ***\n`,
	);
/** Inside the sample VCEK's window (2025-05-27 .. 2032-05-27) and the Genoa ASK/ARK's. */
const GENOA_NOW = new Date("2026-01-15T00:00:00Z");

function clone<T>(v: T): T {
	return structuredClone(v);
}

async function code(
	p: Promise<unknown> | (() => unknown),
): Promise<ErrorCode | "none"> {
	try {
		if (typeof p === "function") p();
		else await p;
	} catch (e) {
		if (e instanceof DadiError) return e.code;
		throw e;
	}
	return "none";
}

/** The sample with ASK and ARK added to its cert_chain (it carries only the VCEK). */
function sampleWithChain(): Record<string, unknown> {
	const [ask, ark] = pemToDer(readFileSync(`${SNP}ask_ark_genoa.pem`, "utf8"));
	const chain = clone(SAMPLE.cert_chain) as unknown[];
	chain.push({ cert_type: "ASK", data: [...(ask as Buffer)] });
	chain.push({ cert_type: "ARK", data: [...(ark as Buffer)] });
	return {
		attestation_report: clone(SAMPLE.attestation_report),
		cert_chain: chain,
	};
}

function flip(arr: unknown, i: number, bit: number): void {
	const a = arr as number[];
	a[i] = (a[i] as number) ^ bit;
}

const REPORT_DATA = Buffer.from(
	SAMPLE.attestation_report.report_data as number[],
);

describe("SnpEvidence (CoCo form): the real Genoa sample", () => {
	it("rebuilds a 1184-byte report that parses as the serde object says", () => {
		const bytes = reportFromSerde(SAMPLE.attestation_report);
		const r = parseReport(bytes);
		expect(r.version).toBe(3);
		expect(r.cpuid).toEqual({ family: 0x19, model: 0xa0, stepping: 2 });
		expect(r.measurement.toString("hex")).toBe(
			"6a6519d757e68c2e939c9dbbbc1828498e8de35d2766dd05f1a2cca5059d0cf4ae62a36d75c837974dd50b315506e73e",
		);
		expect(r.reportedTcb.toString("hex")).toBe("0a00000000001719");
		expect(r.current).toEqual({ major: 1, minor: 55, build: 40 });
		// and back: the serde object of those bytes is the sample's (which, from an older sev
		// crate, has no mitigation-vector members: they are optional and null before version 5)
		expect(serdeFromReport(bytes)).toEqual({
			...SAMPLE.attestation_report,
			launch_mit_vector: null,
			current_mit_vector: null,
		});
		expect("launch_mit_vector" in SAMPLE.attestation_report).toBe(false);
	});

	it.skipIf(!HAVE)(
		"verifies (signature over the rebuilt bytes, VCEK from cert_chain, Genoa chain)",
		async () => {
			const [ask, ark] = pemToDer(
				readFileSync(`${SNP}ask_ark_genoa.pem`, "utf8"),
			);
			const v = createSnpVerifier({
				certSource: async () => ({ ask, ark }),
			});
			const claims = await v.verify({
				evidence: SAMPLE,
				expectedReportData: REPORT_DATA,
				now: GENOA_NOW,
			});
			expect(claims.tee).toBe("snp");
			expect(claims.tee_specific.product).toBe("genoa");
			expect(claims.tcb).toEqual({
				bootloader: 10,
				tee: 0,
				snp: 23,
				microcode: 25,
			});
			// the whole chain in cert_chain, as a string, works too
			const full = await createSnpVerifier().verify({
				evidence: JSON.stringify(sampleWithChain()),
				expectedReportData: REPORT_DATA,
				now: GENOA_NOW,
			});
			expect(full.measurement).toBe(claims.measurement);
		},
	);

	it.skipIf(!HAVE)(
		"flipped values in the report object → SIGNATURE_INVALID",
		async () => {
			const v = createSnpVerifier();
			const verify = (ev: unknown) =>
				code(
					v.verify({
						evidence: ev,
						expectedReportData: REPORT_DATA,
						now: GENOA_NOW,
					}),
				);
			const edits: [string, (r: Record<string, unknown>) => void, ErrorCode][] =
				[
					[
						"measurement",
						(r) => flip(r.measurement, 0, 1),
						"SIGNATURE_INVALID",
					],
					[
						"host_data",
						(r) => flip(r.host_data, 31, 0x80),
						"SIGNATURE_INVALID",
					],
					[
						"policy",
						(r) => (r.policy = (r.policy as number) | (1 << 19)),
						"SIGNATURE_INVALID",
					],
					["guest_svn", (r) => (r.guest_svn = 1), "SIGNATURE_INVALID"],
					[
						"current.build",
						(r) => ((r.current as Record<string, number>).build = 41),
						"SIGNATURE_INVALID",
					],
					[
						"launch_tcb.snp",
						(r) => ((r.launch_tcb as Record<string, number>).snp = 22),
						"SIGNATURE_INVALID",
					],
					[
						"signature.r",
						(r) => flip((r.signature as Record<string, unknown>).r, 5, 1),
						"SIGNATURE_INVALID",
					],
					[
						"reported_tcb.snp",
						(r) => ((r.reported_tcb as Record<string, number>).snp = 24),
						"SIGNATURE_INVALID",
					],
				];
			expect(await verify(sampleWithChain())).toBe("none");
			for (const [name, edit, want] of edits) {
				const ev = sampleWithChain();
				edit(ev.attestation_report as Record<string, unknown>);
				expect(`${name}: ${await verify(ev)}`).toBe(`${name}: ${want}`);
			}
			// A flipped byte in the VCEK (inside the cert_chain) breaks its signature or parse.
			const ev = sampleWithChain();
			const vcek = (ev.cert_chain as { data: number[] }[])[0] as {
				data: number[];
			};
			vcek.data[vcek.data.length - 10] =
				(vcek.data[vcek.data.length - 10] as number) ^ 1;
			expect(["SIGNATURE_INVALID", "EVIDENCE_INVALID"]).toContain(
				await verify(ev),
			);
		},
	);

	it.skipIf(!HAVE)(
		"under a foreign root (synthetic trust anchors only) → CHAIN_UNTRUSTED",
		async () => {
			const v = createSnpVerifier({ trust: makeSyntheticSnp().trust });
			expect(
				await code(
					v.verify({
						evidence: sampleWithChain(),
						expectedReportData: REPORT_DATA,
						now: GENOA_NOW,
					}),
				),
			).toBe("CHAIN_UNTRUSTED");
		},
	);

	it.skipIf(!HAVE)(
		"a report_data other than the session's → EVIDENCE_INVALID",
		async () => {
			expect(
				await code(
					createSnpVerifier().verify({
						evidence: sampleWithChain(),
						expectedReportData: Buffer.alloc(48, 7),
						now: GENOA_NOW,
					}),
				),
			).toBe("EVIDENCE_INVALID");
		},
	);
});

describe("SnpEvidence (CoCo form): structure", () => {
	const bad = (edit: (r: Record<string, unknown>) => void) => () => {
		const r = clone(SAMPLE.attestation_report);
		edit(r);
		return reportFromSerde(r);
	};

	it("out-of-range, missing, unknown and mistyped fields → EVIDENCE_INVALID", async () => {
		const cases: [string, (r: Record<string, unknown>) => void][] = [
			["unknown member", (r) => (r.extra = 1)],
			["missing member", (r) => delete r.measurement],
			["u32 too large", (r) => (r.vmpl = 2 ** 32)],
			["negative", (r) => (r.guest_svn = -1)],
			["fraction", (r) => (r.guest_svn = 1.5)],
			["u64 beyond 2^53", (r) => (r.policy = 2 ** 60)],
			["byte > 255", (r) => ((r.measurement as number[])[0] = 256)],
			["short array", (r) => (r.measurement as number[]).pop()],
			["long array", (r) => (r.chip_id as number[]).push(0)],
			["string byte", (r) => ((r.report_data as unknown[])[0] = "1")],
			[
				"fmc on Genoa",
				(r) => ((r.current_tcb as Record<string, unknown>).fmc = 1),
			],
			[
				"TCB unknown member",
				(r) => ((r.launch_tcb as Record<string, unknown>).x = 1),
			],
			[
				"TCB missing member",
				(r) => delete (r.launch_tcb as Record<string, unknown>).snp,
			],
			[
				"version unknown member",
				(r) => ((r.current as Record<string, unknown>).patch = 1),
			],
			["cpuid null on v3", (r) => (r.cpuid_fam_id = null)],
			["unknown CPUID", (r) => (r.cpuid_fam_id = 0x17)],
			["mit vector before v5", (r) => (r.launch_mit_vector = 1)],
			[
				"signature extra",
				(r) => ((r.signature as Record<string, unknown>).reserved = []),
			],
			[
				"signature short",
				(r) => ((r.signature as Record<string, number[]>).s as number[]).pop(),
			],
			["report not an object", (r) => Object.assign(r, { signature: [1, 2] })],
		];
		for (const [name, edit] of cases)
			expect(`${name}: ${await code(bad(edit))}`).toBe(
				`${name}: EVIDENCE_INVALID`,
			);
		expect(await code(() => reportFromSerde(null))).toBe("EVIDENCE_INVALID");
		expect(await code(() => reportFromSerde([]))).toBe("EVIDENCE_INVALID");
	});

	it("the evidence document: cert_chain entries, mixing forms, both forms detected", async () => {
		const ev =
			(chain: unknown, extra: Record<string, unknown> = {}) =>
			() =>
				parseSnpEvidence({
					attestation_report: SAMPLE.attestation_report,
					cert_chain: chain,
					...extra,
				});
		expect(
			parseSnpEvidence({
				attestation_report: SAMPLE.attestation_report,
				cert_chain: null,
			}).certs,
		).toEqual({});
		expect(
			parseSnpEvidence({ attestation_report: SAMPLE.attestation_report }).certs,
		).toEqual({});
		expect(parseSnpEvidence(SAMPLE).certs.vcek?.length).toBe(1347);
		const ok = parseSnpEvidence({
			attestation_report: SAMPLE.attestation_report,
			cert_chain: [
				{ cert_type: "CRL", data: [1, 2] },
				{ cert_type: "Empty", data: [] },
				{
					cert_type: { OTHER: "4a1d2e33-7a30-4a3c-9d4f-4d3b5a0c1e2f" },
					data: [3],
				},
				{ cert_type: "VLEK", data: [4] },
			],
		});
		expect(ok.certs).toEqual({ vlek: Buffer.from([4]) });
		for (const c of [
			[
				{ cert_type: "VCEK", data: [1] },
				{ cert_type: "VCEK", data: [2] },
			],
			[{ cert_type: "PEK", data: [1] }],
			[{ cert_type: "VCEK", data: [1], extra: 1 }],
			[{ cert_type: "VCEK", data: [300] }],
			[{ cert_type: "VCEK", data: [] }],
			[{ cert_type: "VCEK", data: new Array(9000).fill(0) }],
			[{ cert_type: { OTHER: "x" }, data: [] }],
			"VCEK",
			new Array(17).fill({ cert_type: "CRL", data: [] }),
		])
			expect(await code(ev(c))).toBe("EVIDENCE_INVALID");
		expect(await code(ev(null, { report: "AAAA" }))).toBe("EVIDENCE_INVALID");
		expect(
			await code(() => parseSnpEvidence({ report: "AAAA", cert_chain: null })),
		).toBe("EVIDENCE_INVALID");
		// our raw form is still recognised
		const s = makeSyntheticSnp();
		expect(
			parseSnpEvidence({ report: s.report.toString("base64") }).report.equals(
				s.report,
			),
		).toBe(true);
	});

	it("property: serde ↔ bytes round trip for synthetic reports of versions 2, 3 and 5 (Milan, Turin)", () => {
		const key = syntheticLeaf().key;
		fc.assert(
			fc.property(
				fc.constantFrom(2, 3, 5),
				fc.constantFrom("milan", "turin"),
				fc.uint8Array({ minLength: 48, maxLength: 48 }),
				fc.uint8Array({ minLength: 64, maxLength: 64 }),
				fc.integer({ min: 0, max: 2 ** 40 }),
				(version, product, measurement, reportData, mit) => {
					const chipId = Buffer.alloc(64, 0x11);
					if (product === "turin") chipId.fill(0, 8);
					const r = signedReport(key, {
						version,
						measurement: Buffer.from(measurement),
						reportData: Buffer.from(reportData),
						chipId,
						edit: (b) => {
							if (product === "turin" && version >= 3) b[0x188] = 0x1a;
							if (version >= 5) {
								b.writeBigUInt64LE(BigInt(mit), 0x1f8);
								b.writeBigUInt64LE(BigInt(mit) + 1n, 0x200);
							}
							if (product === "turin")
								for (const off of [0x38, 0x180, 0x1e0, 0x1f0]) {
									b[off] = 7; // fmc
									b.fill(0, off + 4, off + 7);
								}
						},
					});
					const s = JSON.parse(JSON.stringify(serdeFromReport(r)));
					expect(reportFromSerde(s).equals(r)).toBe(true);
					expect(s.reported_tcb.fmc).toBe(product === "turin" ? 7 : null);
				},
			),
			{ numRuns: 60 },
		);
	});

	it("property: arbitrary JSON never throws anything but EVIDENCE_INVALID", () => {
		fc.assert(
			fc.property(fc.jsonValue(), (j) => {
				try {
					parseSnpEvidence({ attestation_report: j, cert_chain: null });
				} catch (e) {
					expect((e as DadiError).code).toBe("EVIDENCE_INVALID");
				}
			}),
			{ numRuns: 300 },
		);
	});

	it("property: mutating one field of the sample yields the same bytes, other bytes, or EVIDENCE_INVALID", () => {
		const keys = Object.keys(SAMPLE.attestation_report);
		fc.assert(
			fc.property(
				fc.constantFrom(...keys),
				fc.oneof(
					fc.jsonValue(),
					fc.integer(),
					fc.array(fc.integer({ min: -2, max: 300 }), { maxLength: 80 }),
				),
				(k, v) => {
					const r = clone(SAMPLE.attestation_report);
					r[k] = v;
					try {
						const b = reportFromSerde(r);
						expect(b.length).toBe(1184);
					} catch (e) {
						expect((e as DadiError).code).toBe("EVIDENCE_INVALID");
					}
				},
			),
			{ numRuns: 400 },
		);
	});
});
