/**
 * End to end with the broker and a synthetic SEV-SNP guest: reports signed by a test-only VCEK
 * under a test-only ASK/ARK, pinned by a test-only broker configuration. The key is released when
 * the policy matches and refused when the measurement or the debug bit does not; the same evidence
 * under AMD's pinned roots is refused. Each case runs with our raw evidence form and with the CoCo
 * form (Trustee's SnpEvidence, as guest-components sends it).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serdeFromReport } from "../src/attest/snp/serde-report.js";
import { createSnpVerifier } from "../src/attest/snp/verifier.js";
import { reportDataDigest } from "../src/kbs/report-data.js";
import { makeSyntheticSnp } from "./attest/snp-synthetic.js";
import {
	ManualGuest,
	startTestBroker,
	type TestBroker,
} from "./broker/harness.js";
import { cleanupTempDirs } from "./helpers.js";

const GOOD = Buffer.alloc(48, 0x5a);
const SECRET = Buffer.from('{"kty":"oct","k":"synthetic-snp-test-key"}');
const PATH = "prod/image-key/app";
let b: TestBroker;

type Form = "raw" | "coco";

/**
 * Evidence for this guest's session: a synthetic report binding its nonce and tee-pubkey, in our
 * raw form or as a CoCo guest sends it (Trustee's SnpEvidence: serde report and cert_chain).
 */
function evidence(
	g: ManualGuest,
	o: { measurement?: Buffer; debug?: boolean; form?: Form } = {},
) {
	const s = makeSyntheticSnp({
		measurement: o.measurement ?? GOOD,
		debug: o.debug ?? false,
		reportData: reportDataDigest({ nonce: g.nonce, teePubKey: g.key.jwk }),
	});
	if (o.form === "coco")
		return {
			attestation_report: serdeFromReport(s.report),
			cert_chain: [
				{ cert_type: "VCEK", data: [...s.leaf] },
				{ cert_type: "ASK", data: [...s.chain.ask] },
				{ cert_type: "ARK", data: [...s.chain.ark] },
			],
		};
	return {
		report: s.report.toString("base64"),
		certs: {
			vcek: s.leaf.toString("base64"),
			ask: s.chain.ask.toString("base64"),
			ark: s.chain.ark.toString("base64"),
		},
	};
}

beforeAll(async () => {
	const trust = makeSyntheticSnp().trust;
	b = await startTestBroker({
		insecureDev: false,
		verifiers: [createSnpVerifier({ trust })],
	});
	await b.put(PATH, SECRET);
	await b.putPolicy({
		name: "snp-test",
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
	await b?.close();
	await cleanupTempDirs();
});

async function attest(
	o: { measurement?: Buffer; debug?: boolean; form?: Form } = {},
) {
	const g = new ManualGuest(b.url);
	expect((await g.auth("snp")).status).toBe(200);
	const r = await g.attest({ evidence: evidence(g, o) });
	return { g, r };
}

describe.each(["raw", "coco"] as const)(
	"a synthetic SEV-SNP guest (%s evidence form)",
	(form) => {
		it("gets the key when the policy matches (measurement, no debug)", async () => {
			const { g, r } = await attest({ form });
			expect(r.status).toBe(200);
			expect(await g.released(PATH)).toEqual(SECRET);
			const claims = g.tokenClaims("snp");
			expect(claims).toMatchObject({
				tee: "snp",
				debug: false,
				measurement: GOOD.toString("hex"),
			});
		});

		it("is refused (403) when the measurement or the debug bit does not match", async () => {
			for (const o of [
				{ measurement: Buffer.alloc(48, 0x11), form },
				{ debug: true, form },
			]) {
				const { g, r } = await attest(o);
				expect(r.status).toBe(200); // the evidence is genuine …
				const res = await g.resource(PATH);
				expect(res.status).toBe(403); // … but the policy says no
				expect(res.text).toMatch(o.debug ? /no-debug/ : /measurement/);
			}
		});

		it("is refused at attest (401) when the report does not bind the session", async () => {
			const g = new ManualGuest(b.url);
			await g.auth("snp");
			const other = new ManualGuest(b.url);
			await other.auth("snp");
			const r = await g.attest({ evidence: evidence(other, { form }) }); // binds the other session's nonce and key
			expect(r.status).toBe(401);
		});

		it("is refused by a broker that pins AMD's roots only", async () => {
			const prod = await startTestBroker({
				insecureDev: false,
				verifiers: [createSnpVerifier()],
			});
			try {
				const g = new ManualGuest(prod.url);
				await g.auth("snp");
				const r = await g.attest({ evidence: evidence(g, { form }) });
				expect(r.status).toBe(401);
				expect(r.text).toMatch(/AttestationFailed/);
			} finally {
				await prod.close();
			}
		});
	},
);
