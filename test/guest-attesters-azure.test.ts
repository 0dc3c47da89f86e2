/**
 * The Azure vTPM attesters (az-snp-vtpm, az-tdx-vtpm) against swtpm provisioned like an Azure CVM's
 * vTPM (AK at 0x81000003, a synthetic HCL report at NV 0x01400001) and a local stand-in for IMDS.
 * Structural: the evidence has Trustee's v2 shape, the TPM quote verifies with the AK's public key
 * (node:crypto) and its qualifying data is the report_data; the broker-side verifier is elsewhere.
 * The HCL report is synthetic and static (no paravisor refreshes it), so its user-data is not checked.
 * Also property tests of the HCL report and TPMS_ATTEST parsers.
 */
import { createVerify } from "node:crypto";
import { createServer, type Server } from "node:http";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chooseAttester } from "../src/attest/attester.js";
import {
	AK_HANDLE,
	azSnpVtpmAttester,
	azTdxVtpmAttester,
	detectAzure,
	REPORT_DATA_NV_INDEX,
} from "../src/attest/az-attester.js";
import { HCL_FIXED_SIZE, parseHclReport } from "../src/attest/hcl-report.js";
import { parseTpmsAttestQuote } from "../src/attest/tpm-quote.js";
import { nvRead, tpmQuote } from "../src/attest/tpm2-tools.js";
import { DadiError } from "../src/errors.js";
import { reportDataDigest } from "../src/kbs/report-data.js";
import { syntheticLeaf } from "./attest/snp-synthetic.js";
import { haveSwtpm, type Swtpm, startSwtpm } from "./attest/swtpm.js";

const HAVE = haveSwtpm();
const HCL_NV = 0x01400001;

/** A synthetic HCL report: header, a hardware report of `type`, request data and JSON var data. */
function hclReport(type: 2 | 4, fill: number): Buffer {
	const varData = Buffer.from(
		JSON.stringify({
			keys: [{ kid: "HCLAkPub", kty: "RSA" }],
			"user-data": "00",
		}),
	);
	const b = Buffer.alloc(HCL_FIXED_SIZE + varData.length);
	b.write("HCLA", 0, "latin1");
	b.writeUInt32LE(2, 4);
	b.writeUInt32LE(b.length, 8);
	b.fill(fill, 32, 32 + 1184);
	const rd = 32 + 1184;
	b.writeUInt32LE(20 + varData.length, rd);
	b.writeUInt32LE(1, rd + 4);
	b.writeUInt32LE(type, rd + 8);
	b.writeUInt32LE(1, rd + 12);
	b.writeUInt32LE(varData.length, rd + 16);
	varData.copy(b, HCL_FIXED_SIZE);
	return b;
}

const fromB64UrlPadded = (s: string) => {
	expect(s).toMatch(/^[A-Za-z0-9_-]*={0,2}$/);
	expect(s.length % 4).toBe(0);
	return Buffer.from(s, "base64url");
};

let tpm: Swtpm | undefined;
let imds: Server | undefined;
let imdsUrl = "";
const tdReports: Buffer[] = [];
const TD_QUOTE = Buffer.from("a synthetic TD quote \u00ff\u00fe", "latin1");
const digest = reportDataDigest({
	nonce: "az-nonce",
	teePubKey: { kty: "EC", crv: "P-256", x: "x", y: "y" },
});

beforeAll(async () => {
	if (!HAVE) return;
	tpm = await startSwtpm();
	const leaf = syntheticLeaf();
	const pem = `-----BEGIN CERTIFICATE-----\n${leaf.der.toString("base64").replace(/(.{64})/g, "$1\n")}\n-----END CERTIFICATE-----\n`;
	imds = createServer((req, res) => {
		let body = "";
		req.on("data", (c) => {
			body += c;
		});
		req.on("end", () => {
			if (req.headers.metadata !== "true") {
				res.writeHead(400).end();
				return;
			}
			if (
				req.method === "GET" &&
				req.url === "/metadata/THIM/amd/certification"
			) {
				res.writeHead(200, { "content-type": "application/json" });
				res.end(
					JSON.stringify({ vcekCert: pem, certificateChain: "", tcbm: "x" }),
				);
			} else if (req.method === "POST" && req.url === "/acc/tdquote") {
				tdReports.push(Buffer.from(JSON.parse(body).report, "base64url"));
				res.writeHead(200, { "content-type": "application/json" });
				res.end(JSON.stringify({ quote: TD_QUOTE.toString("base64url") }));
			} else res.writeHead(404).end();
		});
	});
	await new Promise<void>((r) => imds?.listen(0, "127.0.0.1", r));
	const a = imds.address();
	imdsUrl = `http://127.0.0.1:${typeof a === "object" && a ? a.port : 0}`;
}, 120_000);

afterAll(async () => {
	tpm?.stop();
	await new Promise((r) => (imds ? imds.close(r) : r(undefined)));
});

function checkQuote(q: { signature: string; message: string; pcrs: string[] }) {
	const message = Buffer.from(q.message, "hex");
	const info = parseTpmsAttestQuote(message);
	expect(info.extraData).toEqual(digest);
	expect(info.selections).toEqual([
		{ hash: 0x000b, pcrs: Array.from({ length: 24 }, (_, i) => i) },
	]);
	expect(q.pcrs).toHaveLength(24);
	for (const p of q.pcrs) expect(p).toMatch(/^[0-9a-f]{64}$/);
	const v = createVerify("sha256");
	v.update(message);
	expect(v.verify(tpm?.akPem as string, Buffer.from(q.signature, "hex"))).toBe(
		true,
	);
	const forged = Buffer.from(message);
	(forged[forged.length - 1] as number) ^= 1;
	expect(
		createVerify("sha256")
			.update(forged)
			.verify(tpm?.akPem as string, Buffer.from(q.signature, "hex")),
	).toBe(false);
}

describe.skipIf(!HAVE)("Azure vTPM attesters on swtpm", () => {
	it("az-snp-vtpm: Trustee's v2 evidence, the quote signed by the AK over the report_data", async () => {
		const t = tpm as Swtpm;
		const hcl = hclReport(2, 0x51);
		t.setNv(HCL_NV, hcl);
		expect(await detectAzure({ tcti: t.tcti })).toBe("az-snp-vtpm");
		const a = await chooseAttester("auto", {
			tsmRoot: "/nonexistent",
			devices: [],
			azure: { tcti: t.tcti, imds: imdsUrl, settleMs: 0 },
		});
		// the KBS protocol's tee name, as Trustee and dadi-broker expect it in the auth request
		expect(a.tee).toBe("azsnpvtpm");
		const ev = JSON.parse(JSON.stringify(await a.evidence(digest)));
		expect(Object.keys(ev).sort()).toEqual([
			"hcl_report",
			"tpm_quote",
			"vcek",
			"version",
		]);
		expect(ev.version).toBe(2);
		expect(Object.keys(ev.tpm_quote).sort()).toEqual([
			"message",
			"pcrs",
			"signature",
		]);
		expect(fromB64UrlPadded(ev.hcl_report)).toEqual(hcl);
		expect(fromB64UrlPadded(ev.vcek)).toEqual(syntheticLeaf().der);
		checkQuote(ev.tpm_quote);
		expect(await nvRead(REPORT_DATA_NV_INDEX, { tcti: t.tcti })).toEqual(
			digest,
		);
	});

	it("az-tdx-vtpm: the TD report goes to IMDS, its quote comes back as td_quote", async () => {
		const t = tpm as Swtpm;
		const hcl = hclReport(4, 0x7d);
		t.setNv(HCL_NV, hcl);
		expect(await detectAzure({ tcti: t.tcti })).toBe("az-tdx-vtpm");
		const ev = JSON.parse(
			JSON.stringify(
				await azTdxVtpmAttester({
					tcti: t.tcti,
					imds: imdsUrl,
					settleMs: 0,
				}).evidence(digest),
			),
		);
		expect(Object.keys(ev).sort()).toEqual([
			"hcl_report",
			"td_quote",
			"tpm_quote",
			"version",
		]);
		expect(fromB64UrlPadded(ev.td_quote)).toEqual(TD_QUOTE);
		expect(tdReports.at(-1)).toEqual(hcl.subarray(32, 32 + 1024));
		checkQuote(ev.tpm_quote);
		// an SEV-SNP attester on a TDX CVM says so
		await expect(
			azSnpVtpmAttester({ tcti: t.tcti, imds: imdsUrl, settleMs: 0 }).evidence(
				digest,
			),
		).rejects.toThrow(/from tdx, not snp/);
	});

	it("a quote is refused unless the tools' output matches what was asked", async () => {
		const t = tpm as Swtpm;
		const q = await tpmQuote(AK_HANDLE, digest, { tcti: t.tcti });
		const { azTpmQuote } = await import("../src/attest/az-evidence.js");
		expect(() => azTpmQuote(q, Buffer.alloc(48))).toThrow(/qualifying data/);
		expect(() =>
			azTpmQuote({ ...q, pcrValues: q.pcrValues.subarray(1) }, digest),
		).toThrow(DadiError);
	});
});

describe("parsers of vTPM bytes (property)", () => {
	it("parseHclReport: a report or a DadiError, never out of bounds", () => {
		expect(parseHclReport(hclReport(2, 1)).type).toBe("snp");
		expect(parseHclReport(hclReport(4, 1)).hwReport.length).toBe(1024);
		fc.assert(
			fc.property(
				fc.uint8Array({ maxLength: 3000 }),
				fc.constantFrom(0, 2, 4, 9),
				fc.nat(5000),
				(bytes, type, varSize) => {
					const b = Buffer.from(bytes);
					if (b.length >= HCL_FIXED_SIZE) {
						b.writeUInt32LE(type, 1216 + 8);
						b.writeUInt32LE(varSize, 1216 + 16);
					}
					try {
						const r = parseHclReport(b);
						expect(r.varData.length).toBe(varSize);
					} catch (e) {
						expect(e).toBeInstanceOf(DadiError);
					}
				},
			),
		);
	});

	it("parseTpmsAttestQuote: a quote or a DadiError", () => {
		fc.assert(
			fc.property(
				fc.uint8Array({ maxLength: 400 }),
				fc.boolean(),
				(bytes, head) => {
					const b = Buffer.from(bytes);
					if (head && b.length >= 6) {
						b.writeUInt32BE(0xff544347, 0);
						b.writeUInt16BE(0x8018, 4);
					}
					try {
						const q = parseTpmsAttestQuote(b);
						expect(q.extraData.length).toBeLessThanOrEqual(64);
					} catch (e) {
						expect(e).toBeInstanceOf(DadiError);
					}
				},
			),
		);
	});
});
