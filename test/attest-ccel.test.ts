/**
 * The TDX CC event log: parsing real logs (td-shim, OVMF, OVMF+grub, GKE), replaying them to the
 * RTMR values Trustee recorded for those TDs, claims, tampering (EVENTLOG_MISMATCH), bounds (every
 * truncation, fuzzing: only EVIDENCE_INVALID), and the TDX verifier's handling of cc_eventlog.
 */
import { existsSync, readFileSync } from "node:fs";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseCcel } from "../src/attest/tdx/ccel.js";
import { ccelClaims, eventSummary } from "../src/attest/tdx/ccel-claims.js";
import { checkCcelReplay, replayCcel } from "../src/attest/tdx/ccel-replay.js";
import { parseTdxEvidenceDocument } from "../src/attest/tdx/evidence.js";
import { parseQuote } from "../src/attest/tdx/quote.js";
import { tdxVerifier } from "../src/attest/tdx/verifier.js";
import { DadiError, type ErrorCode } from "../src/errors.js";
import {
	eventBytes,
	specIdEvent,
	syntheticCcel,
	taggedData,
} from "./attest/ccel-synthetic.js";
import { attestationFixtures } from "./fixtures.js";
import { ROOT } from "./helpers.js";

const coco = (name: string): Buffer =>
	readFileSync(`${ROOT}/test/fixtures/coco/${name}`);
const Z = "0".repeat(96);
/** From trustee deps/eventlog/src/lib.rs test_rtmr_integrity (the TDs' quoted RTMR0..3). */
const SAMPLES: Record<string, string[]> = {
	"ccel-td-shim.bin": [
		"2dc712306a963eadb894ad47dbaa17df44814151555aee11cbb843becca88950ffd079664902e6f22c66f7c8213543f4",
		"0fa3be56af61208bbd179dc7b124988eb929319154663c539d6f46445ecac2fec287075047ff7bd1922829fec28cd3cf",
		Z,
		Z,
	],
	"ccel-ovmf.bin": [
		"8566f998798db09443b244c62de9a3041fb02e2e6936c4396d784bba2e90177329ec5aba3bb484404f2ab9cc90abe193",
		"775b9f6bfe99f8a31396f0d0218e67ffa796d3b96ccf961cbb0deba48c79c00f082cda1a5567c1c16305f1fc210c13c6",
		"94eaf7a7bf398ed8d888c91057ae0261802e4f3df084213a76ca7f0b5055ac9d2241de43cd58d9e8b49c503bbf25f34a",
		Z,
	],
	"ccel-grub.bin": [
		"cec0a104f691f60da2387fea3c2de00c4ac035e2bb479ff02edcce69039d9e9907f0b3e55031da3dc7038f423adebd79",
		"6c289e0c62182d41ebe97bdbc9872d10998a08eaa86adcdc684001a363207ee72942c7522cdf00a4bbc3d784bed7b670",
		"08919d017ba0e52cd6d966351c7de16fe76c1d3d3d3da4554239e4c7d16cb8b82a94e7eaea3a0e6e18eb690b999fd31e",
		Z,
	],
	"ccel-grub-gke.bin": [
		"bc9945139042cf2cc75caf920aa57f14884ecfd7e893bccc51250c8ce90eb53ce72741e6adaa18183eb1331a87d4544a",
		"c17cb288a4dee302bb9ed8d27257a168f3264ad68cab53757f37eeaa7039657fa887cad65cf910e0fdc435ff110f8a7b",
		"334aeba2c985f8886cea97d1ecffbd512769d528b9a94009583db667ad7d2faa7d37fa145d75b192ceee2d2f10b2eb6d",
		Z,
	],
};
const rtmrs = (name: string): Buffer[] =>
	(SAMPLES[name] as string[]).map((h) => Buffer.from(h, "hex"));

function code(f: () => unknown): ErrorCode | "none" {
	try {
		f();
	} catch (e) {
		if (e instanceof DadiError) return e.code;
		throw e;
	}
	return "none";
}

async function codeAsync(p: Promise<unknown>): Promise<ErrorCode | "none"> {
	try {
		await p;
	} catch (e) {
		if (e instanceof DadiError) return e.code;
		throw e;
	}
	return "none";
}

describe("CC event log: real samples", () => {
	for (const name of Object.keys(SAMPLES))
		it(`${name}: replays to the TD's RTMR0..3`, () => {
			const log = parseCcel(coco(name));
			expect(replayCcel(log).map((b) => b.toString("hex"))).toEqual(
				SAMPLES[name],
			);
			expect(code(() => checkCcelReplay(log, rtmrs(name)))).toBe("none");
		});

	it("GKE's log has EV_NO_ACTION events, which are not extended", () => {
		const log = parseCcel(coco("ccel-grub-gke.bin"));
		expect(log.events.some((e) => e.type === 3)).toBe(true);
	});

	it("claims: td-shim's kernel, authenticated command line; OVMF's kernel, initrd, LoadOptions digest", () => {
		const td = ccelClaims(parseCcel(coco("ccel-td-shim.bin")));
		expect(td.ccel_kernel).toBe(
			"5b7aa6572f649714ff00b6a2b9170516a068fd1a0ba72aa8de27574131d454e6396d3bfa1727d9baf421618a942977fa",
		);
		expect(td.ccel_kernel_parameters).toBe("root=/dev/vda1 console=hvc0 rw");
		expect(td.ccel_kernel_parameters_digest).toBe(
			"64ed1e5a47e8632f80faf428465bd987af3e8e4ceb10a5a9f387b6302e30f4993bded2331f0691c4a38ad34e4cbbc627",
		);
		expect(td.ccel_events).toHaveLength(5);
		expect(td.ccel_events[3]).toBe(
			"rtmr1 EV_EFI_PLATFORM_FIRMWARE_BLOB2 5b7aa6572f649714ff00b6a2b9170516a068fd1a0ba72aa8de27574131d454e6396d3bfa1727d9baf421618a942977fa td_payload",
		);
		const ovmf = ccelClaims(parseCcel(coco("ccel-ovmf.bin")));
		expect(ovmf.ccel_kernel).toBe(
			"a2ccae1e7d6c668ca325bb09c882d8ce44d26d714ba6f58d2e8083fe291a704646afe24a2368bca3341728d78ec80a80",
		);
		expect(ovmf.ccel_initrd).toBe(
			"b15af9286108d3d8c9f794a51409e55bad6334f5d96a1e4469f8df2d75fd69aac648d939e13daf6800e82e6c1f6628c4",
		);
		expect(ovmf.ccel_kernel_parameters).toBe("");
		expect(ovmf.ccel_kernel_parameters_digest).toBe(
			"4230f84885a6f3f305e91a1955045398bd9edd8ffd2aaf2aab8ad3ac53476c4ac82a3675ef559c4ae949a06e84119fc2",
		);
		expect(ovmf.ccel_events).toContain(
			"rtmr1 EV_EFI_BOOT_SERVICES_APPLICATION a2ccae1e7d6c668ca325bb09c882d8ce44d26d714ba6f58d2e8083fe291a704646afe24a2368bca3341728d78ec80a80 kernel",
		);
		const grub = ccelClaims(parseCcel(coco("ccel-grub.bin")));
		expect(grub.ccel_events).toContain(
			"rtmr1 EV_EFI_BOOT_SERVICES_APPLICATION 4f19471151fc7bd44bc3a2a6ca875617d6b87b62bf65c32d64f1ef8822e51f7a9c8e50a682811f95741a62f96047ec7b \\EFI\\ubuntu\\grubx64.efi",
		);
		for (const e of grub.ccel_events)
			expect(e).toMatch(/^rtmr[0-3] \S+ [0-9a-f]{96}( [\x20-\x7e]+)?$/);
	});

	it("a command line whose text does not hash to the digest is not claimed", () => {
		const b = Buffer.from(coco("ccel-td-shim.bin"));
		const at = b.indexOf("root=/dev/vda1");
		b[at] = "R".charCodeAt(0);
		const c = ccelClaims(parseCcel(b));
		expect(c.ccel_kernel_parameters).toBe("");
		expect(c.ccel_kernel_parameters_digest).not.toBe("");
	});

	it("a tampered event digest, a dropped event or an added event → EVENTLOG_MISMATCH", () => {
		for (const name of Object.keys(SAMPLES)) {
			const log = parseCcel(coco(name));
			const e = log.events.find(
				(x) => x.type !== 3,
			) as (typeof log.events)[number];
			const d = e.digests[0]?.digest as Buffer;
			d[7] = (d[7] as number) ^ 1;
			expect(code(() => checkCcelReplay(log, rtmrs(name)))).toBe(
				"EVENTLOG_MISMATCH",
			);
		}
		// bytes flipped in the serialized log's first measured digest
		const b = Buffer.from(coco("ccel-ovmf.bin"));
		const first = parseCcel(b).events[0]?.digests[0]?.digest as Buffer;
		const off = b.indexOf(first);
		b[off + 10] = (b[off + 10] as number) ^ 0x40;
		expect(
			code(() => checkCcelReplay(parseCcel(b), rtmrs("ccel-ovmf.bin"))),
		).toBe("EVENTLOG_MISMATCH");
		const log = parseCcel(coco("ccel-ovmf.bin"));
		log.events.splice(3, 1);
		expect(code(() => checkCcelReplay(log, rtmrs("ccel-ovmf.bin")))).toBe(
			"EVENTLOG_MISMATCH",
		);
		// the event data is not measured by itself: relabelling does not change the replay
		const relabel = parseCcel(coco("ccel-ovmf.bin"));
		const wrong = rtmrs("ccel-ovmf.bin");
		(wrong[3] as Buffer)[0] = 1;
		expect(code(() => checkCcelReplay(relabel, wrong))).toBe(
			"EVENTLOG_MISMATCH",
		);
	});
});

describe("CC event log: structure and bounds", () => {
	it("every truncation of a real log parses as a prefix or is EVIDENCE_INVALID", () => {
		const b = coco("ccel-ovmf.bin");
		for (let n = 0; n < b.length; n++) {
			const c = code(() => parseCcel(b.subarray(0, n)));
			expect(["none", "EVIDENCE_INVALID"]).toContain(c);
			if (n < 40) expect(c).toBe("EVIDENCE_INVALID");
		}
	});

	it("refuses: a first event that is not Spec ID, no SHA-384, unknown digest algorithms, oversized counts, other registers", () => {
		const spec = specIdEvent();
		const ev = (o: Partial<Parameters<typeof eventBytes>[0]> = {}) =>
			eventBytes({ index: 1, type: 0xd, data: Buffer.from("x"), ...o });
		expect(code(() => parseCcel(Buffer.concat([spec, ev()])))).toBe("none");
		expect(code(() => parseCcel(ev()))).toBe("EVIDENCE_INVALID");
		expect(code(() => parseCcel(specIdEvent([[0x000b, 32]])))).toBe(
			"EVIDENCE_INVALID",
		);
		expect(code(() => parseCcel(specIdEvent([[0x000c, 32]])))).toBe(
			"EVIDENCE_INVALID",
		);
		const badAlg = ev();
		badAlg.writeUInt16LE(0x000b, 12);
		expect(code(() => parseCcel(Buffer.concat([spec, badAlg])))).toBe(
			"EVIDENCE_INVALID",
		);
		const many = ev();
		many.writeUInt32LE(2, 8);
		expect(code(() => parseCcel(Buffer.concat([spec, many])))).toBe(
			"EVIDENCE_INVALID",
		);
		const long = ev();
		long.writeUInt32LE(0xffffffff, long.length - 5);
		expect(code(() => parseCcel(Buffer.concat([spec, long])))).toBe(
			"EVIDENCE_INVALID",
		);
		for (const index of [0, 5, 0xffff])
			expect(
				code(() => replayCcel(parseCcel(Buffer.concat([spec, ev({ index })])))),
			).toBe("EVIDENCE_INVALID");
		// an EV_NO_ACTION event for register 0 is allowed (never extended)
		expect(
			code(() =>
				replayCcel(parseCcel(Buffer.concat([spec, ev({ index: 0, type: 3 })]))),
			),
		).toBe("none");
		expect(
			code(() => parseCcel(Buffer.concat([spec, Buffer.from([1, 2, 3])]))),
		).toBe("EVIDENCE_INVALID");
		expect(
			code(() => parseCcel(Buffer.concat([spec, Buffer.from([0xff, 0xff])]))),
		).toBe("none");
	});

	it("the attestation agent's own header (zero signature, version 0, SHA-384 and SM3) with AAEL-style events and its end flag", () => {
		// The layout guest-components writes when there is no firmware CCEL (attester/src/utils.rs
		// EL_HEADER): index 0, EV_NO_ACTION, zero SHA-1 digest, 37 bytes: zero signature, class 0,
		// version 0.0, errata 0, uintn 0, two algorithms (SHA-384/48, SM3/32), no vendor data.
		const spec = Buffer.alloc(37);
		spec.writeUInt32LE(2, 24);
		spec.writeUInt16LE(0x000c, 28);
		spec.writeUInt16LE(48, 30);
		spec.writeUInt16LE(0x0012, 32);
		spec.writeUInt16LE(32, 34);
		const head = Buffer.concat([
			Buffer.from([0, 0, 0, 0, 3, 0, 0, 0]),
			Buffer.alloc(20),
			Buffer.from([37, 0, 0, 0]),
			spec,
		]);
		expect(head.length).toBe(69);
		const aael = eventBytes({
			index: 4,
			type: 6,
			data: taggedData("kbs:///default/x/y get-resource"),
		});
		const log = parseCcel(Buffer.concat([head, aael, Buffer.alloc(8, 0xff)]));
		expect(log.algorithms.get(0x12)).toBe(32);
		expect(log.events).toHaveLength(1);
		expect(ccelClaims(log).ccel_events[0]).toMatch(
			/^rtmr3 EV_EVENT_TAG [0-9a-f]{96} kbs:/,
		);
		// a zero signature with version 2 is accepted too; a wrong non-zero signature is not
		const wrong = Buffer.from(head);
		wrong[32] = 0x41;
		expect(code(() => parseCcel(wrong))).toBe("EVIDENCE_INVALID");
	});

	it("property: random bytes, and random bytes after a valid Spec ID event, are parsed or EVIDENCE_INVALID", () => {
		const spec = specIdEvent([
			[0x000c, 48],
			[0x000b, 32],
		]);
		fc.assert(
			fc.property(
				fc.boolean(),
				fc.uint8Array({ maxLength: 600 }),
				(prefix, bytes) => {
					const b = prefix
						? Buffer.concat([spec, Buffer.from(bytes)])
						: Buffer.from(bytes);
					try {
						const log = parseCcel(b);
						ccelClaims(log);
						replayCcel(log);
					} catch (e) {
						expect((e as DadiError).code).toBe("EVIDENCE_INVALID");
					}
				},
			),
			{ numRuns: 1500 },
		);
	});

	it("property: byte mutations of real logs never throw anything but EVIDENCE_INVALID or EVENTLOG_MISMATCH, and never replay to the same RTMRs when a measured digest changed", () => {
		const names = Object.keys(SAMPLES);
		fc.assert(
			fc.property(
				fc.constantFrom(...names),
				fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), {
					minLength: 1,
					maxLength: 4,
				}),
				(name, flips) => {
					const b = Buffer.from(coco(name));
					for (const [at, x] of flips)
						b[at % b.length] = (b[at % b.length] as number) ^ x;
					const measured = (x: Buffer) =>
						parseCcel(x)
							.events.filter((e) => e.type !== 3)
							.map(
								(e) =>
									`${e.index}:${e.digests.map((d) => d.digest.toString("hex"))}`,
							)
							.join(",");
					try {
						const log = parseCcel(b);
						ccelClaims(log);
						checkCcelReplay(log, rtmrs(name));
						// it replayed: then every measured digest is the original's
						expect(measured(b)).toBe(measured(coco(name)));
					} catch (e) {
						expect([
							"EVIDENCE_INVALID",
							"EVENTLOG_MISMATCH",
							"EVIDENCE_UNSUPPORTED",
						]).toContain((e as DadiError).code);
					}
				},
			),
			{ numRuns: 800 },
		);
	});

	it("property: synthetic logs replay to their registers and summaries are printable", () => {
		fc.assert(
			fc.property(
				fc.array(
					fc.record({
						index: fc.integer({ min: 1, max: 4 }),
						type: fc.constantFrom(
							3,
							4,
							6,
							0xd,
							0x80000003,
							0x80000007,
							0x8000000a,
							0x800000e0,
							0x12345,
						),
						data: fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
					}),
					{ maxLength: 20 },
				),
				(events) => {
					const s = syntheticCcel(events);
					const log = parseCcel(s.log);
					expect(log.events).toHaveLength(events.length);
					expect(code(() => checkCcelReplay(log, s.rtmrs))).toBe("none");
					expect(code(() => ccelClaims(log))).toBe("none");
					for (const e of log.events)
						expect(eventSummary(e)).toMatch(/^[\x20-\x7e]*$/);
				},
			),
			{ numRuns: 200 },
		);
	});

	it("a log with more measured events than the token can carry → EVIDENCE_UNSUPPORTED, never a partial list", () => {
		const many = (n: number) =>
			syntheticCcel(
				Array.from({ length: n }, (_, i) => ({
					index: 4,
					type: 0xd,
					data: Buffer.from(`event ${i}`),
				})),
			).log;
		expect(code(() => ccelClaims(parseCcel(many(30))))).toBe("none");
		expect(code(() => ccelClaims(parseCcel(many(200))))).toBe(
			"EVIDENCE_UNSUPPORTED",
		);
	});

	it("derived claims from synthetic events: labels name the digests", () => {
		const s = syntheticCcel([
			{ index: 2, type: 0x80000003, data: Buffer.alloc(32) },
			{ index: 3, type: 6, data: taggedData("LOADED_IMAGE::LoadOptions") },
			{
				index: 3,
				type: 6,
				data: taggedData("Linux initrd"),
				digest: Buffer.alloc(48, 0xa1),
			},
		]);
		const c = ccelClaims(parseCcel(s.log));
		expect(c.ccel_initrd).toBe("a1".repeat(48));
		expect(c.ccel_kernel).toMatch(/^[0-9a-f]{96}$/);
		expect(c.ccel_events[2]).toBe(
			`rtmr2 EV_EVENT_TAG ${"a1".repeat(48)} Linux initrd`,
		);
	});
});

describe("TDX evidence document: cc_eventlog", () => {
	it("quote and optional cc_eventlog (base64 or null); nothing else", () => {
		expect(
			parseTdxEvidenceDocument({ quote: "AAEC", cc_eventlog: null }),
		).toEqual({
			quote: Buffer.from([0, 1, 2]),
		});
		expect(
			parseTdxEvidenceDocument({ quote: "AAEC", cc_eventlog: "AQID" })
				.ccEventlog,
		).toEqual(Buffer.from([1, 2, 3]));
		for (const ev of [
			{ quote: "AAEC", cc_eventlog: "x" },
			{ quote: "AAEC", cc_eventlog: 5 },
			{ quote: "AAEC", cc_eventlog: "" },
			{ quote: "AAEC", aa_eventlog: "AQID" },
			{ quote: "" },
		])
			expect(code(() => parseTdxEvidenceDocument(ev))).toBe("EVIDENCE_INVALID");
	});
});

const TDX = `${attestationFixtures()}tdx/`;
const HAVE_TDX = existsSync(`${TDX}debug-td-quote-v4.dat`);
if (!HAVE_TDX)
	console.warn(
		`\n*** TDX CCEL REAL-QUOTE TESTS SKIPPED: ${TDX} not found (set DADI_FIXTURES) ***\n`,
	);
/** Inside the debug TD quote's PCK chain validity. */
const SPR_NOW = new Date("2023-06-20T00:00:00Z");

describe.skipIf(!HAVE_TDX)(
	"the TDX Verifier with a CC event log (real quote)",
	() => {
		const quote = () => readFileSync(`${TDX}debug-td-quote-v4.dat`);
		const reportData = () => parseQuote(quote()).body.reportData;

		it("without a log: ccel_present false and empty ccel_* claims", async () => {
			const c = await tdxVerifier().verify({
				evidence: { quote: quote().toString("base64"), cc_eventlog: null },
				expectedReportData: reportData(),
				now: SPR_NOW,
			});
			expect(c.tee_specific.ccel_present).toBe(false);
			expect(c.tee_specific.ccel_events).toEqual([]);
			expect(c.tee_specific.ccel_kernel).toBe("");
		});

		it("a log that is not this TD's → EVENTLOG_MISMATCH; a malformed log → EVIDENCE_INVALID", async () => {
			const v = tdxVerifier();
			const run = (log: Buffer) =>
				codeAsync(
					v.verify({
						evidence: {
							quote: quote().toString("base64"),
							cc_eventlog: log.toString("base64"),
						},
						expectedReportData: reportData(),
						now: SPR_NOW,
					}),
				);
			expect(await run(coco("ccel-td-shim.bin"))).toBe("EVENTLOG_MISMATCH");
			expect(await run(coco("ccel-td-shim.bin").subarray(0, 30))).toBe(
				"EVIDENCE_INVALID",
			);
		});

		it("a flipped RTMR in the quote → SIGNATURE_INVALID (the quote is verified before the log is replayed)", async () => {
			const q = Buffer.from(quote());
			q[0x30 + 328] = (q[0x30 + 328] as number) ^ 1;
			expect(
				await codeAsync(
					tdxVerifier().verify({
						evidence: {
							quote: q.toString("base64"),
							cc_eventlog: coco("ccel-td-shim.bin").toString("base64"),
						},
						expectedReportData: reportData(),
						now: SPR_NOW,
					}),
				),
			).toBe("SIGNATURE_INVALID");
		});
	},
);

describe("the TDX Verifier with a CC event log (synthetic signed quote)", () => {
	it("verifies when the log replays to the quote's RTMRs; a flipped digest byte in the log → EVENTLOG_MISMATCH; a flipped quote byte → SIGNATURE_INVALID", async () => {
		const { syntheticQuote, syntheticTdxPlatform } = await import(
			"./attest/tdx-synthetic.js"
		);
		const p = syntheticTdxPlatform();
		const s = syntheticCcel([
			{ index: 2, type: 0x80000003, data: Buffer.alloc(40, 1) },
			{ index: 3, type: 6, data: taggedData("Linux initrd") },
			{ index: 4, type: 0xd, data: Buffer.from("runtime event") },
		]);
		const rd = Buffer.alloc(48, 9);
		const quote = syntheticQuote(p, { reportData: rd, rtmrs: s.rtmrs });
		const v = tdxVerifier({ trust: p.trust });
		const run = (q: Buffer, log: Buffer) =>
			v.verify({
				evidence: {
					quote: q.toString("base64"),
					cc_eventlog: log.toString("base64"),
				},
				expectedReportData: rd,
				now: new Date(),
			});
		const c = await run(quote, s.log);
		expect(c.tee_specific.ccel_present).toBe(true);
		expect(c.tee_specific.ccel_events).toHaveLength(3);
		expect(c.tee_specific.rtmr3).toBe((s.rtmrs[3] as Buffer).toString("hex"));
		const log = parseCcel(s.log);
		for (const e of log.events) {
			const d = e.digests[0]?.digest as Buffer;
			const bad = Buffer.from(s.log);
			const at = bad.indexOf(d);
			bad[at + 20] = (bad[at + 20] as number) ^ 4;
			expect(await codeAsync(run(quote, bad))).toBe("EVENTLOG_MISMATCH");
		}
		const q2 = Buffer.from(quote);
		q2[48 + 328 + 48 + 5] = (q2[48 + 328 + 48 + 5] as number) ^ 1; // RTMR1
		expect(await codeAsync(run(q2, s.log))).toBe("SIGNATURE_INVALID");
		// under Intel's root only
		expect(
			await codeAsync(
				tdxVerifier().verify({
					evidence: {
						quote: quote.toString("base64"),
						cc_eventlog: s.log.toString("base64"),
					},
					expectedReportData: rd,
					now: new Date(),
				}),
			),
		).toBe("CHAIN_UNTRUSTED");
	});
});
