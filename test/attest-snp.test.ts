import { existsSync, readFileSync } from "node:fs";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseCertTable } from "../src/attest/snp/cert-table.js";
import { decodeTcb, parseReport } from "../src/attest/snp/report.js";
import {
	AMD_TRUST,
	ARK_GENOA_SHA256,
	ARK_MILAN_SHA256,
	ARK_TURIN_SHA256,
} from "../src/attest/snp/trust.js";
import { amdExtensions, parseCert, pemToDer } from "../src/attest/snp/vcek.js";
import {
	createSnpVerifier,
	parseSnpEvidence,
} from "../src/attest/snp/verifier.js";
import {
	createSnpContext,
	type SnpVerifyOptions,
	verifySnp,
} from "../src/attest/snp/verify.js";
import { DadiError, type ErrorCode } from "../src/errors.js";
import {
	makeSyntheticSnp,
	SYNTHETIC_CHIP_ID,
	signedReport,
	syntheticChain,
	syntheticLeaf,
	syntheticTrust,
} from "./attest/snp-synthetic.js";
import { attestationFixtures } from "./fixtures.js";
import { thrown } from "./helpers.js";

// ---------------------------------------------------------------------------------------------
// Fixtures (real hardware samples; see ../shared/fixtures/attestation/README.md)

const FIXTURES = attestationFixtures();
const SNP = `${FIXTURES}snp/`;
const present = existsSync(`${SNP}milan-report.bin`);
if (!present)
	console.warn(
		`\n*** SEV-SNP REAL-FIXTURE TESTS SKIPPED: ${SNP} not found (set DADI_FIXTURES). ` +
			"Skipped: Milan VCEK report, Milan VLEK report, odd-extension VCEKs, and the real-report " +
			"mutation/negative tests. Only synthetic tests ran. ***\n",
	);

const file = (name: string): Buffer => readFileSync(`${SNP}${name}`);
function chainOf(name: string): { ask: Buffer; ark: Buffer } {
	const [ask, ark] = pemToDer(readFileSync(`${SNP}${name}`, "utf8"));
	if (!ask || !ark) throw new Error(`${name}: expected ASK then ARK`);
	return { ask, ark };
}

/** Inside every Milan VCEK-chain window (VCEK 2023-01-24 .. 2030-01-24). */
const MILAN_NOW = new Date("2024-06-01T00:00:00Z");
/** Inside the VLEK's window (2024-12-10 .. 2025-12-10). */
const VLEK_NOW = new Date("2025-06-01T00:00:00Z");

function milan(): SnpVerifyOptions {
	return {
		report: file("milan-report.bin"),
		leaf: file("milan-vcek.der"),
		chain: chainOf("ask_ark_milan.pem"),
		now: MILAN_NOW,
	};
}

function vlek(): SnpVerifyOptions {
	return {
		report: file("milan-vlek-report.bin"),
		leaf: file("milan-vlek.der"),
		chain: chainOf("ask_ark_milan_vlek.pem"),
		now: VLEK_NOW,
	};
}

function codeOf(f: () => unknown): ErrorCode | "none" {
	try {
		f();
	} catch (e) {
		if (e instanceof DadiError) return e.code;
		throw e;
	}
	return "none";
}

/** The code verifySnp gives for `base` with one report byte XORed (default 0x01). */
function flippedCode(
	base: Parameters<typeof verifySnp>[0],
	at: number,
	mask?: number,
): ErrorCode | "none" {
	return codeOf(() =>
		verifySnp({ ...base, report: flip(base.report, at, mask) }),
	);
}

function flip(b: Buffer, at: number, mask = 0x01): Buffer {
	const c = Buffer.from(b);
	c[at] = (c[at] as number) ^ mask;
	return c;
}

function withVersion(b: Buffer, v: number): Buffer {
	const c = Buffer.from(b);
	c.writeUInt32LE(v, 0);
	return c;
}

const MILAN_MEASUREMENT =
	"a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c";
const MILAN_REPORT_DATA =
	"ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2";
const VLEK_MEASUREMENT =
	"8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0";

// ---------------------------------------------------------------------------------------------

describe("SEV-SNP: real Milan samples", () => {
	it.skipIf(!present)(
		"verifies the Milan VCEK report and yields the README facts",
		() => {
			const r = verifySnp({
				...milan(),
				expectedReportData: Buffer.from(MILAN_REPORT_DATA, "hex"),
			});
			expect(r.signer).toBe("vcek");
			expect(r.product).toBe("milan");
			const c = r.claims;
			expect(c.tee).toBe("snp");
			expect(c.debug).toBe(false);
			expect(c.measurement).toBe(MILAN_MEASUREMENT);
			expect(c.report_data).toBe(MILAN_REPORT_DATA + "00".repeat(32));
			expect(c.tcb).toEqual({ bootloader: 3, tee: 0, snp: 8, microcode: 115 });
			expect(c.tcb_status).toBe("");
			expect(c.tee_specific.report_version).toBe(2);
			expect(c.tee_specific.guest_svn).toBe(4);
			expect(c.tee_specific.policy).toBe("3001f");
			expect(c.tee_specific.vmpl).toBe(0);
			expect(c.tee_specific.signer).toBe("vcek");
			expect(c.tee_specific.product).toBe("milan");
			expect(c.tee_specific.smt_allowed).toBe(true);
			expect(c.tee_specific.migration_agent).toBe(false);
			expect(c.tee_specific.chip_id).toMatch(/^c38427a30d4c7af9/);
			expect(c.tee_specific.cloud_provider).toBe("");
			expect(r.report.version).toBe(2);
			expect(r.report.policy.raw).toBe(0x3001fn);
			expect(r.report.cpuid).toBeUndefined();
		},
	);

	it.skipIf(!present)(
		"verifies the Milan VLEK report before 2025-12-10, CERT_EXPIRED after",
		() => {
			const r = verifySnp(vlek());
			expect(r.signer).toBe("vlek");
			const c = r.claims;
			expect(c.debug).toBe(false);
			expect(c.measurement).toBe(VLEK_MEASUREMENT);
			expect(c.tcb).toEqual({ bootloader: 4, tee: 0, snp: 24, microcode: 217 });
			expect(c.tee_specific.report_version).toBe(3);
			expect(c.tee_specific.signer).toBe("vlek");
			expect(c.tee_specific.vmpl).toBe(1);
			expect(c.tee_specific.chip_id).toBe("");
			expect(c.tee_specific.cloud_provider).toBe("cc-us-east-2.amazonaws.com");
			expect(r.report.chipIdMasked).toBe(true);
			expect(r.report.signingKey).toBe("vlek");
			expect(r.report.cpuid).toEqual({ family: 0x19, model: 1, stepping: 1 });
			expect(
				codeOf(() =>
					verifySnp({ ...vlek(), now: new Date("2025-12-11T00:00:00Z") }),
				),
			).toBe("CERT_EXPIRED");
			expect(
				codeOf(() =>
					verifySnp({ ...vlek(), now: new Date("2024-12-01T00:00:00Z") }),
				),
			).toBe("CERT_EXPIRED");
		},
	);

	it.skipIf(!present)(
		"CERT_EXPIRED for the Milan VCEK after 2030-01-24",
		() => {
			expect(
				codeOf(() =>
					verifySnp({ ...milan(), now: new Date("2030-02-01T00:00:00Z") }),
				),
			).toBe("CERT_EXPIRED");
		},
	);

	it.skipIf(!present)(
		"reads the TCB values of both odd-extension VCEKs",
		() => {
			const legacy = amdExtensions(
				parseCert(file("vcek-odd-extensions-legacy.der"), "legacy"),
			);
			expect(legacy).toMatchObject({
				productName: "Milan-B0",
				bootloader: 3,
				tee: 0,
				snp: 10,
				microcode: 169,
			});
			const fresh = amdExtensions(
				parseCert(file("vcek-odd-extensions-new.der"), "new"),
			);
			expect(fresh).toMatchObject({
				productName: "Milan-B0",
				bootloader: 0,
				tee: 0,
				snp: 0,
				microcode: 30,
			});
			const seq = Buffer.from([...Array(64).keys()]);
			expect(legacy.hwid).toEqual(seq);
			expect(fresh.hwid).toEqual(seq); // wrapped in an OCTET STRING in this one
			const real = amdExtensions(parseCert(file("milan-vcek.der"), "vcek"));
			expect(real.hwid).toEqual(
				file("milan-report.bin").subarray(0x1a0, 0x1e0),
			);
		},
	);

	it.skipIf(!present)("pins the ARK fingerprints of the fixture chains", () => {
		const sha = (pem: string): string =>
			parseCert(chainOf(pem).ark, "ARK").sha256;
		expect(sha("ask_ark_milan.pem")).toBe(ARK_MILAN_SHA256);
		expect(sha("ask_ark_milan_vlek.pem")).toBe(ARK_MILAN_SHA256);
		expect(sha("ask_ark_genoa.pem")).toBe(ARK_GENOA_SHA256);
		expect(sha("ask_ark_turin_vcek.pem")).toBe(ARK_TURIN_SHA256);
	});

	it.skipIf(!present)(
		"SIGNATURE_INVALID for a flipped byte anywhere in the signed fields",
		() => {
			const base = milan();
			// guest_svn, policy ABI minor, family_id, report_data, measurement, host_data,
			// id_key_digest, report_id, chip_id, committed TCB, launch TCB, last signed reserved... not that.
			for (const at of [
				0x04, 0x08, 0x10, 0x50, 0x8f, 0x95, 0xc0, 0xe0, 0x140, 0x1a5, 0x1e0,
				0x1f0,
			])
				expect([at, flippedCode(base, at)]).toEqual([at, "SIGNATURE_INVALID"]);
		},
	);

	it.skipIf(!present)("SIGNATURE_INVALID for flipped signature bytes", () => {
		const base = milan();
		for (const at of [0x2a0, 0x2b7, 0x2cf, 0x2e8, 0x300, 0x317])
			expect([at, flippedCode(base, at)]).toEqual([at, "SIGNATURE_INVALID"]);
	});

	it.skipIf(!present)(
		"EVIDENCE_INVALID for non-zero upper signature bytes and reserved bytes",
		() => {
			const base = milan();
			for (const at of [
				0x2d0, 0x2e7, 0x318, 0x32f, 0x4c, 0x18b, 0x19f, 0x1eb, 0x1ef, 0x208,
				0x29f, 0x330, 0x49f,
			])
				expect([at, flippedCode(base, at)]).toEqual([at, "EVIDENCE_INVALID"]);
			// VMPL 4 and reserved key-info bits
			expect(flippedCode(base, 0x30, 0x04)).toBe("EVIDENCE_INVALID");
			expect(flippedCode(base, 0x48, 0x20)).toBe("EVIDENCE_INVALID");
		},
	);

	it.skipIf(!present)(
		"EVIDENCE_UNSUPPORTED for versions 1, 4, 6, other algorithms and no signing key",
		() => {
			const base = milan();
			for (const v of [0, 1, 4, 6, 0xffffffff])
				expect([
					v,
					codeOf(() =>
						verifySnp({ ...base, report: withVersion(base.report, v) }),
					),
				]).toEqual([v, "EVIDENCE_UNSUPPORTED"]);
			expect(flippedCode(base, 0x34, 0x03)).toBe("EVIDENCE_UNSUPPORTED");
			expect(flippedCode(base, 0x48, 0x1c)).toBe("EVIDENCE_UNSUPPORTED");
			expect(flippedCode(base, 0x48, 0x08)).toBe("EVIDENCE_UNSUPPORTED");
		},
	);

	it.skipIf(!present)("EVIDENCE_INVALID for sizes 0, 1183, 1185", () => {
		const base = milan();
		for (const r of [
			Buffer.alloc(0),
			base.report.subarray(0, 1183),
			Buffer.concat([base.report, Buffer.alloc(1)]),
		])
			expect(codeOf(() => verifySnp({ ...base, report: r }))).toBe(
				"EVIDENCE_INVALID",
			);
	});

	it.skipIf(!present)("flipped bytes in the VCEK, ASK and ARK DER", () => {
		const base = milan();
		const last = (b: Buffer): number => b.length - 1;
		// In the signature value: the certificate still parses, its signature fails.
		expect(
			codeOf(() =>
				verifySnp({ ...base, leaf: flip(base.leaf, last(base.leaf)) }),
			),
		).toBe("SIGNATURE_INVALID");
		expect(
			codeOf(() =>
				verifySnp({
					...base,
					chain: {
						...base.chain,
						ask: flip(base.chain.ask, last(base.chain.ask)),
					},
				}),
			),
		).toBe("SIGNATURE_INVALID");
		expect(
			codeOf(() =>
				verifySnp({
					...base,
					chain: {
						...base.chain,
						ark: flip(base.chain.ark, last(base.chain.ark)),
					},
				}),
			),
		).toBe("SIGNATURE_INVALID");
		// In the leaf's hardware-ID extension (inside the TBS): still parses, the ASK's signature fails.
		expect(
			codeOf(() => verifySnp({ ...base, leaf: flip(base.leaf, 720) })),
		).toBe("SIGNATURE_INVALID");
		// In the leaf's EC point: no longer a point on P-384, not a usable certificate.
		expect(
			codeOf(() => verifySnp({ ...base, leaf: flip(base.leaf, 0x1e0) })),
		).toBe("EVIDENCE_INVALID");
		// In the outer SEQUENCE header: not DER any more.
		expect(
			codeOf(() => verifySnp({ ...base, leaf: flip(base.leaf, 1, 0x40) })),
		).toBe("EVIDENCE_INVALID");
		expect(
			codeOf(() =>
				verifySnp({
					...base,
					chain: { ...base.chain, ask: flip(base.chain.ask, 0, 0x40) },
				}),
			),
		).toBe("EVIDENCE_INVALID");
		expect(
			codeOf(() =>
				verifySnp({ ...base, chain: { ...base.chain, ark: Buffer.alloc(0) } }),
			),
		).toBe("EVIDENCE_INVALID");
	});

	it.skipIf(!present)(
		"CHAIN_UNTRUSTED for another product's chain, swapped roles, or the wrong kind",
		() => {
			const base = milan();
			expect(
				codeOf(() =>
					verifySnp({ ...base, chain: chainOf("ask_ark_genoa.pem") }),
				),
			).toBe("CHAIN_UNTRUSTED");
			expect(
				codeOf(() =>
					verifySnp({ ...base, chain: chainOf("ask_ark_turin_vcek.pem") }),
				),
			).toBe("CHAIN_UNTRUSTED");
			expect(codeOf(() => verifySnp({ ...base, product: "genoa" }))).toBe(
				"CHAIN_UNTRUSTED",
			);
			expect(
				codeOf(() =>
					verifySnp({
						...base,
						chain: { ask: base.chain.ark, ark: base.chain.ask },
					}),
				),
			).toBe("CHAIN_UNTRUSTED");
			// A VCEK presented under the ASVK, a VLEK under the ASK.
			expect(
				codeOf(() =>
					verifySnp({ ...base, chain: chainOf("ask_ark_milan_vlek.pem") }),
				),
			).toBe("CHAIN_UNTRUSTED");
			expect(
				codeOf(() =>
					verifySnp({ ...vlek(), chain: chainOf("ask_ark_milan.pem") }),
				),
			).toBe("CHAIN_UNTRUSTED");
			// The real chain under trust anchors that pin another root.
			expect(
				codeOf(() => verifySnp({ ...base, trust: syntheticTrust() })),
			).toBe("CHAIN_UNTRUSTED");
			// The Milan report signed under Milan's chain but claimed as another report's VCEK.
			expect(
				codeOf(() =>
					verifySnp({
						...base,
						report: file("milan-vlek-report.bin"),
						now: VLEK_NOW,
					}),
				),
			).toBe("SIGNATURE_INVALID");
		},
	);

	it.skipIf(!present)(
		"EVIDENCE_INVALID when report_data or host_data is not the expected binding",
		() => {
			const base = milan();
			const rd = Buffer.from(MILAN_REPORT_DATA, "hex");
			expect(
				codeOf(() => verifySnp({ ...base, expectedReportData: flip(rd, 3) })),
			).toBe("EVIDENCE_INVALID");
			expect(
				codeOf(() =>
					verifySnp({ ...base, expectedReportData: Buffer.alloc(0) }),
				),
			).toBe("EVIDENCE_INVALID");
			expect(
				codeOf(() =>
					verifySnp({ ...base, expectedHostData: Buffer.alloc(32, 1) }),
				),
			).toBe("EVIDENCE_INVALID");
			expect(
				codeOf(() =>
					verifySnp({ ...base, expectedHostData: Buffer.alloc(16, 1) }),
				),
			).toBe("EVIDENCE_INVALID");
			// The sample's HOST_DATA is all zero, so a zero digest is (correctly) bound.
			expect(
				codeOf(() =>
					verifySnp({ ...base, expectedHostData: Buffer.alloc(32) }),
				),
			).toBe("none");
		},
	);

	it.skipIf(!present)(
		"property: mutations of the real report never verify and only throw DadiError",
		() => {
			const base = milan();
			const ctx = createSnpContext();
			fc.assert(
				fc.property(
					fc.oneof(
						fc.record({
							kind: fc.constant("flip" as const),
							flips: fc.array(
								fc.tuple(fc.nat(1183), fc.integer({ min: 1, max: 255 })),
								{
									minLength: 1,
									maxLength: 8,
								},
							),
						}),
						fc.record({
							kind: fc.constant("truncate" as const),
							at: fc.nat(1183),
						}),
						fc.record({
							kind: fc.constant("extend" as const),
							extra: fc.uint8Array({ minLength: 1, maxLength: 64 }),
						}),
					),
					(m) => {
						let r: Buffer;
						if (m.kind === "flip") {
							r = Buffer.from(base.report);
							for (const [at, x] of m.flips) r[at] = (r[at] as number) ^ x;
							if (r.equals(base.report)) return; // flips that cancel out
						} else if (m.kind === "truncate") r = base.report.subarray(0, m.at);
						else r = Buffer.concat([base.report, m.extra]);
						const code = codeOf(() => ctx.verify({ ...base, report: r }));
						expect(code).not.toBe("none");
					},
				),
				{ numRuns: 300 },
			);
		},
	);
});

describe("SEV-SNP: synthetic chain", () => {
	it("a look-alike chain is CHAIN_UNTRUSTED by default and verifies under its own trust", () => {
		const s = makeSyntheticSnp();
		expect(
			codeOf(() =>
				verifySnp({
					report: s.report,
					leaf: s.leaf,
					chain: s.chain,
					now: s.now,
				}),
			),
		).toBe("CHAIN_UNTRUSTED");
		expect(
			codeOf(() =>
				verifySnp({
					report: s.report,
					leaf: s.leaf,
					chain: s.chain,
					now: s.now,
					trust: AMD_TRUST,
				}),
			),
		).toBe("CHAIN_UNTRUSTED");
		const r = verifySnp(s);
		expect(r.signer).toBe("vcek");
		expect(r.product).toBe("milan");
		expect(r.claims.tcb).toEqual({
			bootloader: 3,
			tee: 0,
			snp: 8,
			microcode: 115,
		});
		expect(r.claims.tee_specific.chip_id).toBe(
			SYNTHETIC_CHIP_ID.toString("hex"),
		);
	});

	it("carries measurement, debug, report_data, host_data and versions 2, 3, 5", () => {
		const measurement = Buffer.alloc(48, 0x5a);
		const reportData = Buffer.alloc(48, 0x11);
		const hostData = Buffer.alloc(32, 0x22);
		for (const version of [2, 3, 5]) {
			const s = makeSyntheticSnp({
				measurement,
				debug: true,
				reportData,
				hostData,
				version,
			});
			const r = verifySnp({
				...s,
				expectedReportData: reportData,
				expectedHostData: hostData,
			});
			expect(r.claims.debug).toBe(true);
			expect(r.claims.measurement).toBe(measurement.toString("hex"));
			expect(r.claims.report_data).toBe(
				reportData.toString("hex") + "00".repeat(16),
			);
			expect(r.claims.init_data).toBe(hostData.toString("hex"));
			expect(r.claims.tee_specific.report_version).toBe(version);
			expect(r.report.launchMitVector !== undefined).toBe(version === 5);
			expect(
				codeOf(() =>
					verifySnp({ ...s, expectedReportData: Buffer.alloc(48, 0x12) }),
				),
			).toBe("EVIDENCE_INVALID");
			expect(
				codeOf(() =>
					verifySnp({ ...s, expectedHostData: Buffer.alloc(32, 0x23) }),
				),
			).toBe("EVIDENCE_INVALID");
		}
		expect(makeSyntheticSnp().report.equals(makeSyntheticSnp().report)).toBe(
			false,
		); // ECDSA is randomized
	});

	it("EVIDENCE_UNSUPPORTED for signed reports of versions 1, 4, 6", () => {
		const s = makeSyntheticSnp();
		const key = syntheticLeaf().key;
		for (const version of [1, 4, 6])
			expect(
				codeOf(() =>
					verifySnp({ ...s, report: signedReport(key, { version }) }),
				),
			).toBe("EVIDENCE_UNSUPPORTED");
	});

	it("EVIDENCE_INVALID for signed reports with VMPL 4 or non-zero reserved bytes", () => {
		const s = makeSyntheticSnp();
		const key = syntheticLeaf().key;
		expect(
			codeOf(() => verifySnp({ ...s, report: signedReport(key, { vmpl: 4 }) })),
		).toBe("EVIDENCE_INVALID");
		for (const at of [0x4c, 0x190, 0x1eb, 0x250])
			expect(
				codeOf(() =>
					verifySnp({
						...s,
						report: signedReport(key, {
							edit: (r) => {
								r[at] = 1;
							},
						}),
					}),
				),
			).toBe("EVIDENCE_INVALID");
		// v2 reports' CPUID bytes and pre-v5 mitigation-vector bytes are not checked as reserved.
		expect(
			codeOf(() =>
				verifySnp({
					...s,
					report: signedReport(key, {
						edit: (r) => {
							r[0x1f8] = 1;
						},
					}),
				}),
			),
		).toBe("none");
	});

	it("CERT_EXPIRED before and after the certificates' windows", () => {
		const s = makeSyntheticSnp();
		const made = syntheticChain().made.getTime();
		const day = 86_400_000;
		expect(
			codeOf(() => verifySnp({ ...s, now: new Date(made - 2 * day) })),
		).toBe("CERT_EXPIRED");
		expect(
			codeOf(() => verifySnp({ ...s, now: new Date(made + 400 * day) })),
		).toBe("CERT_EXPIRED"); // leaf: 365 days
		expect(
			codeOf(() => verifySnp({ ...s, now: new Date(made + 4000 * day) })),
		).toBe("CERT_EXPIRED"); // chain: 3650
		const shortLived = syntheticLeaf({ days: 1 });
		const r = signedReport(shortLived.key);
		expect(
			codeOf(() =>
				verifySnp({
					...s,
					report: r,
					leaf: shortLived.der,
					now: new Date(made + 2 * day),
				}),
			),
		).toBe("CERT_EXPIRED");
		expect(
			codeOf(() => verifySnp({ ...s, report: r, leaf: shortLived.der })),
		).toBe("none");
	});

	it("TCB_MISMATCH when the VCEK's TCB extensions differ from the report's reported TCB", () => {
		const s = makeSyntheticSnp();
		for (const tcb of [
			{ bootloader: 3, tee: 0, snp: 9, microcode: 115 },
			{ bootloader: 2, tee: 0, snp: 8, microcode: 115 },
			{ bootloader: 3, tee: 1, snp: 8, microcode: 115 },
			{ bootloader: 3, tee: 0, snp: 8, microcode: 116 },
		]) {
			const leaf = syntheticLeaf({ tcb });
			expect(
				codeOf(() =>
					verifySnp({ ...s, leaf: leaf.der, report: signedReport(leaf.key) }),
				),
			).toBe("TCB_MISMATCH");
			// and the same VCEK verifies a report that reports its TCB
			expect(
				codeOf(() =>
					verifySnp({
						...s,
						leaf: leaf.der,
						report: signedReport(leaf.key, { tcb }),
					}),
				),
			).toBe("none");
		}
	});

	it("TCB_MISMATCH when the hardware ID is not the report's CHIP_ID (unless masked)", () => {
		const s = makeSyntheticSnp();
		const key = syntheticLeaf().key;
		const other = Buffer.from(SYNTHETIC_CHIP_ID);
		other[63] = 0;
		expect(
			codeOf(() =>
				verifySnp({ ...s, report: signedReport(key, { chipId: other }) }),
			),
		).toBe("TCB_MISMATCH");
		const masked = verifySnp({
			...s,
			report: signedReport(key, { chipId: Buffer.alloc(64) }),
		});
		expect(masked.claims.tee_specific.chip_id).toBe("");
	});

	it("CHAIN_UNTRUSTED for a report that names another signing key or CPU, or another product's VCEK", () => {
		const s = makeSyntheticSnp();
		const key = syntheticLeaf().key;
		expect(
			codeOf(() =>
				verifySnp({ ...s, report: signedReport(key, { signingKey: 1 }) }),
			),
		).toBe("CHAIN_UNTRUSTED");
		const genoaCpu = signedReport(key, {
			version: 3,
			edit: (r) => {
				r[0x189] = 0x11;
			},
		});
		expect(codeOf(() => verifySnp({ ...s, report: genoaCpu }))).toBe(
			"CHAIN_UNTRUSTED",
		);
		const genoaLeaf = syntheticLeaf({ productName: "Genoa" });
		expect(
			codeOf(() =>
				verifySnp({
					...s,
					leaf: genoaLeaf.der,
					report: signedReport(genoaLeaf.key),
				}),
			),
		).toBe("CHAIN_UNTRUSTED");
		expect(codeOf(() => verifySnp({ ...s, product: "turin" }))).toBe(
			"CHAIN_UNTRUSTED",
		);
	});

	it("SIGNATURE_INVALID for a report signed by another key", () => {
		const s = makeSyntheticSnp();
		const other = syntheticLeaf({
			tcb: { bootloader: 3, tee: 0, snp: 8, microcode: 114 },
		});
		expect(
			codeOf(() => verifySnp({ ...s, report: signedReport(other.key) })),
		).toBe("SIGNATURE_INVALID");
	});

	it("decodes Turin TCBs with the FMC first", () => {
		const raw = Buffer.from([1, 2, 3, 4, 0, 0, 0, 9]);
		expect(decodeTcb(raw, "turin")).toEqual({
			fmc: 1,
			bootloader: 2,
			tee: 3,
			snp: 4,
			microcode: 9,
		});
		expect(decodeTcb(raw, "genoa")).toEqual({
			bootloader: 1,
			tee: 2,
			snp: 0,
			microcode: 9,
		});
	});

	it("a context caches the chain: repeated verifications agree", () => {
		const s = makeSyntheticSnp();
		const ctx = createSnpContext(s.trust);
		const a = ctx.verify(s);
		const b = ctx.verify(s);
		expect(b.claims).toEqual(a.claims);
		// the cache does not bypass validity
		expect(
			codeOf(() =>
				ctx.verify({ ...s, now: new Date(s.now.getTime() + 400 * 86_400_000) }),
			),
		).toBe("CERT_EXPIRED");
	});

	it("property: random bytes never verify and only throw DadiError", () => {
		const s = makeSyntheticSnp();
		fc.assert(
			fc.property(
				fc.oneof(
					fc.uint8Array({ minLength: 0, maxLength: 1300 }),
					fc.uint8Array({ minLength: 1184, maxLength: 1184 }),
				),
				(bytes) => {
					const report = Buffer.from(bytes);
					expect(codeOf(() => parseReport(report))).not.toBe("INTERNAL");
					expect(codeOf(() => verifySnp({ ...s, report }))).not.toBe("none");
				},
			),
			{ numRuns: 300 },
		);
	});

	it("property: mutations of a valid synthetic report never verify and only throw DadiError", () => {
		const s = makeSyntheticSnp({ version: 5 });
		const ctx = createSnpContext(s.trust);
		expect(codeOf(() => ctx.verify(s))).toBe("none");
		fc.assert(
			fc.property(
				fc.oneof(
					fc.array(fc.tuple(fc.nat(1183), fc.integer({ min: 1, max: 255 })), {
						minLength: 1,
						maxLength: 4,
					}),
					fc.nat(1183),
					fc.uint8Array({ minLength: 1, maxLength: 32 }),
				),
				(m) => {
					let r: Buffer;
					if (Array.isArray(m)) {
						r = Buffer.from(s.report);
						for (const [at, x] of m) r[at] = (r[at] as number) ^ x;
						if (r.equals(s.report)) return;
					} else if (typeof m === "number") r = s.report.subarray(0, m);
					else r = Buffer.concat([s.report, m]);
					expect(codeOf(() => ctx.verify({ ...s, report: r }))).not.toBe(
						"none",
					);
				},
			),
			{ numRuns: 400 },
		);
	});

	it("property: mutations of the VCEK, ASK and ARK DER never verify and only throw DadiError", () => {
		const s = makeSyntheticSnp();
		fc.assert(
			fc.property(
				fc.constantFrom("leaf", "ask", "ark"),
				fc.oneof(
					fc.tuple(fc.nat(4000), fc.integer({ min: 1, max: 255 })),
					fc.record({ cut: fc.nat(4000) }),
				),
				(which, m) => {
					const o = { ...s, chain: { ...s.chain } };
					const src = which === "leaf" ? s.leaf : s.chain[which];
					let der: Buffer;
					if (Array.isArray(m)) der = flip(src, m[0] % src.length, m[1]);
					else der = src.subarray(0, m.cut % src.length);
					if (which === "leaf") o.leaf = der;
					else o.chain[which] = der;
					expect(codeOf(() => verifySnp(o))).not.toBe("none");
				},
			),
			{ numRuns: 300 },
		);
	});
});

describe("SEV-SNP: broker Verifier", () => {
	const b64 = (b: Buffer): string => b.toString("base64");

	it("verifies evidence with its certificates and binds report_data / init_data", async () => {
		const reportData = Buffer.alloc(48, 7);
		const hostData = Buffer.alloc(32, 9);
		const s = makeSyntheticSnp({ reportData, hostData });
		const v = createSnpVerifier({ trust: s.trust });
		const evidence = {
			report: b64(s.report),
			certs: {
				vcek: b64(s.leaf),
				ask: b64(s.chain.ask),
				ark: b64(s.chain.ark),
			},
		};
		const claims = await v.verify({
			evidence,
			expectedReportData: reportData,
			expectedInitData: hostData,
			now: s.now,
		});
		expect(claims.tee).toBe("snp");
		expect(claims.init_data).toBe(hostData.toString("hex"));
		const asText = await v.verify({
			evidence: JSON.stringify(evidence),
			expectedReportData: reportData,
			now: s.now,
		});
		expect(asText.measurement).toBe(claims.measurement);
		await expect(
			v.verify({
				evidence,
				expectedReportData: Buffer.alloc(48, 8),
				now: s.now,
			}),
		).rejects.toMatchObject({ code: "EVIDENCE_INVALID" });
		await expect(
			v.verify({
				evidence,
				expectedReportData: reportData,
				expectedInitData: Buffer.alloc(32, 1),
				now: s.now,
			}),
		).rejects.toMatchObject({ code: "EVIDENCE_INVALID" });
		// default trust: the synthetic chain is not AMD's
		await expect(
			createSnpVerifier().verify({
				evidence,
				expectedReportData: reportData,
				now: s.now,
			}),
		).rejects.toMatchObject({ code: "CHAIN_UNTRUSTED" });
	});

	it("takes missing certificates from the cert source, and says so when there is none", async () => {
		const reportData = Buffer.alloc(48, 3);
		const s = makeSyntheticSnp({ reportData });
		const evidence = { report: b64(s.report) };
		await expect(
			createSnpVerifier({ trust: s.trust }).verify({
				evidence,
				expectedReportData: reportData,
				now: s.now,
			}),
		).rejects.toMatchObject({
			code: "EVIDENCE_INVALID",
			message: expect.stringMatching(/no VCEK for this report/),
		});
		const asked: unknown[] = [];
		const v = createSnpVerifier({
			trust: s.trust,
			certSource: async (o) => {
				asked.push(o);
				return { leaf: s.leaf, ask: s.chain.ask, ark: s.chain.ark };
			},
		});
		const claims = await v.verify({
			evidence,
			expectedReportData: reportData,
			now: s.now,
		});
		expect(claims.tee_specific.signer).toBe("vcek");
		expect(asked).toHaveLength(1);
		expect(asked[0]).toMatchObject({
			signer: "vcek",
			chipId: SYNTHETIC_CHIP_ID,
		});
	});

	it("rejects malformed evidence with EVIDENCE_INVALID", () => {
		const bad: unknown[] = [
			null,
			[],
			"not json",
			"x".repeat(70_000),
			{},
			{ report: 5 },
			{ report: "!!!" },
			{ report: "A".repeat(2000) },
			{ report: "AAAA", extra: 1 },
			{ report: "AAAA", certs: [] },
			{ report: "AAAA", certs: { pck: "AAAA" } },
			{ report: "AAAA", certs: { vcek: "A".repeat(20_000) } },
		];
		for (const e of bad)
			expect(codeOf(() => parseSnpEvidence(e))).toBe("EVIDENCE_INVALID");
	});

	it.skipIf(!present)(
		"verifies the real Milan sample through the Verifier with AMD's pinned roots",
		async () => {
			const m = milan();
			const claims = await createSnpVerifier().verify({
				evidence: {
					report: b64(m.report),
					certs: {
						vcek: b64(m.leaf),
						ask: b64(m.chain.ask),
						ark: b64(m.chain.ark),
					},
				},
				expectedReportData: Buffer.from(MILAN_REPORT_DATA, "hex"),
				now: MILAN_NOW,
			});
			expect(claims.measurement).toBe(MILAN_MEASUREMENT);
		},
	);
});

describe("the extended report's certificate table", () => {
	const guid = (hex: string) => Buffer.from(hex.replace(/-/g, ""), "hex");
	const VCEK = guid("63da758d-e664-4564-adc5-f4b93be8accd");
	const ASK = guid("4ab7b379-bbac-4fe4-a02f-05aef327c782");
	const ARK = guid("c0b406a4-a803-4952-9743-3fb6014cd0ae");
	const CRL = guid("92f81bc3-5811-4d3d-97ff-d19f88dc67ea");
	function table(entries: [Buffer, Buffer][]): Buffer {
		const head = Buffer.alloc((entries.length + 1) * 24);
		let off = head.length;
		entries.forEach(([g, data], i) => {
			g.copy(head, i * 24);
			head.writeUInt32LE(off, i * 24 + 16);
			head.writeUInt32LE(data.length, i * 24 + 20);
			off += data.length;
		});
		return Buffer.concat([head, ...entries.map(([, d]) => d)]);
	}

	it("finds the VCEK, ASK and ARK by GUID, skipping others", () => {
		const t = table([
			[CRL, Buffer.from("crl")],
			[VCEK, Buffer.from("vcek-der")],
			[ASK, Buffer.from("ask-der")],
			[ARK, Buffer.from("ark-der")],
		]);
		expect(parseCertTable(t)).toEqual({
			vcek: Buffer.from("vcek-der"),
			ask: Buffer.from("ask-der"),
			ark: Buffer.from("ark-der"),
		});
	});

	it("refuses tables that point outside themselves, lack a terminator or repeat a certificate", () => {
		const good = table([[VCEK, Buffer.from("x")]]);
		const outside = Buffer.from(good);
		outside.writeUInt32LE(1000, 20);
		const twice = table([
			[VCEK, Buffer.from("x")],
			[VCEK, Buffer.from("y")],
		]);
		for (const t of [outside, good.subarray(0, 30), twice, Buffer.alloc(10)])
			expect(thrown(() => parseCertTable(t)).code).toBe("EVIDENCE_INVALID");
	});

	it("never throws anything but EVIDENCE_INVALID on random bytes", () => {
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 300 }), (b) => {
				try {
					parseCertTable(Buffer.from(b));
				} catch (e) {
					expect((e as DadiError).code).toBe("EVIDENCE_INVALID");
				}
			}),
			{ numRuns: 2000 },
		);
	});

	it.skipIf(!present)(
		"carries the real Milan chain to a verified report through the broker verifier",
		async () => {
			const t = table([
				[VCEK, file("milan-vcek.der")],
				[ASK, chainOf("ask_ark_milan.pem").ask],
				[ARK, chainOf("ask_ark_milan.pem").ark],
			]);
			const report = file("milan-report.bin");
			const claims = await createSnpVerifier().verify({
				evidence: {
					report: report.toString("base64"),
					cert_table: t.toString("base64"),
				},
				expectedReportData: report.subarray(0x50, 0x70),
				now: new Date("2024-06-01T00:00:00Z"),
			});
			expect(claims.tcb).toEqual({
				bootloader: 3,
				tee: 0,
				snp: 8,
				microcode: 115,
			});
		},
	);
});
