/**
 * End to end: dadi-guest's TDX attester on a fake configfs-tsm (provider tdx_guest), against the
 * real broker. The fake kernel answers each inblob with a v4 quote signed under a test-only PCK
 * chain (test/attest/tdx-synthetic.ts) whose REPORTDATA is that inblob; the broker pins only that
 * chain's root. The key is released under a policy that accepts the TD's MRTD and refused
 * (POLICY_DENIED) when the TD reports another one; a quote over other report data is refused at
 * attest. With a CC event log in the fake ACPI table, the broker replays it against the quote's
 * RTMRs and a policy pinning the kernel's digest releases the key — and refuses for another kernel.
 */
import { createHash } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { tdxVerifier } from "../src/attest/tdx/verifier.js";
import { tdxTsmAttester } from "../src/attest/tdx-attester.js";
import { isDadiError } from "../src/errors.js";
import { fetchResource } from "../src/kbs/client.js";
import { syntheticCcel } from "./attest/ccel-synthetic.js";
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
/** The RTMRs the fake TD's quotes carry (those of its event log, when it has one). */
let rtmrs: Buffer[] | undefined;
const GOOD_KERNEL = Buffer.from("the kernel this policy pins");

/** A boot log whose kernel is `kernel` (an EFI application measured into RTMR1). */
function bootLog(kernel: Buffer) {
	return syntheticCcel([
		{ index: 1, type: 0x80000007, data: Buffer.from("firmware") },
		{ index: 2, type: 0x80000003, data: kernel },
	]);
}

beforeAll(async () => {
	platform = syntheticTdxPlatform();
	fake = startFakeTsm({
		provider: "tdx_guest",
		root: await tempDir(),
		produce: (inblob) => ({
			outblob: syntheticQuote(platform, {
				reportData: bindInblob ? inblob : Buffer.alloc(64, 0x77),
				mrtd,
				rtmrs,
			}),
		}),
	});
	b = await startTestBroker({
		insecureDev: false,
		verifiers: [tdxVerifier({ trust: platform.trust })],
	});
	await b.put(PATH, SECRET);
	await b.put("kernel/image-key/app", SECRET);
	await b.putPolicy({
		name: "tdx-guest",
		resources: ["prod/*/*"],
		values: { mrtds: [GOOD_MRTD.toString("hex")] },
		rules: [
			{ name: "is-tdx", expr: "tee == 'tdx'" },
			{ name: "no-debug", expr: "!claims.debug" },
			{ name: "mrtd", expr: "claims.measurement in values.mrtds" },
		],
	});
	await b.putPolicy({
		name: "tdx-kernel",
		resources: ["kernel/*/*"],
		values: {
			kernels: [createHash("sha384").update(GOOD_KERNEL).digest("hex")],
		},
		rules: [
			{ name: "is-tdx", expr: "tee == 'tdx'" },
			{ name: "event-log", expr: "claims.tee_specific.ccel_present" },
			{
				name: "kernel",
				expr: "claims.tee_specific.ccel_kernel in values.kernels",
			},
		],
	});
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

	it("sends the CC event log; the broker replays it, and the policy's kernel decides", async () => {
		const file = join(await tempDir(), "CCEL");
		const kbs = (ccel: string) =>
			fetchResource(
				{
					url: b.url,
					attester: tdxTsmAttester(fake.root, { ccel }),
					retryForMs: 0,
				},
				"kbs:///kernel/image-key/app",
			).then(
				(r) => r,
				(x: unknown) => x as Error,
			);
		try {
			const good = bootLog(GOOD_KERNEL);
			await writeFile(file, good.log);
			rtmrs = good.rtmrs;
			const r = await kbs(file);
			expect(r).not.toBeInstanceOf(Error);
			expect((r as { value: Buffer }).value).toEqual(SECRET);
			// another kernel: the log replays (it is this TD's), the policy refuses it
			const other = bootLog(Buffer.from("some other kernel"));
			await writeFile(file, other.log);
			rtmrs = other.rtmrs;
			const denied = await kbs(file);
			expect(isDadiError(denied, "POLICY_DENIED")).toBe(true);
			// a log that is not this TD's: refused at attest
			await writeFile(file, good.log);
			const foreign = await kbs(file);
			expect(isDadiError(foreign)).toBe(true);
			expect((foreign as Error).message).toMatch(
				/EVENTLOG_MISMATCH|event log/i,
			);
			// no log at all: the policy wants one
			rtmrs = undefined;
			expect(
				isDadiError(await kbs(join(file, "..", "absent")), "POLICY_DENIED"),
			).toBe(true);
		} finally {
			rtmrs = undefined;
		}
	});
});
