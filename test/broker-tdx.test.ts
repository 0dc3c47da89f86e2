/**
 * End to end with the broker and a synthetic TDX guest sending evidence as Confidential Containers
 * guests do (Trustee's TdxEvidence: quote and cc_eventlog): quotes signed under a test-only PCK
 * chain, pinned by a test-only broker configuration, with a CC event log whose replay gives the
 * quote's RTMRs. The key is released when the policy's kernel and initrd digests (from the event
 * log) match; refused (403) for another kernel or without a log; refused at attest (401) for a log
 * that is not the quote's TD, or under Intel's real root.
 */
import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { tdxVerifier } from "../src/attest/tdx/verifier.js";
import { reportDataDigest } from "../src/kbs/report-data.js";
import { syntheticCcel, taggedData } from "./attest/ccel-synthetic.js";
import {
	type SyntheticTdxPlatform,
	syntheticQuote,
	syntheticTdxPlatform,
} from "./attest/tdx-synthetic.js";
import {
	ManualGuest,
	startTestBroker,
	type TestBroker,
} from "./broker/harness.js";
import { cleanupTempDirs } from "./helpers.js";

const SECRET = Buffer.from('{"kty":"oct","k":"synthetic-tdx-test-key"}');
const PATH = "prod/image-key/app";
const GOOD_KERNEL = Buffer.from("the good kernel image");
const INITRD_DIGEST = createHash("sha384").update("the initrd").digest();
let b: TestBroker;
let platform: SyntheticTdxPlatform;

/** A boot log: the kernel as an EFI application (RTMR1), the initrd as a tagged event (RTMR2). */
function bootLog(kernel: Buffer) {
	return syntheticCcel([
		{ index: 1, type: 0x80000007, data: Buffer.from("firmware things") },
		{ index: 2, type: 0x80000003, data: kernel },
		{
			index: 3,
			type: 6,
			data: taggedData("Linux initrd"),
			digest: INITRD_DIGEST,
		},
		{ index: 4, type: 3, data: Buffer.from("not extended") },
	]);
}

type Log = "good" | "other-kernel" | "foreign" | "none";

function evidence(g: ManualGuest, log: Log = "good") {
	const mine = bootLog(
		log === "other-kernel" ? Buffer.from("another kernel") : GOOD_KERNEL,
	);
	const sent = log === "foreign" ? bootLog(Buffer.from("some other TD")) : mine;
	const quote = syntheticQuote(platform, {
		reportData: reportDataDigest({ nonce: g.nonce, teePubKey: g.key.jwk }),
		rtmrs: mine.rtmrs,
	});
	return {
		cc_eventlog: log === "none" ? null : sent.log.toString("base64"),
		quote: quote.toString("base64"),
	};
}

beforeAll(async () => {
	platform = syntheticTdxPlatform();
	b = await startTestBroker({
		insecureDev: false,
		verifiers: [tdxVerifier({ trust: platform.trust })],
	});
	await b.put(PATH, SECRET);
	const kernelDigest = createHash("sha384").update(GOOD_KERNEL).digest("hex");
	await b.putPolicy({
		name: "tdx-test",
		resources: ["prod/*/*"],
		values: {
			kernels: [kernelDigest],
			initrds: [INITRD_DIGEST.toString("hex")],
		},
		rules: [
			{ name: "is-tdx", expr: "tee == 'tdx'" },
			{ name: "no-debug", expr: "!claims.debug" },
			{
				name: "event-log",
				expr: "claims.tee_specific.ccel_present == true",
			},
			{
				name: "kernel",
				expr: "claims.tee_specific.ccel_kernel in values.kernels",
			},
			{
				name: "initrd",
				expr: "claims.tee_specific.ccel_initrd in values.initrds",
			},
		],
	});
});

afterAll(async () => {
	await b?.close();
	await cleanupTempDirs();
});

async function attest(log: Log = "good", broker = b) {
	const g = new ManualGuest(broker.url);
	expect((await g.auth("tdx")).status).toBe(200);
	const r = await g.attest({ evidence: evidence(g, log) });
	return { g, r };
}

describe("a synthetic TDX guest with a CC event log (TdxEvidence)", () => {
	it("gets the key when the event log's kernel and initrd match the policy", async () => {
		const { g, r } = await attest("good");
		expect(r.status, r.text).toBe(200);
		expect(await g.released(PATH)).toEqual(SECRET);
		const claims = g.tokenClaims("tdx") as {
			tee_specific: Record<string, unknown> & { ccel_events: unknown[] };
		};
		expect(claims.tee_specific).toMatchObject({
			ccel_present: true,
			ccel_initrd: INITRD_DIGEST.toString("hex"),
		});
		expect(claims.tee_specific.ccel_events).toHaveLength(3);
	});

	it("is refused (403) for another kernel, or without an event log", async () => {
		for (const [log, rule] of [
			["other-kernel", /kernel/],
			["none", /event-log/],
		] as const) {
			const { g, r } = await attest(log);
			expect(r.status, r.text).toBe(200); // genuine evidence …
			const res = await g.resource(PATH);
			expect(res.status).toBe(403); // … that the policy refuses
			expect(res.text).toMatch(rule);
		}
	});

	it("is refused at attest (401) when the event log is not the quote's TD's (EVENTLOG_MISMATCH)", async () => {
		const { r } = await attest("foreign");
		expect(r.status).toBe(401);
		expect(r.text).toMatch(/AttestationFailed/);
		expect(r.text).toMatch(/event log/);
	});

	it("is refused by a broker that pins Intel's root only", async () => {
		const prod = await startTestBroker({
			insecureDev: false,
			verifiers: [tdxVerifier()],
		});
		try {
			const { r } = await attest("good", prod);
			expect(r.status).toBe(401);
			expect(r.text).toMatch(/AttestationFailed/);
		} finally {
			await prod.close();
		}
	});
});
