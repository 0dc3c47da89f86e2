/**
 * End to end: dadi-guest's TDX attester on a fake configfs-tsm (provider tdx_guest), against the
 * real broker. The fake kernel answers each inblob with a v4 quote signed under a test-only PCK
 * chain (test/attest/tdx-synthetic.ts) whose REPORTDATA is that inblob; the broker pins only that
 * chain's root. The key is released under a policy that accepts the TD's MRTD and refused
 * (POLICY_DENIED) when the TD reports another one; a quote over other report data is refused at
 * attest.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { tdxVerifier } from "../src/attest/tdx/verifier.js";
import { tdxTsmAttester } from "../src/attest/tdx-attester.js";
import { isDadiError } from "../src/errors.js";
import { fetchResource } from "../src/kbs/client.js";
import { type FakeTsm, startFakeTsm } from "./attest/fake-tsm.js";
import {
	type SyntheticTdxPlatform,
	syntheticQuote,
	syntheticTdxPlatform,
} from "./attest/tdx-synthetic.js";
import { startTestBroker, type TestBroker } from "./broker/harness.js";
import { cleanupTempDirs, tempDir } from "./helpers.js";

const GOOD_MRTD = Buffer.alloc(48, 0x4d);
const SECRET = Buffer.from('{"kty":"oct","k":"guest-attester-tdx-key"}');
const PATH = "prod/image-key/app";
let b: TestBroker;
let fake: FakeTsm;
let platform: SyntheticTdxPlatform;
/** What the fake TD reports: its MRTD, and whether it answers with the inblob it was given. */
let mrtd = GOOD_MRTD;
let bindInblob = true;

beforeAll(async () => {
	platform = syntheticTdxPlatform();
	fake = startFakeTsm({
		provider: "tdx_guest",
		root: await tempDir(),
		produce: (inblob) => ({
			outblob: syntheticQuote(platform, {
				reportData: bindInblob ? inblob : Buffer.alloc(64, 0x77),
				mrtd,
			}),
		}),
	});
	b = await startTestBroker({
		insecureDev: false,
		verifiers: [tdxVerifier({ trust: platform.trust })],
	});
	await b.put(PATH, SECRET);
	const a = await b.admin();
	try {
		await a.call(
			"PUT",
			"/admin/v0/policy/tdx-guest",
			JSON.stringify({
				apiVersion: "dadi.dev/v1alpha1",
				kind: "KeyReleasePolicy",
				name: "tdx-guest",
				resources: ["prod/*/*"],
				values: { mrtds: [GOOD_MRTD.toString("hex")] },
				rules: [
					{ name: "is-tdx", expr: "tee == 'tdx'" },
					{ name: "no-debug", expr: "!claims.debug" },
					{ name: "mrtd", expr: "claims.measurement in values.mrtds" },
				],
			}),
			"application/json",
		);
	} finally {
		await a.close();
	}
});

afterAll(async () => {
	fake?.stop();
	await b?.close();
	await cleanupTempDirs();
});

describe("the TDX attester on a fake configfs-tsm, against the real broker", () => {
	it("gets the key when the MRTD matches; another MRTD is refused (POLICY_DENIED)", async () => {
		const r = await fetchResource(
			{ url: b.url, attester: tdxTsmAttester(fake.root), retryForMs: 0 },
			`kbs:///${PATH}`,
		);
		expect(r.value).toEqual(SECRET);
		expect(r.tee).toBe("tdx");
		mrtd = Buffer.alloc(48, 0x11);
		try {
			const e = await fetchResource(
				{ url: b.url, attester: tdxTsmAttester(fake.root), retryForMs: 0 },
				`kbs:///${PATH}`,
			).then(
				() => undefined,
				(x: unknown) => x,
			);
			expect(isDadiError(e, "POLICY_DENIED")).toBe(true);
			expect((e as Error).message).toMatch(/mrtd/);
		} finally {
			mrtd = GOOD_MRTD;
		}
	});

	it("a quote over other report data is refused by the attester before it is sent", async () => {
		bindInblob = false;
		try {
			const e = await fetchResource(
				{ url: b.url, attester: tdxTsmAttester(fake.root), retryForMs: 0 },
				`kbs:///${PATH}`,
			).then(
				() => undefined,
				(x: unknown) => x,
			);
			expect(isDadiError(e)).toBe(true);
			expect((e as Error).message).toMatch(/report.?data/i);
		} finally {
			bindInblob = true;
		}
	});
});
