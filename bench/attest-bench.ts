/**
 * The attestation section of `npm run bench`: verifications per second of a real SEV-SNP report
 * (chain cached) and a real TDX quote (collateral cached) on one core, each as a ratio to the raw
 * node:crypto signature verifications it contains — the floor cost: one ECDSA P-384 verify for
 * SNP; two ECDSA P-256 verifies (the quote by the attestation key, the QE report by the PCK) for
 * TDX. Target: >= 0.5 of the floor. Needs the shared fixtures (../shared/fixtures/attestation or
 * $DADI_FIXTURES).
 */
import { verify, X509Certificate } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
	certificatesIn,
	loadTdxCollateral,
} from "../src/attest/evidence-files.js";
import { createSnpContext } from "../src/attest/snp/verify.js";
import { p256Key } from "../src/attest/tdx/collateral.js";
import { parseQuote } from "../src/attest/tdx/quote.js";
import { DEFAULT_TDX_TRUST } from "../src/attest/tdx/trust.js";
import { createTdxContext } from "../src/attest/tdx/verify.js";
import { markdownTable } from "./report.js";

export interface AttestBenchRow {
	evidence: string;
	perSecond: number;
	floorPerSecond: number;
	ratio: number;
	usPerVerification: number;
	floorUs: number;
}

export interface AttestBenchReport {
	schema: "dadi-bench-attest/1";
	seconds: number;
	rows: AttestBenchRow[];
	target: number;
}

export function attestFixtures(repo: string): string | undefined {
	return [
		process.env.DADI_FIXTURES,
		join(repo, "../shared/fixtures/attestation"),
	]
		.filter((x): x is string => Boolean(x))
		.find(
			(d) =>
				existsSync(join(d, "snp/milan-report.bin")) &&
				existsSync(join(d, "tdx/spr-e4-quote-v4.dat")),
		);
}

/** Calls `fn` in batches for about `seconds`; returns calls per second (median of 3 slices). */
function rate(fn: () => void, seconds: number): number {
	for (let i = 0; i < 50; i++) fn(); // warm up: JIT, caches
	const rates: number[] = [];
	for (let slice = 0; slice < 3; slice++) {
		const end = performance.now() + (seconds * 1000) / 3;
		let n = 0;
		const t0 = performance.now();
		while (performance.now() < end) {
			for (let i = 0; i < 20; i++) fn();
			n += 20;
		}
		rates.push(n / ((performance.now() - t0) / 1000));
	}
	return rates.sort((a, b) => a - b)[1] as number;
}

/** A little-endian 72-byte SNP signature component → 48 big-endian bytes. */
function le48(b: Buffer): Buffer {
	return Buffer.from(b.subarray(0, 48)).reverse();
}

export async function runAttestBench(o: {
	fixtures: string;
	seconds: number;
	log: (l: string) => void;
	print: (t: string) => void;
}): Promise<AttestBenchReport> {
	const snpDir = join(o.fixtures, "snp");
	const tdxDir = join(o.fixtures, "tdx");
	const rows: AttestBenchRow[] = [];

	// SEV-SNP: the Milan report, its VCEK and chain; the context caches the verified chain and leaf.
	const report = readFileSync(join(snpDir, "milan-report.bin"));
	const leaf = readFileSync(join(snpDir, "milan-vcek.der"));
	const [ask, ark] = certificatesIn(
		readFileSync(join(snpDir, "ask_ark_milan.pem")),
		"ask_ark_milan.pem",
	) as [Buffer, Buffer];
	const snp = createSnpContext();
	const snpNow = new Date("2024-06-01T00:00:00Z");
	const snpOnce = () =>
		snp.verify({ report, leaf, chain: { ask, ark }, now: snpNow });
	snpOnce();
	const vcek = new X509Certificate(leaf).publicKey;
	const signed = report.subarray(0, 0x2a0);
	const sig = Buffer.concat([
		le48(report.subarray(0x2a0, 0x2e8)),
		le48(report.subarray(0x2e8, 0x330)),
	]);
	const snpFloor = () => {
		if (
			!verify("sha384", signed, { key: vcek, dsaEncoding: "ieee-p1363" }, sig)
		)
			throw new Error("SNP floor");
	};
	snpFloor();
	o.log("attestation: SEV-SNP report (Milan, VCEK; chain cached)…");
	const snpRate = rate(snpOnce, o.seconds);
	const snpFloorRate = rate(snpFloor, o.seconds);
	rows.push(
		row("SEV-SNP report v2 (Milan, VCEK), chain cached", snpRate, snpFloorRate),
	);

	// TDX: the SPR E4 quote with its collateral (TCB info, QE identity, CRLs), cached in the context.
	const quote = readFileSync(join(tdxDir, "spr-e4-quote-v4.dat"));
	const collateral = await loadTdxCollateral(tdxDir, "50806f000000");
	const tdx = createTdxContext(DEFAULT_TDX_TRUST);
	const tdxNow = new Date("2023-06-25T00:00:00Z");
	const tdxOnce = () => tdx.verify({ quote, collateral, now: tdxNow });
	if (!tdxOnce().collateralChecked)
		throw new Error("TDX bench: the collateral was not checked");
	const q = parseQuote(quote);
	const ak = p256Key(q.attestationKey);
	const pck = new X509Certificate(q.pckChain[0] as Buffer).publicKey;
	const tdxFloor = () => {
		if (
			!verify(
				"sha256",
				q.signedRegion,
				{ key: ak, dsaEncoding: "ieee-p1363" },
				q.signature,
			)
		)
			throw new Error("TDX floor (quote)");
		if (
			!verify(
				"sha256",
				q.qeReport.raw,
				{ key: pck, dsaEncoding: "ieee-p1363" },
				q.qeReportSignature,
			)
		)
			throw new Error("TDX floor (QE report)");
	};
	tdxFloor();
	o.log("attestation: TDX quote v4 (SPR E4; collateral cached)…");
	const tdxRate = rate(tdxOnce, o.seconds);
	const tdxFloorRate = rate(tdxFloor, o.seconds);
	rows.push(
		row(
			"TDX quote v4 (SPR E4) with TCB info, QE identity, CRLs cached",
			tdxRate,
			tdxFloorRate,
		),
	);

	const r: AttestBenchReport = {
		schema: "dadi-bench-attest/1",
		seconds: o.seconds,
		rows,
		target: 0.5,
	};
	o.print(`${formatAttest(r)}\n`);
	return r;
}

function row(
	evidence: string,
	perSecond: number,
	floorPerSecond: number,
): AttestBenchRow {
	return {
		evidence,
		perSecond,
		floorPerSecond,
		ratio: perSecond / floorPerSecond,
		usPerVerification: 1e6 / perSecond,
		floorUs: 1e6 / floorPerSecond,
	};
}

export function formatAttest(r: AttestBenchReport): string {
	const table = markdownTable(
		[
			"evidence",
			"verifications/s",
			"µs each",
			"floor: raw signature checks/s",
			"floor µs",
			"ratio",
		],
		r.rows.map((x) => [
			x.evidence,
			Math.round(x.perSecond).toLocaleString("en-US"),
			x.usPerVerification.toFixed(0),
			Math.round(x.floorPerSecond).toLocaleString("en-US"),
			x.floorUs.toFixed(0),
			x.ratio.toFixed(2),
		]),
		1,
	);
	const targets = r.rows
		.map(
			(x) =>
				`  ${x.evidence}: ${x.ratio.toFixed(2)} ${x.ratio >= r.target ? "MET" : "MISSED"}`,
		)
		.join("\n");
	return `attestation verification on one core (this process), median of 3 slices of ${(r.seconds / 3).toFixed(1)} s; floor = the node:crypto signature verifications the evidence contains (SNP: one ECDSA P-384; TDX: two ECDSA P-256)\n\n${table}\n\ntarget: verifications/s >= ${r.target} x the floor\n${targets}`;
}
