/**
 * End to end: dadi-guest's az-snp-vtpm attester on a software TPM (swtpm) against the real broker's
 * az-snp-vtpm verifier. The TPM's own attestation key signs the quote; the HCL report in NV index
 * 0x01400001 holds a synthetic SNP report (signed by a synthetic VCEK the broker pins) whose
 * REPORT_DATA binds runtime data naming that TPM key. On Azure the paravisor rewrites the HCL report
 * after the guest writes its report-data digest to NV 0x01400002; here the test plays the paravisor
 * (it writes the HCL report for the digest the attester is asked to bind). The key is released under
 * a matching policy and refused under one that pins another PCR value. The same for az-tdx-vtpm:
 * the HCL report holds a TD report, the test's IMDS stand-in answers it with a TD quote signed under
 * a test-only PCK chain (test/attest/tdx-synthetic.ts) that the broker pins.
 */
import { createHash, createPublicKey } from "node:crypto";
import { createServer, type Server } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Attester } from "../src/attest/attester.js";
import {
	azSnpVtpmAttester,
	azTdxVtpmAttester,
} from "../src/attest/az-attester.js";
import { createAzSnpVtpmVerifier } from "../src/attest/azure/snp-vtpm-verifier.js";
import { createAzTdxVtpmVerifier } from "../src/attest/azure/tdx-vtpm-verifier.js";
import { isDadiError } from "../src/errors.js";
import { fetchResource } from "../src/kbs/client.js";
import {
	hclReport,
	runtimeData,
	syntheticAzTrust,
} from "./attest/az-vtpm-synthetic.js";
import { signedReport, syntheticLeaf } from "./attest/snp-synthetic.js";
import { haveSwtpm, type Swtpm, startSwtpm } from "./attest/swtpm.js";
import {
	type SyntheticTdxPlatform,
	syntheticQuote,
	syntheticTdxPlatform,
} from "./attest/tdx-synthetic.js";
import { startTestBroker, type TestBroker } from "./broker/harness.js";
import { cleanupTempDirs } from "./helpers.js";

const HAVE = haveSwtpm();
const HCL_NV = 0x01400001;
const SECRET = Buffer.from('{"kty":"oct","k":"azure-vtpm-guest-key"}');
let tpm: Swtpm | undefined;
let imds: Server | undefined;
let imdsUrl = "";
let b: TestBroker | undefined;
let platform: SyntheticTdxPlatform;
/** The TD quote the IMDS stand-in returns for the TD report the paravisor stand-in wrote. */
let nextTdQuote: Buffer | undefined;

beforeAll(async () => {
	if (!HAVE) return;
	tpm = await startSwtpm();
	const leaf = syntheticLeaf();
	const pem = `-----BEGIN CERTIFICATE-----\n${leaf.der.toString("base64").replace(/(.{64})/g, "$1\n")}\n-----END CERTIFICATE-----\n`;
	imds = createServer((req, res) => {
		if (
			req.headers.metadata === "true" &&
			req.method === "POST" &&
			req.url === "/acc/tdquote" &&
			nextTdQuote
		) {
			req.resume();
			res
				.writeHead(200, { "content-type": "application/json" })
				.end(JSON.stringify({ quote: nextTdQuote.toString("base64url") }));
		} else if (
			req.headers.metadata === "true" &&
			req.method === "GET" &&
			req.url === "/metadata/THIM/amd/certification"
		)
			res
				.writeHead(200, { "content-type": "application/json" })
				.end(
					JSON.stringify({ vcekCert: pem, certificateChain: "", tcbm: "x" }),
				);
		else res.writeHead(404).end();
	});
	await new Promise<void>((r) => imds?.listen(0, "127.0.0.1", r));
	const a = imds.address();
	imdsUrl = `http://127.0.0.1:${typeof a === "object" && a ? a.port : 0}`;
	// swtpm's PCRs after startup: all zero except what nobody extended (the SHA-256 bank).
	const pcr7 = Buffer.alloc(32).toString("hex");
	const t = syntheticAzTrust();
	platform = syntheticTdxPlatform();
	b = await startTestBroker({
		insecureDev: false,
		verifiers: [
			createAzSnpVtpmVerifier({ trust: t.trust, certSource: t.certSource }),
			createAzTdxVtpmVerifier({ trust: platform.trust }),
		],
	});
	await b.put("tdx/image-key/app", SECRET);
	await b.put("prod/image-key/app", SECRET);
	await b.put("strict/image-key/app", SECRET);
	for (const [name, resources, want, tee] of [
		["azure-guest", ["prod/*/*"], pcr7, "azsnpvtpm"],
		["azure-strict", ["strict/*/*"], "ab".repeat(32), "azsnpvtpm"],
		["azure-tdx", ["tdx/*/*"], pcr7, "aztdxvtpm"],
	] as const)
		await b.putPolicy({
			name,
			resources: [...resources],
			values: { pcr07: [want] },
			rules: [
				{ name: "is-azure", expr: `tee == '${tee}'` },
				{ name: "no-debug", expr: "!claims.debug" },
				{ name: "secure-boot", expr: "claims.tee_specific.secure_boot" },
				{ name: "pcr7", expr: "claims.tee_specific.pcr07 in values.pcr07" },
			],
		});
}, 120_000);

afterAll(async () => {
	tpm?.stop();
	await new Promise((r) => (imds ? imds.close(r) : r(undefined)));
	await b?.close();
	await cleanupTempDirs();
});

/**
 * The HCL report for `varData`, without the padding to 2600 bytes Azure's NV index has: swtpm's
 * (libtpms') NV indexes hold at most 2048 bytes, and the report's own sizes say where it ends.
 */
function hclFor(report: Buffer, varData: Buffer, type = 2): Buffer {
	return hclReport(report, varData, { type }).subarray(
		0,
		0x4d4 + varData.length,
	);
}

/** The HCL runtime data binding the AK and `digest`, and the report data (its hash) a TEE report carries. */
function paravisorData(
	t: Swtpm,
	digest: Buffer,
): { varData: Buffer; reportData: Buffer } {
	const varData = runtimeData({
		akPublic: createPublicKey(t.akPem),
		userData: digest,
	});
	const reportData = Buffer.alloc(64);
	createHash("sha256").update(varData).digest().copy(reportData);
	return { varData, reportData };
}

/** The attester, with the test writing the HCL report for each digest as Azure's paravisor would. */
function guest(): Attester {
	const t = tpm as Swtpm;
	const inner = azSnpVtpmAttester({ tcti: t.tcti, imds: imdsUrl, settleMs: 0 });
	return {
		tee: inner.tee,
		async evidence(digest, initData) {
			const { varData, reportData } = paravisorData(t, digest);
			const report = signedReport(syntheticLeaf().key, {
				version: 3,
				reportData,
			});
			t.setNv(HCL_NV, hclFor(report, varData));
			return inner.evidence(digest, initData);
		},
	};
}

/** The az-tdx-vtpm attester, the test playing the paravisor (HCL report) and IMDS (TD quote). */
function tdxGuest(): Attester {
	const t = tpm as Swtpm;
	const inner = azTdxVtpmAttester({ tcti: t.tcti, imds: imdsUrl, settleMs: 0 });
	return {
		tee: inner.tee,
		async evidence(digest, initData) {
			const { varData, reportData } = paravisorData(t, digest);
			// A TD report's bytes (MAC'd for the local platform; the verifier checks the quote).
			const tdReport = Buffer.alloc(1184);
			tdReport.fill(0x2a, 0, 1024);
			t.setNv(HCL_NV, hclFor(tdReport, varData, 4));
			nextTdQuote = syntheticQuote(platform, { reportData });
			return inner.evidence(digest, initData);
		},
	};
}

describe.skipIf(!HAVE)(
	"the az-snp-vtpm attester on swtpm, against the broker's verifier",
	() => {
		it("gets the key under a matching policy; another PCR 7 is refused (POLICY_DENIED)", async () => {
			const url = (b as TestBroker).url;
			const r = await fetchResource(
				{ url, attester: guest(), retryForMs: 0 },
				"kbs:///prod/image-key/app",
			);
			expect(r.value).toEqual(SECRET);
			expect(r.tee).toBe("azsnpvtpm");
			try {
				await fetchResource(
					{ url, attester: guest(), retryForMs: 0 },
					"kbs:///strict/image-key/app",
				);
				expect.unreachable();
			} catch (e) {
				expect(isDadiError(e, "POLICY_DENIED")).toBe(true);
				expect((e as Error).message).toMatch(/pcr7/);
			}
		});

		it("an HCL report left from another session (stale user-data) is refused at attest", async () => {
			const t = tpm as Swtpm;
			const inner = azSnpVtpmAttester({
				tcti: t.tcti,
				imds: imdsUrl,
				settleMs: 0,
			});
			// the paravisor stand-in binds a digest other than the session's
			const stale: Attester = {
				tee: inner.tee,
				async evidence(digest, initData) {
					const varData = runtimeData({
						akPublic: createPublicKey(t.akPem),
						userData: Buffer.alloc(digest.length, 0x42),
					});
					const reportData = Buffer.alloc(64);
					createHash("sha256").update(varData).digest().copy(reportData);
					t.setNv(
						HCL_NV,
						hclFor(
							signedReport(syntheticLeaf().key, { version: 3, reportData }),
							varData,
						),
					);
					return inner.evidence(digest, initData);
				},
			};
			const e = await fetchResource(
				{ url: (b as TestBroker).url, attester: stale, retryForMs: 0 },
				"kbs:///prod/image-key/app",
			).then(
				() => undefined,
				(x: unknown) => x,
			);
			expect(isDadiError(e, "EVIDENCE_INVALID")).toBe(true);
			expect((e as Error).message).toMatch(
				/user-data does not bind this session/,
			);
		});

		it("az-tdx-vtpm: the TD quote from IMDS and the vTPM quote; the key is released", async () => {
			const r = await fetchResource(
				{ url: (b as TestBroker).url, attester: tdxGuest(), retryForMs: 0 },
				"kbs:///tdx/image-key/app",
			);
			expect(r.value).toEqual(SECRET);
			expect(r.tee).toBe("aztdxvtpm");
		});
	},
);
