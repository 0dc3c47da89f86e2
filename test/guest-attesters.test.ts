/**
 * Guest-side attesters on fake devices: configfs-tsm (a plain directory played by test/attest/
 * fake-tsm.ts), the /dev/sev-guest ioctl's bytes (pure; the device itself is untested here), the
 * SEV-SNP and TDX evidence builders, report_data placement and `auto` detection.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { chooseAttester } from "../src/attest/attester.js";
import { detectTee } from "../src/attest/detect.js";
import { reportDataField } from "../src/attest/report-data-field.js";
import {
	decodeExitInfo2,
	decodeReportResponse,
	encodeGuestRequest,
	encodeReportRequest,
	SNP_GET_REPORT,
} from "../src/attest/sev-guest-ioctl.js";
import { parseSnpEvidence } from "../src/attest/snp/verifier.js";
import { snpTsmAttester } from "../src/attest/snp-attester.js";
import { snpEvidence } from "../src/attest/snp-evidence.js";
import { parseQuote } from "../src/attest/tdx/quote.js";
import { parseTdxEvidence } from "../src/attest/tdx/verifier.js";
import { tdxTsmAttester } from "../src/attest/tdx-attester.js";
import {
	parseGeneration,
	parseProvider,
	tsmReport,
} from "../src/attest/tsm-report.js";
import { DadiError, type ErrorCode } from "../src/errors.js";
import { reportDataDigest } from "../src/kbs/report-data.js";
import { certTable } from "./attest/cert-table.js";
import { type FakeTsm, startFakeTsm } from "./attest/fake-tsm.js";
import { attestationFixtures } from "./fixtures.js";
import { cleanupTempDirs, tempDir } from "./helpers.js";

const fakes: FakeTsm[] = [];
afterAll(async () => {
	for (const f of fakes) f.stop();
	await cleanupTempDirs();
});

/** A fake SEV-SNP outblob: REPORT_DATA at 0x50 echoes the inblob, the rest a marker. */
function fakeSnpReport(inblob: Buffer): Buffer {
	const r = Buffer.alloc(0x4a0, 0xee);
	r.fill(0, 0x50, 0x90);
	inblob.copy(r, 0x50);
	return r;
}

async function fake(
	provider: string,
	produce: Parameters<typeof startFakeTsm>[0]["produce"],
): Promise<FakeTsm> {
	const f = startFakeTsm({ provider, produce, root: await tempDir() });
	fakes.push(f);
	return f;
}

async function code(p: Promise<unknown>): Promise<ErrorCode | "ok" | "other"> {
	try {
		await p;
		return "ok";
	} catch (e) {
		return e instanceof DadiError ? e.code : "other";
	}
}

const digest = reportDataDigest({
	nonce: "n-1",
	teePubKey: { kty: "EC", crv: "P-256", x: "x", y: "y" },
});

describe("report_data placement", () => {
	it("puts the KBS digest at the start of the 64-byte field, zero-padded", () => {
		const f = reportDataField(digest);
		expect(f.length).toBe(64);
		expect(f.subarray(0, 48)).toEqual(digest);
		expect(f.subarray(48)).toEqual(Buffer.alloc(16));
		expect(() => reportDataField(Buffer.alloc(65))).toThrow(DadiError);
		expect(() => reportDataField(Buffer.alloc(0))).toThrow(DadiError);
	});
});

describe("configfs-tsm", () => {
	it("writes inblob, reads outblob and auxblob, and removes its directory", async () => {
		const aux = certTable({ vcek: Buffer.from("vcek-der") });
		const f = await fake("sev_guest", (inblob) => ({
			outblob: fakeSnpReport(inblob),
			auxblob: aux,
		}));
		const inblob = reportDataField(digest);
		const r = await tsmReport({ root: f.root, inblob, aux: true });
		expect(r.provider).toBe("sev_guest");
		expect(r.outblob.subarray(0x50, 0x90)).toEqual(inblob);
		expect(r.auxblob).toEqual(aux);
		expect(f.seen).toEqual([inblob]);
		expect(readdirSync(f.root)).toEqual([]);
	});

	it("writes privlevel when asked, counting it as a write", async () => {
		let level: number | undefined;
		const f = await fake("sev_guest", (inblob, privlevel) => {
			level = privlevel;
			return { outblob: fakeSnpReport(inblob) };
		});
		const r = await tsmReport({
			root: f.root,
			inblob: Buffer.alloc(64, 1),
			privlevel: 2,
		});
		expect(level).toBe(2);
		expect(r.auxblob).toBeUndefined();
	});

	it("retries in a new directory when another writer raced it, and gives up after the attempts", async () => {
		const f = await fake("sev_guest", (inblob) => ({
			outblob: fakeSnpReport(inblob),
		}));
		f.raceNext = 1;
		const r = await tsmReport({ root: f.root, inblob: Buffer.alloc(64, 2) });
		expect(r.outblob.length).toBe(0x4a0);
		expect(f.dirs.size).toBe(2);
		f.raceNext = 5;
		expect(
			await code(
				tsmReport({ root: f.root, inblob: Buffer.alloc(64, 3), attempts: 2 }),
			),
		).toBe("IO");
		expect(readdirSync(f.root)).toEqual([]);
	});

	it("refuses a provider other than the one wanted, an unknown one, and a missing root", async () => {
		const f = await fake("tdx_guest", (inblob) => ({ outblob: inblob }));
		expect(
			await code(
				tsmReport({
					root: f.root,
					inblob: Buffer.alloc(64),
					provider: "sev_guest",
				}),
			),
		).toBe("USAGE");
		const g = await fake("arm_cca_guest", (inblob) => ({ outblob: inblob }));
		expect(
			await code(tsmReport({ root: g.root, inblob: Buffer.alloc(64) })),
		).toBe("FORMAT_UNSUPPORTED");
		expect(
			await code(
				tsmReport({ root: join(f.root, "absent"), inblob: Buffer.alloc(64) }),
			),
		).toBe("INPUT_NOT_FOUND");
	});

	it("times out (IO) when nothing plays the kernel", async () => {
		const root = await tempDir();
		expect(
			await code(tsmReport({ root, inblob: Buffer.alloc(64), waitMs: 50 })),
		).toBe("INPUT_NOT_FOUND"); // no provider attribute ever appears
		expect(readdirSync(root)).toEqual([]);
	});

	it("parses provider and generation attributes, refusing anything else (property)", () => {
		expect(parseProvider("sev_guest\n")).toBe("sev_guest");
		expect(parseProvider("tdx_guest\n")).toBe("tdx_guest");
		expect(parseGeneration("12\n")).toBe(12);
		fc.assert(
			fc.property(fc.string({ maxLength: 64 }), (s) => {
				for (const f of [parseProvider, parseGeneration]) {
					try {
						f(s);
					} catch (e) {
						expect(e).toBeInstanceOf(DadiError);
					}
				}
			}),
		);
		fc.assert(
			fc.property(fc.nat(), (n) => {
				expect(parseGeneration(`${n}\n`)).toBe(n);
			}),
		);
	});
});

describe("/dev/sev-guest SNP_GET_REPORT bytes", () => {
	it("has the ioctl number _IOWR('S', 0, 32 bytes) and the kernel's struct layouts", () => {
		expect(SNP_GET_REPORT).toBe(0xc0205300);
		const req = encodeReportRequest(Buffer.alloc(64, 7), 1);
		expect(req.length).toBe(96);
		expect(req.subarray(0, 64)).toEqual(Buffer.alloc(64, 7));
		expect(req.readUInt32LE(64)).toBe(1);
		expect(req.subarray(68)).toEqual(Buffer.alloc(28));
		const arg = encodeGuestRequest(0x1122334455667788n, 0x99aabbccddeeff00n);
		expect(arg.length).toBe(32);
		expect(arg[0]).toBe(1);
		expect(arg.subarray(1, 8)).toEqual(Buffer.alloc(7));
		expect(arg.readBigUInt64LE(8)).toBe(0x1122334455667788n);
		expect(arg.readBigUInt64LE(16)).toBe(0x99aabbccddeeff00n);
		arg.writeUInt32LE(0x16, 24);
		arg.writeUInt32LE(0x2, 28);
		expect(decodeExitInfo2(arg)).toEqual({ fwError: 0x16, vmmError: 2 });
		expect(() => encodeReportRequest(Buffer.alloc(63), 0)).toThrow(DadiError);
		expect(() => encodeReportRequest(Buffer.alloc(64), 4)).toThrow(DadiError);
	});

	it("takes the 1184-byte report at offset 32 of a status-0 response", () => {
		const resp = Buffer.alloc(4000);
		resp.writeUInt32LE(0, 0);
		resp.writeUInt32LE(0x4a0, 4);
		const report = Buffer.alloc(0x4a0, 0xab);
		report.copy(resp, 32);
		expect(decodeReportResponse(resp)).toEqual(report);
		const bad = Buffer.from(resp);
		bad.writeUInt32LE(0x16, 0);
		expect(() => decodeReportResponse(bad)).toThrow(/status 0x16/);
		const size = Buffer.from(resp);
		size.writeUInt32LE(0x4a1, 4);
		expect(() => decodeReportResponse(size)).toThrow(DadiError);
	});

	it("decodes any response bytes to a report or a DadiError (property)", () => {
		fc.assert(
			fc.property(
				fc.uint8Array({ maxLength: 4000 }),
				fc.boolean(),
				(bytes, plausible) => {
					const b = Buffer.from(bytes);
					if (plausible && b.length >= 8) {
						b.writeUInt32LE(0, 0);
						b.writeUInt32LE(0x4a0, 4);
					}
					try {
						const r = decodeReportResponse(b);
						expect(r.length).toBe(0x4a0);
						expect(r).toEqual(b.subarray(32, 32 + 0x4a0));
					} catch (e) {
						expect(e).toBeInstanceOf(DadiError);
					}
				},
			),
		);
	});
});

describe("SEV-SNP evidence", () => {
	it("is what the broker's parser reads: the report and the host's certificate table", async () => {
		const table = certTable({
			vcek: Buffer.from("v"),
			ask: Buffer.from("a"),
			ark: Buffer.from("r"),
		});
		const f = await fake("sev_guest", (inblob) => ({
			outblob: fakeSnpReport(inblob),
			auxblob: table,
		}));
		const ev = await snpTsmAttester(f.root).evidence(digest);
		const parsed = parseSnpEvidence(JSON.parse(JSON.stringify(ev)));
		expect(parsed.report.subarray(0x50, 0x90)).toEqual(reportDataField(digest));
		expect(parsed.certs).toEqual({
			vcek: Buffer.from("v"),
			ask: Buffer.from("a"),
			ark: Buffer.from("r"),
		});
	});

	it("refuses a report of the wrong size, a stale REPORT_DATA, and a malformed certificate table", () => {
		const rd = reportDataField(digest);
		expect(() =>
			snpEvidence({ report: Buffer.alloc(100), reportData: rd }),
		).toThrow(/not a 1184-byte report/);
		expect(() =>
			snpEvidence({ report: fakeSnpReport(Buffer.alloc(64)), reportData: rd }),
		).toThrow(/stale or foreign/);
		expect(() =>
			snpEvidence({
				report: fakeSnpReport(rd),
				reportData: rd,
				certTable: Buffer.alloc(10, 1),
			}),
		).toThrow(DadiError);
		expect(snpEvidence({ report: fakeSnpReport(rd), reportData: rd })).toEqual({
			report: fakeSnpReport(rd).toString("base64"),
		});
	});
});

const TDX_QUOTE = join(attestationFixtures(), "tdx", "spr-e4-quote-v4.dat");

describe("TDX evidence through configfs-tsm", () => {
	it.skipIf(!existsSync(TDX_QUOTE))(
		"is Trustee's {cc_eventlog, quote} as the broker's parser reads it, and a quote for other report_data is refused",
		async () => {
			const quote = readFileSync(TDX_QUOTE);
			const theirs = parseQuote(quote).body.reportData;
			const f = await fake("tdx_guest", () => ({ outblob: quote }));
			const ev = await tdxTsmAttester(f.root, {
				ccel: "/nonexistent/CCEL",
			}).evidence(theirs);
			expect(ev).toMatchObject({ cc_eventlog: null });
			expect(Object.keys(ev as object)).toEqual(["cc_eventlog", "quote"]);
			expect(parseTdxEvidence(ev)).toEqual(quote);
			expect(f.seen[0]).toEqual(theirs);
			expect(await code(tdxTsmAttester(f.root).evidence(digest))).toBe(
				"EVIDENCE_INVALID",
			);
		},
	);
});

describe("--attester auto", () => {
	it("finds the configfs-tsm provider first, then guest devices, and refuses when there is none", async () => {
		const snp = await fake("sev_guest", (inblob) => ({
			outblob: fakeSnpReport(inblob),
		}));
		expect(await detectTee({ tsmRoot: snp.root, devices: [] })).toEqual({
			tee: "snp",
			via: "configfs-tsm",
		});
		expect(readdirSync(snp.root)).toEqual([]);
		const tdx = await fake("tdx_guest", (inblob) => ({ outblob: inblob }));
		expect((await detectTee({ tsmRoot: tdx.root, devices: [] }))?.tee).toBe(
			"tdx",
		);
		const dir = await tempDir();
		const dev = join(dir, "sev-guest");
		await writeFile(dev, "");
		expect(
			await detectTee({
				tsmRoot: join(dir, "none"),
				devices: [{ tee: "snp", path: dev }],
			}),
		).toEqual({ tee: "snp", via: dev });
		expect(
			await detectTee({ tsmRoot: join(dir, "none"), devices: [] }),
		).toBeUndefined();
		const a = await chooseAttester("auto", { tsmRoot: snp.root, devices: [] });
		expect(a.tee).toBe("snp");
		const ev = (await a.evidence(digest)) as { report: string };
		expect(Buffer.from(ev.report, "base64").subarray(0x50, 0x80)).toEqual(
			digest,
		);
		expect(
			await code(
				chooseAttester("auto", { tsmRoot: join(dir, "none"), devices: [] }),
			),
		).toBe("USAGE");
		expect(await code(chooseAttester("sgx"))).toBe("USAGE");
		expect(
			await code(chooseAttester("tdx", { tsmRoot: join(dir, "none") })),
		).toBe("USAGE");
	});
});
