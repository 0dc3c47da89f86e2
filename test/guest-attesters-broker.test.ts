/**
 * End to end: dadi-guest's SEV-SNP attester on a fake configfs-tsm, against the real broker. The
 * fake kernel answers each inblob with a report signed by a synthetic VCEK (and the VCEK/ASK/ARK in
 * auxblob's certificate table); the broker trusts only the synthetic ARK. The key is released under
 * a matching policy and refused under a non-matching one — through the library client and through
 * `dadi-guest attest --attester snp --tsm-root` (and `auto` with $DADI_TSM_ROOT).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createSnpVerifier } from "../src/attest/snp/verifier.js";
import { snpTsmAttester } from "../src/attest/snp-attester.js";
import { isDadiError } from "../src/errors.js";
import { fetchResource } from "../src/kbs/client.js";
import { certTable } from "./attest/cert-table.js";
import { type FakeTsm, startFakeTsm } from "./attest/fake-tsm.js";
import {
	signedReport,
	syntheticChain,
	syntheticLeaf,
	syntheticTrust,
} from "./attest/snp-synthetic.js";
import { startTestBroker, type TestBroker } from "./broker/harness.js";
import { BIN, cleanupTempDirs, runCli, tempDir } from "./helpers.js";

const GOOD = Buffer.alloc(48, 0x5a);
const SECRET = Buffer.from('{"kty":"oct","k":"guest-attester-snp-key"}');
const PATH = "prod/image-key/app";
let b: TestBroker;
let fake: FakeTsm;
/** The measurement the fake guest's reports carry. */
let measurement = GOOD;

beforeAll(async () => {
	const leaf = syntheticLeaf();
	const chain = syntheticChain();
	const table = certTable({ vcek: leaf.der, ask: chain.ask, ark: chain.ark });
	fake = startFakeTsm({
		provider: "sev_guest",
		root: await tempDir(),
		produce: (inblob) => ({
			outblob: signedReport(leaf.key, { reportData: inblob, measurement }),
			auxblob: table,
		}),
	});
	b = await startTestBroker({
		insecureDev: false,
		verifiers: [createSnpVerifier({ trust: syntheticTrust() })],
	});
	await b.put(PATH, SECRET);
	await b.putPolicy({
		name: "snp-guest",
		resources: ["prod/*/*"],
		values: { measurements: [GOOD.toString("hex")] },
		rules: [
			{ name: "is-snp", expr: "tee == 'snp'" },
			{ name: "no-debug", expr: "!claims.debug" },
			{
				name: "measurement",
				expr: "claims.measurement in values.measurements",
			},
		],
	});
});

afterAll(async () => {
	fake?.stop();
	await b?.close();
	await cleanupTempDirs();
});

describe("the SEV-SNP attester on a fake configfs-tsm, against the real broker", () => {
	it("gets the key when the policy matches, and is refused (POLICY_DENIED) when the measurement does not", async () => {
		measurement = GOOD;
		const r = await fetchResource(
			{ url: b.url, attester: snpTsmAttester(fake.root), retryForMs: 0 },
			`kbs:///${PATH}`,
		);
		expect(r.value).toEqual(SECRET);
		expect(r.tee).toBe("snp");
		// sent in the Confidential Containers form (Trustee's SnpEvidence), with the host's certificates
		const ev = (await snpTsmAttester(fake.root).evidence(
			Buffer.alloc(48, 1),
		)) as Record<string, unknown>;
		expect(Object.keys(ev)).toEqual(["attestation_report", "cert_chain"]);
		expect(
			(ev.cert_chain as { cert_type: string }[]).map((c) => c.cert_type),
		).toEqual(["VCEK", "ASK", "ARK"]);
		const claims = JSON.parse(
			Buffer.from(r.token.split(".")[1] as string, "base64url").toString(),
		).submods.snp["dadi.claims"];
		expect(claims).toMatchObject({
			tee: "snp",
			measurement: GOOD.toString("hex"),
		});
		measurement = Buffer.alloc(48, 0x11);
		try {
			await fetchResource(
				{ url: b.url, attester: snpTsmAttester(fake.root), retryForMs: 0 },
				`kbs:///${PATH}`,
			);
			expect.unreachable();
		} catch (e) {
			expect(isDadiError(e, "POLICY_DENIED")).toBe(true);
			expect((e as Error).message).toMatch(/measurement/);
		} finally {
			measurement = GOOD;
		}
	});

	it("dadi-guest attest --attester snp --tsm-root DIR, and auto with $DADI_TSM_ROOT", async () => {
		const common = [
			"attest",
			"--broker",
			b.url,
			"--resource",
			`kbs:///${PATH}`,
			"--broker-retry",
			"0",
			"--json",
		];
		const snp = await runCli(BIN.guest, [
			...common,
			"--attester",
			"snp",
			"--tsm-root",
			fake.root,
		]);
		expect(snp.stderr).toBe("");
		expect(snp.code).toBe(0);
		expect(JSON.parse(snp.stdout)).toMatchObject({
			ok: true,
			tee: "snp",
			released: { bytes: SECRET.length },
		});
		const auto = await runCli(BIN.guest, common, undefined, {
			...process.env,
			DADI_TSM_ROOT: fake.root,
		});
		expect(auto.code).toBe(0);
		expect(JSON.parse(auto.stdout).tee).toBe("snp");
		measurement = Buffer.alloc(48, 0x22);
		try {
			const denied = await runCli(BIN.guest, [
				...common,
				"--attester",
				"snp",
				"--tsm-root",
				fake.root,
			]);
			expect(denied.code).toBe(9);
			expect(denied.stderr).toMatch(/POLICY_DENIED/);
		} finally {
			measurement = GOOD;
		}
	});
});
