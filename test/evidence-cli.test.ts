/**
 * `dadi-broker evidence verify` on the real SEV-SNP and TDX samples, and `policy test` deciding
 * with the claims they yield under the shipped production policies.
 */
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { attestationFixtures } from "./fixtures.js";
import { BIN, cleanupTempDirs, ROOT, runCli, tempDir } from "./helpers.js";

const F = attestationFixtures();
const present =
	existsSync(join(F, "snp/milan-report.bin")) &&
	existsSync(join(F, "tdx/spr-e4-quote-v4.dat"));
if (!present)
	console.warn(
		`\n*** evidence-cli: fixtures not found at ${F} (set DADI_FIXTURES): SKIPPING evidence verify and policy test on real evidence ***\n`,
	);
const POLICIES = join(ROOT, "policies");

afterAll(cleanupTempDirs);

const verify = (args: string[]) =>
	runCli(BIN.broker, ["evidence", "verify", ...args, "--json"]);

async function claimsFile(stdout: string): Promise<string> {
	const p = join(await tempDir(), "claims.json");
	await writeFile(p, JSON.stringify(JSON.parse(stdout).claims));
	return p;
}

describe.skipIf(!present)(
	"dadi-broker evidence verify --tee az-snp-vtpm (Trustee's real sample)",
	() => {
		const args = (reportData: string, tee = "az-snp-vtpm") => [
			"--tee",
			tee,
			"--evidence",
			join(ROOT, "test/fixtures/azure-vtpm/snp-evidence-v1.json"),
			"--certs",
			join(F, "snp/ask_ark_milan.pem"),
			"--report-data",
			reportData,
			"--now",
			"2026-06-01T00:00:00Z",
		];

		it("verifies with the quote's nonce; the azure-snp policy allows it; another nonce exits 9", async () => {
			const r = await verify(args(Buffer.from("challenge").toString("hex")));
			expect(r.code, r.stderr).toBe(0);
			expect(JSON.parse(r.stdout)).toMatchObject({
				verified: true,
				tee: "azsnpvtpm",
				product: "milan",
				claims: { tee: "azsnpvtpm", debug: false },
			});
			const allow = await runCli(BIN.broker, [
				"policy",
				"test",
				"--policies",
				POLICIES,
				"--claims",
				await claimsFile(r.stdout),
				"--resource",
				"production/image-key/app",
				"--json",
			]);
			expect(allow.code, allow.stdout + allow.stderr).toBe(0);
			expect(JSON.parse(allow.stdout)).toMatchObject({
				allow: true,
				policy: "azure-snp-production",
			});
			const bad = await verify(args("6368616c6c656e6766", "azsnpvtpm"));
			expect(bad.code).toBe(9);
			expect(JSON.parse(bad.stdout).error.code).toBe("EVIDENCE_INVALID");
		});
	},
);

describe("dadi-broker evidence verify --tee az-tdx-vtpm (Trustee's real sample)", () => {
	it("verifies with the quote's nonce (no collateral); another nonce exits 9", async () => {
		const args = (reportData: string, tee: string) => [
			"--tee",
			tee,
			"--evidence",
			join(ROOT, "test/fixtures/azure-vtpm/tdx-evidence-v1.json"),
			"--report-data",
			reportData,
			"--now",
			"2026-01-01T00:00:00Z",
		];
		const r = await verify(args("6368616c6c656e6765", "az-tdx-vtpm"));
		expect(r.code, r.stderr).toBe(0);
		expect(JSON.parse(r.stdout)).toMatchObject({
			verified: true,
			tee: "aztdxvtpm",
			fmspc: "00806f050000",
			collateralChecked: false,
			claims: { tee: "aztdxvtpm", debug: false },
		});
		const bad = await verify(args("6368616c6c656e6766", "aztdxvtpm"));
		expect(bad.code).toBe(9);
	});
});

describe.skipIf(!present)("dadi-broker evidence verify (real samples)", () => {
	it("SEV-SNP Milan, VCEK: verified, claims as the fixtures say; the production policy allows it", async () => {
		const r = await verify([
			"--tee",
			"snp",
			"--evidence",
			join(F, "snp/milan-report.bin"),
			"--certs",
			join(F, "snp/milan-vcek.der"),
			join(F, "snp/ask_ark_milan.pem"),
			"--now",
			"2024-06-01T00:00:00Z",
		]);
		expect(r.code, r.stderr).toBe(0);
		const out = JSON.parse(r.stdout);
		expect(out).toMatchObject({
			verified: true,
			product: "milan",
			signer: "vcek",
		});
		expect(out.claims).toMatchObject({
			tee: "snp",
			debug: false,
			measurement:
				"a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c",
			tcb: { bootloader: 3, tee: 0, snp: 8, microcode: 115 },
		});
		const claims = await claimsFile(r.stdout);
		const allow = await runCli(BIN.broker, [
			"policy",
			"test",
			"--policies",
			POLICIES,
			"--claims",
			claims,
			"--resource",
			"production/image-key/app",
			"--json",
		]);
		expect(allow.code, allow.stdout + allow.stderr).toBe(0);
		expect(JSON.parse(allow.stdout)).toMatchObject({
			allow: true,
			policy: "snp-production",
		});
		// the same claims for a resource no policy covers, and a higher TCB minimum: deny (exit 9)
		const deny = await runCli(BIN.broker, [
			"policy",
			"test",
			"--policies",
			POLICIES,
			"--claims",
			claims,
			"--resource",
			"default/image-key/app",
		]);
		expect(deny.code).toBe(9);
		expect(deny.stdout).toMatch(/DENY/);
	});

	it("SEV-SNP Milan, VLEK from a certificate directory: verified before the VLEK expired, CERT_EXPIRED after", async () => {
		const args = [
			"--tee",
			"snp",
			"--evidence",
			join(F, "snp/milan-vlek-report.bin"),
			"--certs",
			join(F, "snp"),
		];
		const ok = await verify([...args, "--now", "2025-06-01T00:00:00Z"]);
		expect(ok.code, ok.stderr).toBe(0);
		expect(JSON.parse(ok.stdout)).toMatchObject({
			signer: "vlek",
			claims: { tee_specific: { vmpl: 1, chip_id: "" } },
		});
		const late = await verify([...args, "--now", "2026-01-01T00:00:00Z"]);
		expect(late.code).toBe(9);
		expect(JSON.parse(late.stdout).error.code).toBe("CERT_EXPIRED");
	});

	it("a flipped byte in the signed report: SIGNATURE_INVALID, exit 9", async () => {
		const bad = Buffer.from(await readFile(join(F, "snp/milan-report.bin")));
		bad[0x90] = (bad[0x90] as number) ^ 1;
		const p = join(await tempDir(), "bad.bin");
		await writeFile(p, bad);
		const r = await verify([
			"--tee",
			"snp",
			"--evidence",
			p,
			"--certs",
			join(F, "snp/milan-vcek.der"),
			join(F, "snp/ask_ark_milan.pem"),
			"--now",
			"2024-06-01T00:00:00Z",
		]);
		expect(r.code).toBe(9);
		expect(JSON.parse(r.stdout).error.code).toBe("SIGNATURE_INVALID");
	});

	it("TDX SPR E4 quote with collateral: verified, no TCB level matches; outside the collateral window: CERT_EXPIRED", async () => {
		const args = [
			"--tee",
			"tdx",
			"--evidence",
			join(F, "tdx/spr-e4-quote-v4.dat"),
			"--collateral",
			join(F, "tdx"),
		];
		const ok = await verify([...args, "--now", "2023-06-25T00:00:00Z"]);
		expect(ok.code, ok.stderr).toBe(0);
		const out = JSON.parse(ok.stdout);
		expect(out).toMatchObject({
			tee: "tdx",
			fmspc: "50806f000000",
			tcbStatus: "TcbNotSupported",
			collateralChecked: true,
		});
		// The shared fixtures directory is used as it is: the report says what was taken and why
		// the rest (quotes, the v5 platform's TCB info, the pinned root) was not.
		expect(out.collateral.used.map((u: { file: string }) => u.file)).toEqual([
			"pck-crl-issuer-chain.pem",
			"pck-crl.der",
			"qe-identity-response.json",
			"root-crl.der",
			"spr-e4-tcbinfo-response.json",
			"tcb-signing-chain-2018.pem",
		]);
		expect(out.collateral.ignored).toContainEqual({
			file: "quote-v5-tcbinfo-response.json",
			reason: "a TCB info for FMSPC 90c06f000000, not the quote's 50806f000000",
		});
		expect(out.claims.measurement).toBe(
			"6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb",
		);
		const late = await verify([...args, "--now", "2024-06-01T00:00:00Z"]);
		expect(late.code).toBe(9);
		expect(JSON.parse(late.stdout).error.code).toBe("CERT_EXPIRED");
	});

	it("the debug TD verifies, and the TDX production policy refuses it for debug", async () => {
		const r = await verify([
			"--tee",
			"tdx",
			"--evidence",
			join(F, "tdx/debug-td-quote-v4.dat"),
			"--collateral",
			join(F, "tdx"),
			"--now",
			"2023-06-25T00:00:00Z",
		]);
		expect(r.code, r.stderr).toBe(0);
		expect(JSON.parse(r.stdout).claims.debug).toBe(true);
		const d = await runCli(BIN.broker, [
			"policy",
			"test",
			"--policies",
			POLICIES,
			"--claims",
			await claimsFile(r.stdout),
			"--resource",
			"production/image-key/app",
			"--json",
		]);
		expect(d.code).toBe(9);
		const decision = JSON.parse(d.stdout);
		expect(decision.allow).toBe(false);
		expect(decision.reasons.join("\n")).toMatch(/tdx-production\/no-debug/);
	});
});

describe.skipIf(!present)(
	"dadi-broker evidence verify: the CoCo evidence forms",
	() => {
		it("SnpEvidence JSON (serde report + cert_chain with the VCEK) with the Genoa ASK/ARK: verified", async () => {
			const r = await verify([
				"--tee",
				"snp",
				"--evidence",
				join(ROOT, "test/fixtures/coco/snp-evidence-genoa.json"),
				"--certs",
				join(F, "snp/ask_ark_genoa.pem"),
				"--now",
				"2026-01-15T00:00:00Z",
			]);
			expect(r.code, r.stderr).toBe(0);
			expect(JSON.parse(r.stdout)).toMatchObject({
				verified: true,
				product: "genoa",
				signer: "vcek",
				claims: { tcb: { bootloader: 10, tee: 0, snp: 23, microcode: 25 } },
			});
		});

		it("TdxEvidence with a cc_eventlog that is not the quote's TD: EVENTLOG_MISMATCH, exit 9; null: verified", async () => {
			const dir = await tempDir();
			const quote = (
				await readFile(join(F, "tdx/debug-td-quote-v4.dat"))
			).toString("base64");
			const log = (
				await readFile(join(ROOT, "test/fixtures/coco/ccel-td-shim.bin"))
			).toString("base64");
			const bad = join(dir, "bad.json");
			const ok = join(dir, "ok.json");
			await writeFile(bad, JSON.stringify({ cc_eventlog: log, quote }));
			await writeFile(ok, JSON.stringify({ cc_eventlog: null, quote }));
			const args = (p: string) => [
				"--tee",
				"tdx",
				"--evidence",
				p,
				"--now",
				"2023-06-20T00:00:00Z",
			];
			const r = await verify(args(bad));
			expect(r.code).toBe(9);
			expect(r.stdout + r.stderr).toContain("EVENTLOG_MISMATCH");
			const g = await verify(args(ok));
			expect(g.code, g.stderr).toBe(0);
			expect(JSON.parse(g.stdout).claims.tee_specific.ccel_present).toBe(false);
		});
	},
);

describe("policies/tdx-eventlog.json on event-log claims", () => {
	it("allows the OVMF sample's kernel, initrd and command line; refuses another kernel or no log", async () => {
		const { parseCcel } = await import("../src/attest/tdx/ccel.js");
		const { ccelClaims } = await import("../src/attest/tdx/ccel-claims.js");
		const log = parseCcel(
			await readFile(join(ROOT, "test/fixtures/coco/ccel-ovmf.bin")),
		);
		const base = {
			tee: "tdx",
			debug: false,
			measurement:
				"6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb",
			report_data: "",
			init_data: "",
			tcb: {},
			tcb_status: "UpToDate",
			tee_specific: { ccel_present: true, ...ccelClaims(log) },
		};
		const decide = async (claims: unknown) => {
			const p = join(await tempDir(), "claims.json");
			await writeFile(p, JSON.stringify(claims));
			return runCli(BIN.broker, [
				"policy",
				"test",
				"--policies",
				POLICIES,
				"--claims",
				p,
				"--resource",
				"eventlog/image-key/app",
				"--json",
			]);
		};
		const allow = await decide(base);
		expect(allow.code, allow.stdout + allow.stderr).toBe(0);
		expect(JSON.parse(allow.stdout)).toMatchObject({
			allow: true,
			policy: "tdx-eventlog",
		});
		for (const spec of [
			{ ...base.tee_specific, ccel_kernel: "00".repeat(48) },
			{ ...base.tee_specific, ccel_present: false },
		]) {
			const deny = await decide({ ...base, tee_specific: spec });
			expect(deny.code, deny.stdout).toBe(9);
		}
	});
});
