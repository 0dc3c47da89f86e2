/**
 * End to end with the broker and a synthetic Azure SEV-SNP vTPM guest: an HCL report around a
 * synthetic SNP report (test-only VCEK/ASK/ARK, pinned by this broker), runtime data naming a test
 * AK, and a vTPM quote signed by it whose nonce is this session's report-data digest. The key is
 * released under a matching policy and refused under a non-matching one; evidence bound to another
 * session, and the same evidence under AMD's pinned roots, are refused at attest.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createAzSnpVtpmVerifier } from "../src/attest/azure/snp-vtpm-verifier.js";
import { reportDataDigest } from "../src/kbs/report-data.js";
import {
	makeSyntheticAzSnp,
	syntheticAzTrust,
	syntheticPcrs,
} from "./attest/az-vtpm-synthetic.js";
import {
	ManualGuest,
	startTestBroker,
	type TestBroker,
} from "./broker/harness.js";
import { cleanupTempDirs } from "./helpers.js";

const SECRET = Buffer.from('{"kty":"oct","k":"synthetic-azure-test-key"}');
const PATH = "prod/image-key/app";
const GOOD_PCRS = syntheticPcrs();
let b: TestBroker;

function evidence(g: ManualGuest, o: { pcrs?: Buffer[] } = {}) {
	return makeSyntheticAzSnp({
		nonce: reportDataDigest({ nonce: g.nonce, teePubKey: g.key.jwk }),
		pcrs: o.pcrs ?? GOOD_PCRS,
	}).evidence;
}

beforeAll(async () => {
	const t = syntheticAzTrust();
	b = await startTestBroker({
		insecureDev: false,
		verifiers: [
			createAzSnpVtpmVerifier({ trust: t.trust, certSource: t.certSource }),
		],
	});
	await b.put(PATH, SECRET);
	await b.putPolicy({
		name: "azure-test",
		resources: ["prod/*/*"],
		values: { pcr07: [(GOOD_PCRS[7] as Buffer).toString("hex")] },
		rules: [
			{ name: "is-azure-snp", expr: "tee == 'azsnpvtpm'" },
			{ name: "no-debug", expr: "!claims.debug" },
			{ name: "secure-boot", expr: "claims.tee_specific.secure_boot" },
			{
				name: "pcr07",
				expr: "claims.tee_specific.pcr07 in values.pcr07",
			},
		],
	});
});

afterAll(async () => {
	await b?.close();
	await cleanupTempDirs();
});

describe("a synthetic Azure SEV-SNP vTPM guest", () => {
	it("gets the key when the policy matches", async () => {
		const g = new ManualGuest(b.url);
		expect((await g.auth("azsnpvtpm")).status).toBe(200);
		const r = await g.attest({ evidence: evidence(g) });
		expect(r.status, r.text).toBe(200);
		expect(await g.released(PATH)).toEqual(SECRET);
		const claims = g.tokenClaims("azsnpvtpm");
		expect(claims).toMatchObject({
			tee: "azsnpvtpm",
			debug: false,
			tee_specific: { secure_boot: true, vmpl: 0 },
		});
	});

	it("is refused (403) when a PCR the policy pins differs", async () => {
		const g = new ManualGuest(b.url);
		await g.auth("azsnpvtpm");
		const pcrs = [...GOOD_PCRS];
		pcrs[7] = Buffer.alloc(32, 0x77);
		const r = await g.attest({ evidence: evidence(g, { pcrs }) });
		expect(r.status).toBe(200); // genuine evidence …
		const res = await g.resource(PATH);
		expect(res.status).toBe(403); // … that the policy refuses
		expect(res.text).toMatch(/pcr07/);
	});

	it("is refused at attest (401) when the quote binds another session", async () => {
		const g = new ManualGuest(b.url);
		await g.auth("azsnpvtpm");
		const other = new ManualGuest(b.url);
		await other.auth("azsnpvtpm");
		const r = await g.attest({ evidence: evidence(other) });
		expect(r.status).toBe(401);
		expect(r.text).toMatch(/nonce/);
	});

	it("is refused by a broker that pins AMD's roots only", async () => {
		const t = syntheticAzTrust();
		const prod = await startTestBroker({
			insecureDev: false,
			verifiers: [createAzSnpVtpmVerifier({ certSource: t.certSource })],
		});
		try {
			const g = new ManualGuest(prod.url);
			await g.auth("azsnpvtpm");
			const r = await g.attest({ evidence: evidence(g) });
			expect(r.status).toBe(401);
			expect(r.text).toMatch(/AttestationFailed/);
		} finally {
			await prod.close();
		}
	});
});
