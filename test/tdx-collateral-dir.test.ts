/**
 * TDX collateral in the forms others exchange: a directory of PCS files, dcap-qvl's collateral
 * bundle and Intel PCS Client Tool files (Trustee's file:// source), re-packed in the test from the
 * real PCS responses of the shared fixtures; the report of used and ignored files; missing
 * collateral refused; property tests on arbitrary bundle JSON.
 */
import { existsSync, readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { loadTdxCollateralReport } from "../src/attest/evidence-files.js";
import { rawMemberValue } from "../src/attest/tdx/collateral.js";
import {
	bundleBytes,
	compactJson,
	parseCollateralBundle,
} from "../src/attest/tdx/collateral-bundle.js";
import {
	classifyCollateralFile,
	selectTdxCollateral,
} from "../src/attest/tdx/collateral-dir.js";
import {
	quoteFmspc,
	quotePckCa,
	type TdxCollateral,
	verifyTdx,
} from "../src/attest/tdx/verify.js";
import {
	generateMasterKeyText,
	parseMasterKey,
} from "../src/broker/master-key.js";
import { startBroker } from "../src/broker/server.js";
import { initStateDir } from "../src/broker/state-dir.js";
import { DadiError, type ErrorCode } from "../src/errors.js";
import { ManualGuest, startTestBroker } from "./broker/harness.js";
import { attestationFixtures } from "./fixtures.js";
import { BIN, cleanupTempDirs, runCli, tempDir } from "./helpers.js";

const TDX = join(attestationFixtures(), "tdx");
const HAVE = existsSync(join(TDX, "spr-e4-quote-v4.dat"));
if (!HAVE)
	console.warn(
		`\n*** tdx-collateral-dir: fixtures not found at ${TDX} (set DADI_FIXTURES): SKIPPING the tests on real PCS collateral (bundles, directories, CLI); the pure property tests still run ***\n`,
	);

afterAll(cleanupTempDirs);

const f = (n: string) => readFileSync(join(TDX, n));
const ft = (n: string) => readFileSync(join(TDX, n), "utf8");
const SPR_NOW = new Date("2023-06-25T00:00:00Z");
const FMSPC = "50806f000000";
const V5_FMSPC = "90c06f000000";

function code(fn: () => unknown): ErrorCode | "no error" | "not a DadiError" {
	try {
		fn();
		return "no error";
	} catch (e) {
		if (e instanceof DadiError) return e.code;
		console.error(e);
		return "not a DadiError";
	}
}

async function codeAsync(
	fn: () => Promise<unknown>,
): Promise<{ code: string; message: string }> {
	try {
		await fn();
		return { code: "no error", message: "" };
	} catch (e) {
		if (e instanceof DadiError) return { code: e.code, message: e.message };
		return { code: "not a DadiError", message: String(e) };
	}
}

/** dcap-qvl's QuoteCollateralV3, re-packed from the PCS responses (bytes as hex or arrays). */
function dcapQvlBundle(
	bytes: "hex" | "array" = "hex",
): Record<string, unknown> {
	const tcb = ft("spr-e4-tcbinfo-response.json");
	const qe = ft("qe-identity-response.json");
	const enc = (b: Buffer) => (bytes === "hex" ? b.toString("hex") : [...b]);
	return {
		pck_crl_issuer_chain: ft("pck-crl-issuer-chain.pem"),
		root_ca_crl: enc(f("root-crl.der")),
		pck_crl: enc(f("pck-crl.der")),
		tcb_info_issuer_chain: ft("tcb-signing-chain-2018.pem"),
		tcb_info: rawMemberValue(tcb, "tcbInfo"),
		tcb_info_signature: enc(Buffer.from(JSON.parse(tcb).signature, "hex")),
		qe_identity_issuer_chain: ft("tcb-signing-chain-2018.pem"),
		qe_identity: rawMemberValue(qe, "enclaveIdentity"),
		qe_identity_signature: enc(Buffer.from(JSON.parse(qe).signature, "hex")),
	};
}

/** An Intel PCS Client Tool platform-collaterals file (pretty-printed, URL-encoded chains). */
function pcsClientToolFile(pckCa: "processor" | "platform"): string {
	const crl = f("pck-crl.der").toString("hex");
	const other = "00".repeat(8);
	return JSON.stringify(
		{
			collaterals: {
				tcbinfos: [
					{
						fmspc: V5_FMSPC.toUpperCase(),
						tdx_tcbinfo: JSON.parse(ft("quote-v5-tcbinfo-response.json")),
					},
					{
						fmspc: FMSPC.toUpperCase(),
						tdx_tcbinfo: JSON.parse(ft("spr-e4-tcbinfo-response.json")),
					},
				],
				tdqeidentity: JSON.parse(ft("qe-identity-response.json")),
				pckcacrl: {
					processorCrl: pckCa === "processor" ? crl : other,
					platformCrl: pckCa === "platform" ? crl : other,
				},
				rootcacrl: f("root-crl.der").toString("hex"),
				certificates: {
					"TCB-Info-Issuer-Chain": encodeURIComponent(
						ft("tcb-signing-chain-2018.pem"),
					),
					"SGX-Enclave-Identity-Issuer-Chain": encodeURIComponent(
						ft("tcb-signing-chain-2018.pem"),
					),
					"SGX-PCK-Certificate-Issuer-Chain": {
						PROCESSOR: encodeURIComponent(ft("pck-crl-issuer-chain.pem")),
						PLATFORM: encodeURIComponent(ft("pck-crl-issuer-chain.pem")),
					},
				},
			},
		},
		null,
		2,
	);
}

async function dirWith(
	files: Record<string, string | Buffer>,
): Promise<string> {
	const d = await tempDir();
	for (const [n, v] of Object.entries(files)) await writeFile(join(d, n), v);
	return d;
}

const separateFiles = () => ({
	"tcbinfo.json": ft("spr-e4-tcbinfo-response.json"),
	"qe-identity.json": ft("qe-identity-response.json"),
	"tcb-signing-chain.pem": ft("tcb-signing-chain-2018.pem"),
	"pck-crl.der": f("pck-crl.der"),
	"root-crl.der": f("root-crl.der"),
	"pck-crl-issuer-chain.pem": ft("pck-crl-issuer-chain.pem"),
});

describe.skipIf(!HAVE)(
	"TDX collateral bundles on the real PCS responses",
	() => {
		const quote = HAVE ? f("spr-e4-quote-v4.dat") : Buffer.alloc(0);
		const verify = (collateral: TdxCollateral) =>
			verifyTdx({ quote, collateral, now: SPR_NOW });
		const reference = async () => {
			const { collateral } = await loadTdxCollateralReport(
				await dirWith(separateFiles()),
				FMSPC,
				quotePckCa(quote),
			);
			return verify(collateral);
		};

		it("the quote's PCK CA is read from its PCK certificate", () => {
			expect(["processor", "platform"]).toContain(quotePckCa(quote));
			expect(quoteFmspc(quote)).toBe(FMSPC);
		});

		it("a dcap-qvl bundle (hex or byte arrays) verifies the quote exactly as the separate files do", async () => {
			const ref = await reference();
			expect(ref.collateralChecked).toBe(true);
			for (const form of ["hex", "array"] as const) {
				const dir = await dirWith({
					"collateral.json": JSON.stringify(dcapQvlBundle(form)),
				});
				const { collateral, report } = await loadTdxCollateralReport(
					dir,
					FMSPC,
					quotePckCa(quote),
				);
				expect(report.used).toEqual([
					{
						file: "collateral.json",
						form: "dcap-qvl bundle",
						gives: expect.arrayContaining([
							"tcb-info",
							"qe-identity",
							"tcb-signing-chain",
							"pck-crl",
							"root-crl",
							"pck-crl-issuer-chain",
						]),
					},
				]);
				expect(report.ignored).toEqual([]);
				expect(report.missing).toEqual([]);
				const r = verify(collateral);
				expect(r.claims).toEqual(ref.claims);
				expect(r.tcbStatus).toBe(ref.tcbStatus);
				expect(r.advisoryIds).toEqual(ref.advisoryIds);
				expect(r.collateralChecked).toBe(true);
			}
		});

		it("an Intel PCS Client Tool file (Trustee's) verifies it the same, with the PCK CRL of the quote's CA", async () => {
			const ref = await reference();
			const ca = quotePckCa(quote) as "processor" | "platform";
			const dir = await dirWith({
				"platform-collaterals.json": pcsClientToolFile(ca),
			});
			const { collateral, report } = await loadTdxCollateralReport(
				dir,
				FMSPC,
				ca,
			);
			expect(report.used[0]).toMatchObject({
				file: "platform-collaterals.json",
				form: "PCS Client Tool file",
			});
			expect(report.missing).toEqual([]);
			const r = verify(collateral);
			expect(r.claims).toEqual(ref.claims);
			expect(r.tcbStatus).toBe(ref.tcbStatus);
			expect(r.collateralChecked).toBe(true);
			// A changed byte inside the embedded TCB info (its issueDate) → SIGNATURE_INVALID.
			const tampered = pcsClientToolFile(ca).replace(
				'"issueDate": "2023-06-18T08:42:58Z"',
				'"issueDate": "2023-06-18T08:42:59Z"',
			);
			expect(tampered).not.toBe(pcsClientToolFile(ca));
			const t = await loadTdxCollateralReport(
				await dirWith({ "platform-collaterals.json": tampered }),
				FMSPC,
				ca,
			);
			expect(code(() => verify(t.collateral))).toBe("SIGNATURE_INVALID");
			// Without the quote's PCK CA the PCK CRL is not guessed: reported missing.
			const blind = await loadTdxCollateralReport(dir, FMSPC);
			expect(blind.collateral.pckCrl).toBeUndefined();
			expect(blind.report.missing.map((m) => m.what)).toEqual(["pck-crl"]);
		});

		it("a flipped byte in a bundle's tcb_info, qe_identity or their signatures → SIGNATURE_INVALID", () => {
			const b = dcapQvlBundle();
			const flipDigit = (s: string, at: number) =>
				s.slice(0, at) + (s[at] === "0" ? "1" : "0") + s.slice(at + 1);
			const tcb = b.tcb_info as string;
			const inDate = tcb.indexOf("2023-06-18") + 3; // a digit of issueDate
			const cases: Record<string, unknown>[] = [
				{ ...b, tcb_info: flipDigit(tcb, inDate) },
				{
					...b,
					tcb_info_signature: flipDigit(b.tcb_info_signature as string, 10),
				},
				{
					...b,
					qe_identity: (b.qe_identity as string).replace("TD_QE", "TD_QF"),
				},
				{
					...b,
					qe_identity_signature: flipDigit(
						b.qe_identity_signature as string,
						70,
					),
				},
				// Same value, other bytes: the signature is over the exact text, so this is refused too.
				{ ...b, tcb_info: tcb.replace('"id":"TDX"', '"id": "TDX"') },
			];
			// Whitespace around the value is not part of it: the same signed bytes still verify.
			const padded = parseCollateralBundle(
				JSON.stringify({ ...b, tcb_info: ` ${tcb}\n` }),
				"bundle.json",
			).entries[0];
			expect(padded && verify(padded.collateral).collateralChecked).toBe(true);
			for (const c of cases) {
				const parsed = parseCollateralBundle(JSON.stringify(c), "bundle.json");
				const entry = parsed.entries[0];
				if (!entry) throw new Error("no entry");
				const got = code(() => verify(entry.collateral));
				// The renamed QE id is also a different value: the signature check comes first.
				expect(got).toBe("SIGNATURE_INVALID");
			}
		});

		it("a directory with only a TCB info for another FMSPC: reported, never silently skipped", async () => {
			const dir = await dirWith({
				"tcbinfo-v5.json": ft("quote-v5-tcbinfo-response.json"),
				"qe-identity.json": ft("qe-identity-response.json"),
				"tcb-signing-chain.pem": ft("tcb-signing-chain-2018.pem"),
			});
			const r = await codeAsync(() => loadTdxCollateralReport(dir, FMSPC));
			expect(r.code).toBe("PRECONDITION_FAILED");
			expect(r.message).toContain(`FMSPC ${FMSPC}`);
			expect(r.message).toContain("tcb-info");
			expect(r.message).toContain(`TCB info only for FMSPC ${V5_FMSPC}`);
			expect(r.message).toContain(
				"https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=50806F000000",
			);
			expect(r.message).toContain(
				`tcbinfo-v5.json (a TCB info for FMSPC ${V5_FMSPC}, not the quote's ${FMSPC})`,
			);
			// A bundle for another FMSPC is reported the same way.
			const v5 = ft("quote-v5-tcbinfo-response.json");
			const other = await dirWith({
				"other.json": JSON.stringify({
					...dcapQvlBundle(),
					tcb_info: rawMemberValue(v5, "tcbInfo"),
					tcb_info_signature: JSON.parse(v5).signature,
				}),
			});
			const o = await codeAsync(() => loadTdxCollateralReport(other, FMSPC));
			expect(o.code).toBe("PRECONDITION_FAILED");
			expect(o.message).toContain(
				`other.json (a dcap-qvl bundle for FMSPC ${V5_FMSPC}, not the quote's ${FMSPC})`,
			);
		});

		it("no QE identity → PRECONDITION_FAILED saying what is missing and where to get it", async () => {
			const files: Record<string, string | Buffer> = separateFiles();
			delete files["qe-identity.json"];
			const r = await codeAsync(async () =>
				loadTdxCollateralReport(await dirWith(files), FMSPC),
			);
			expect(r.code).toBe("PRECONDITION_FAILED");
			expect(r.message).toMatch(/gives qe-identity;/);
			expect(r.message).toContain(
				"https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity",
			);
			// An SGX QE identity in its place does not count, and is listed as ignored.
			const sgx = JSON.parse(ft("qe-identity-response.json"));
			sgx.enclaveIdentity.id = "QE";
			const r2 = await codeAsync(async () =>
				loadTdxCollateralReport(
					await dirWith({ ...files, "qe-identity.json": JSON.stringify(sgx) }),
					FMSPC,
				),
			);
			expect(r2.code).toBe("PRECONDITION_FAILED");
			expect(r2.message).toContain(
				'qe-identity.json (an enclave identity with id "QE"',
			);
		});

		it("ignored files are listed with their reasons; missing CRLs are reported", async () => {
			const v5 = ft("quote-v5-tcbinfo-response.json");
			const dir = await dirWith({
				"tcbinfo.json": ft("spr-e4-tcbinfo-response.json"),
				"tcbinfo-copy.json": ft("spr-e4-tcbinfo-response.json"),
				"tcbinfo-v5.json": v5,
				"qe-identity.json": ft("qe-identity-response.json"),
				"tcb-signing-chain.pem": ft("tcb-signing-chain-2018.pem"),
				"README.txt": "collateral fetched on 2023-06-25\n",
				"broken.json": "{not json",
				"notes.json": '{"fetched": "2023-06-25"}',
				"intel-sgx-root-ca.pem": ft("intel-sgx-root-ca.pem"),
				"b-v5-bundle.json": JSON.stringify({
					...dcapQvlBundle(),
					tcb_info: rawMemberValue(v5, "tcbInfo"),
					tcb_info_signature: JSON.parse(v5).signature,
				}),
			});
			const { report, collateral } = await loadTdxCollateralReport(dir, FMSPC);
			const reasons = Object.fromEntries(
				report.ignored.map((i) => [i.file, i.reason]),
			);
			expect(reasons).toEqual({
				"README.txt": "unknown name",
				"b-v5-bundle.json": `a dcap-qvl bundle for FMSPC ${V5_FMSPC}, not the quote's ${FMSPC}`,
				"broken.json": "not JSON (starts with '{' but does not parse)",
				"intel-sgx-root-ca.pem": expect.stringContaining("no collateral role"),
				"notes.json": expect.stringContaining("JSON, but not collateral"),
				"tcbinfo-v5.json": `a TCB info for FMSPC ${V5_FMSPC}, not the quote's ${FMSPC}`,
				"tcbinfo.json":
					"duplicate: the tcb-info comes from tcbinfo-copy.json (same content)",
			});
			expect(report.used.map((u) => u.file)).toEqual([
				"qe-identity.json",
				"tcb-signing-chain.pem",
				"tcbinfo-copy.json",
			]);
			expect(report.missing.map((m) => m.what)).toEqual([
				"pck-crl",
				"root-crl",
			]);
			const r = verify(collateral);
			expect(r.collateralChecked).toBe(false);
			expect(r.tcbStatus).toBe("TcbNotSupported");
		});

		it("--tdx-collateral may name one bundle file instead of a directory", async () => {
			const dir = await dirWith({
				"collateral.json": JSON.stringify(dcapQvlBundle()),
				"platform-collaterals.json": pcsClientToolFile(
					quotePckCa(quote) as "processor" | "platform",
				),
			});
			for (const file of ["collateral.json", "platform-collaterals.json"]) {
				const { collateral, report } = await loadTdxCollateralReport(
					join(dir, file),
					FMSPC,
					quotePckCa(quote),
				);
				expect(report.used.map((u) => u.file)).toEqual([file]);
				expect(verify(collateral).collateralChecked).toBe(true);
			}
			const r = await codeAsync(() =>
				loadTdxCollateralReport(join(dir, "absent.json"), FMSPC),
			);
			expect(r.code).toBe("INPUT_NOT_FOUND");
		});

		it("a bundle wins over separate files, which are then reported as duplicates", async () => {
			const dir = await dirWith({
				...separateFiles(),
				"bundle.json": JSON.stringify(dcapQvlBundle()),
			});
			const { report } = await loadTdxCollateralReport(dir, FMSPC);
			expect(report.used.map((u) => u.file)).toEqual(["bundle.json"]);
			expect(report.ignored.map((i) => i.file).sort()).toEqual(
				Object.keys(separateFiles()).sort(),
			);
			for (const i of report.ignored)
				expect(i.reason).toMatch(/^duplicate: the .* comes from bundle\.json/);
		});

		it("a malformed bundle is an error, not skipped", async () => {
			const b = dcapQvlBundle();
			for (const bad of [
				{ ...b, tcb_info_signature: "zz" },
				{ ...b, tcb_info: "{" },
				{ ...b, pck_crl: [1, 2, 300] },
				{ ...b, extra: 1 },
				{ ...b, qe_identity_issuer_chain: ft("pck-crl-issuer-chain.pem") },
				(() => {
					const { qe_identity: _, ...rest } = b;
					return rest;
				})(),
			]) {
				const r = await codeAsync(async () =>
					loadTdxCollateralReport(
						await dirWith({ "bundle.json": JSON.stringify(bad) }),
						FMSPC,
					),
				);
				expect(r.code).toBe("INPUT_INVALID");
				expect(r.message).toContain("bundle.json");
			}
		});

		it("mutated bundle texts never throw anything but DadiError, through verification", () => {
			const text = JSON.stringify(dcapQvlBundle());
			const tool = pcsClientToolFile("platform");
			fc.assert(
				fc.property(
					fc.boolean(),
					fc.nat(),
					fc.string({ maxLength: 6 }),
					fc.nat({ max: 6 }),
					(which, at0, ins, del) => {
						const base = which ? text : tool;
						const at = at0 % (base.length + 1);
						const t = base.slice(0, at) + ins + base.slice(at + del);
						try {
							const { collateral } = selectTdxCollateral(
								"d",
								[classifyCollateralFile("x.json", Buffer.from(t))],
								FMSPC,
								"platform",
							);
							verify(collateral);
						} catch (e) {
							if (!(e instanceof DadiError)) throw e;
						}
					},
				),
				{ numRuns: 300 },
			);
		});

		it("evidence verify --json carries the report; missing QE identity exits with PRECONDITION_FAILED", async () => {
			const dir = await dirWith({
				"collateral.json": JSON.stringify(dcapQvlBundle()),
				"README.txt": "x",
			});
			const args = [
				"evidence",
				"verify",
				"--tee",
				"tdx",
				"--evidence",
				join(TDX, "spr-e4-quote-v4.dat"),
				"--now",
				"2023-06-25T00:00:00Z",
				"--json",
			];
			const ok = await runCli(BIN.broker, [...args, "--tdx-collateral", dir]);
			expect(ok.code, ok.stderr).toBe(0);
			const out = JSON.parse(ok.stdout);
			expect(out).toMatchObject({
				verified: true,
				fmspc: FMSPC,
				collateralChecked: true,
				collateral: {
					fmspc: FMSPC,
					used: [{ file: "collateral.json", form: "dcap-qvl bundle" }],
					ignored: [{ file: "README.txt", reason: "unknown name" }],
					missing: [],
				},
			});
			const files: Record<string, string | Buffer> = separateFiles();
			delete files["qe-identity.json"];
			const no = await runCli(BIN.broker, [
				...args,
				"--collateral",
				await dirWith(files),
			]);
			expect(no.code).toBe(3);
			const err = JSON.parse(no.stdout).error;
			expect(err.code).toBe("PRECONDITION_FAILED");
			expect(err.message).toContain("qe-identity");
		});

		it("the broker logs what the collateral directory holds at start", async () => {
			const dir = await dirWith({
				"collateral.json": JSON.stringify(dcapQvlBundle()),
				"tcbinfo-v5.json": ft("quote-v5-tcbinfo-response.json"),
				"README.txt": "x",
			});
			const logs: string[] = [];
			const state = await tempDir();
			const masterKey = parseMasterKey(generateMasterKeyText(), "test");
			await initStateDir(join(state, "s"), masterKey);
			const b = await startBroker({
				host: "127.0.0.1",
				port: 0,
				stateDir: join(state, "s"),
				masterKey,
				insecureDev: false,
				tdxCollateralDir: dir,
				cryptoWorkers: 0,
				log: (l) => logs.push(l),
			});
			await b.close();
			const line = logs.find((l) => l.startsWith("TDX collateral"));
			expect(line).toContain(`FMSPC ${FMSPC} (collateral.json)`);
			expect(line).toContain(`${V5_FMSPC} (tcbinfo-v5.json)`);
			expect(line).toContain("ignored 1: README.txt (unknown name)");
		});
	},
);

describe.skipIf(!HAVE)("the broker with a TDX collateral directory", () => {
	it("a quote whose FMSPC has no collateral is refused; the details go to the log, not to the client", async () => {
		const dir = await dirWith({
			"tcbinfo-v5.json": ft("quote-v5-tcbinfo-response.json"),
			"qe-identity.json": ft("qe-identity-response.json"),
			"tcb-signing-chain.pem": ft("tcb-signing-chain-2018.pem"),
		});
		const b = await startTestBroker({
			tdxCollateralDir: dir,
			insecureDev: false,
			cryptoWorkers: 0,
		});
		try {
			const g = new ManualGuest(b.url);
			expect((await g.auth("tdx")).status).toBe(200);
			const r = await g.attest({
				evidence: { quote: f("spr-e4-quote-v4.dat").toString("base64") },
			});
			expect(r.status).toBe(500);
			expect(r.text).not.toContain(dir);
			const line = b.logs.find((l) =>
				l.startsWith(`TDX collateral for FMSPC ${FMSPC}:`),
			);
			expect(line).toContain("gives tcb-info");
			expect(line).toContain(`TCB info only for FMSPC ${V5_FMSPC}`);
		} finally {
			await b.close();
		}
	});
});

describe("TDX collateral bundle parsing (pure)", () => {
	it("compactJson removes exactly the whitespace outside strings", () => {
		fc.assert(
			fc.property(fc.jsonValue(), fc.nat({ max: 4 }), (v, indent) => {
				const pretty = JSON.stringify(v, null, indent);
				expect(compactJson(pretty)).toBe(JSON.stringify(v));
			}),
			{ numRuns: 300 },
		);
	});

	it("bundle bytes: hex text or arrays of bytes, nothing else", () => {
		expect(bundleBytes("0aFF", "s", "m")).toEqual(Buffer.from([10, 255]));
		expect(bundleBytes([0, 255], "s", "m")).toEqual(Buffer.from([0, 255]));
		for (const bad of ["0", "zz", [256], [-1], [1.5], ["1"], {}, null, 5])
			expect(code(() => bundleBytes(bad, "s", "m"))).toBe("INPUT_INVALID");
	});

	const members = [
		"pck_crl_issuer_chain",
		"root_ca_crl",
		"pck_crl",
		"tcb_info_issuer_chain",
		"tcb_info",
		"tcb_info_signature",
		"qe_identity_issuer_chain",
		"qe_identity",
		"qe_identity_signature",
	];
	const anyBundle = fc.oneof(
		fc.dictionary(fc.constantFrom(...members), fc.jsonValue(), {
			minKeys: 1,
		}),
		fc.record({
			collaterals: fc.dictionary(
				fc.constantFrom(
					"tcbinfos",
					"tdqeidentity",
					"tdqeidentity_early",
					"pckcacrl",
					"rootcacrl",
					"certificates",
				),
				fc.jsonValue(),
			),
		}),
		fc.record({
			collaterals: fc.record({
				tcbinfos: fc.array(
					fc.record({
						fmspc: fc.oneof(fc.constant("50806F000000"), fc.string()),
						tdx_tcbinfo: fc.jsonValue(),
					}),
				),
				certificates: fc.dictionary(
					fc.constantFrom(
						"TCB-Info-Issuer-Chain",
						"SGX-Enclave-Identity-Issuer-Chain",
					),
					fc.oneof(fc.string(), fc.constant("-----BEGIN CERTIFICATE-----\n")),
				),
			}),
		}),
	);

	it("arbitrary bundle JSON never throws anything but DadiError", () => {
		fc.assert(
			fc.property(anyBundle, fc.nat({ max: 2 }), (v, indent) => {
				const bytes = Buffer.from(JSON.stringify(v, null, indent));
				try {
					const item = classifyCollateralFile("bundle.json", bytes);
					selectTdxCollateral("d", [item], "50806f000000", "processor");
				} catch (e) {
					if (!(e instanceof DadiError)) throw e;
				}
			}),
			{ numRuns: 1000 },
		);
	});

	it("arbitrary file names and bytes classify without throwing anything but DadiError", () => {
		fc.assert(
			fc.property(
				fc.string({ maxLength: 40 }),
				fc.oneof(
					fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
					fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v))),
				),
				(name, bytes) => {
					try {
						classifyCollateralFile(name, bytes);
					} catch (e) {
						if (!(e instanceof DadiError)) throw e;
					}
				},
			),
			{ numRuns: 500 },
		);
	});

	it("an empty directory's collateral is refused, naming everything missing", () => {
		const e = code(() => selectTdxCollateral("d", [], "50806f000000"));
		expect(e).toBe("PRECONDITION_FAILED");
	});
});
