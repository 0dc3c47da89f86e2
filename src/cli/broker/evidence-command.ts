/**
 * `dadi-broker evidence verify`: offline verification of SEV-SNP or TDX evidence, printing the
 * normalized claims; exit 0 only when the evidence verified (9 with the specific code otherwise).
 */
import { readFile, stat } from "node:fs/promises";
import type { Command } from "commander";
import { createAzSnpVtpmVerifier } from "../../attest/azure/snp-vtpm-verifier.js";
import { createAzTdxVtpmVerifier } from "../../attest/azure/tdx-vtpm-verifier.js";
import type { Claims } from "../../attest/claims.js";
import {
	loadSnpCertFiles,
	loadTdxCollateral,
	loadTdxCollateralReport,
	type SnpCertFiles,
	snpCertSourceFromDir,
} from "../../attest/evidence-files.js";
import { parseReport } from "../../attest/snp/report.js";
import {
	type CertSource,
	parseSnpEvidence,
} from "../../attest/snp/verifier.js";
import { verifySnp } from "../../attest/snp/verify.js";
import { parseCcel } from "../../attest/tdx/ccel.js";
import type { TdxCollateralReport } from "../../attest/tdx/collateral-dir.js";
import { parseTdxEvidenceDocument } from "../../attest/tdx/evidence.js";
import { addEventLogClaims } from "../../attest/tdx/verifier.js";
import { quoteFmspc, quotePckCa, verifyTdx } from "../../attest/tdx/verify.js";
import { DadiError, fromSystemError } from "../../errors.js";
import { printable } from "../../printable.js";
import { printJson, runAction } from "../common.js";

interface Flags {
	tee: string;
	evidence: string;
	certs?: string[];
	collateral?: string;
	tdxCollateral?: string;
	now?: string;
	reportData?: string;
	json?: boolean;
}

export function evidenceCommand(program: Command): void {
	program
		.command("evidence")
		.description("attestation evidence, offline")
		.command("verify")
		.description(
			"verify SEV-SNP or TDX evidence against the pinned roots and print the normalized claims (docs/claims.md); exit 0 only when verified",
		)
		.requiredOption(
			"--tee <snp|tdx|az-snp-vtpm|az-tdx-vtpm>",
			"the TEE (the KBS names azsnpvtpm and aztdxvtpm are accepted too)",
		)
		.requiredOption(
			"--evidence <FILE>",
			'snp: the 1184-byte ATTESTATION_REPORT, the broker\'s evidence JSON or Trustee\'s SnpEvidence JSON; tdx: the quote or {"quote": base64, "cc_eventlog": base64 | null}; az-snp-vtpm, az-tdx-vtpm: Trustee\'s evidence JSON (v1/v2)',
		)
		.option(
			"--certs <FILE...>",
			"snp: VCEK/VLEK and ASK/ARK certificates (PEM or DER files, e.g. AMD KDS's vcek and cert_chain) or a directory of them; az-snp-vtpm: the ASK/ARK",
		)
		.option(
			"--collateral <DIR>",
			"tdx, az-tdx-vtpm: a TDX collateral directory: Intel PCS files, dcap-qvl bundles or PCS Client Tool files (docs/broker.md)",
		)
		.option(
			"--tdx-collateral <DIR>",
			"the same as --collateral (as serve names it)",
		)
		.option("--now <ISO8601>", "the verification time (default: now)")
		.option(
			"--report-data <HEX>",
			"also require REPORT_DATA to start with these bytes (rest zero)",
		)
		.option("--json", "print the result as JSON")
		.action(async (f: Flags) =>
			runAction("dadi-broker evidence verify", Boolean(f.json), async () => {
				if (f.tdxCollateral !== undefined) {
					if (f.collateral !== undefined && f.collateral !== f.tdxCollateral)
						throw new DadiError(
							"USAGE",
							"give the collateral directory once (--collateral or --tdx-collateral)",
						);
					f.collateral = f.tdxCollateral;
				}
				const now = f.now === undefined ? new Date() : new Date(f.now);
				if (Number.isNaN(now.getTime()))
					throw new DadiError(
						"USAGE",
						`--now "${f.now}": not an ISO 8601 time`,
					);
				const expectedReportData =
					f.reportData === undefined
						? undefined
						: hexArg(f.reportData, "--report-data");
				const bytes = await readFile(f.evidence).catch((e) => {
					throw fromSystemError(e, f.evidence, "reading the evidence");
				});
				const isJson = bytes.subarray(0, 1).toString() === "{";
				let out: Record<string, unknown>;
				let claims: Claims;
				if (f.tee === "snp") {
					if (f.collateral)
						throw new DadiError(
							"USAGE",
							"--collateral is for tdx; give snp certificates with --certs",
						);
					const ev = isJson
						? parseSnpEvidence(bytes.toString("utf8"))
						: { report: bytes, certs: {} };
					const certs = await snpCerts(f.certs ?? [], ev.report);
					const leaf = ev.certs.vcek ?? ev.certs.vlek ?? certs.leaf;
					const ask = ev.certs.ask ?? certs.ask;
					const ark = ev.certs.ark ?? certs.ark;
					if (!leaf || !ask || !ark)
						throw new DadiError(
							"EVIDENCE_INVALID",
							`missing certificates: ${[!leaf && "VCEK/VLEK", !ask && "ASK", !ark && "ARK"].filter(Boolean).join(", ")}; give them with --certs (AMD KDS: vcek/v1/<product>/<hwid>?… and cert_chain)`,
						);
					const r = verifySnp({
						report: ev.report,
						leaf,
						chain: { ask, ark },
						now,
						expectedReportData,
					});
					claims = r.claims;
					out = { tee: "snp", product: r.product, signer: r.signer };
				} else if (f.tee === "tdx") {
					if (f.certs)
						throw new DadiError(
							"USAGE",
							"--certs is for snp; TDX quotes carry their PCK chain",
						);
					const ev = isJson
						? parseTdxEvidenceDocument(bytes.toString("utf8"))
						: { quote: bytes };
					const quote = ev.quote;
					const log = ev.ccEventlog ? parseCcel(ev.ccEventlog) : undefined;
					const loaded = f.collateral
						? await loadTdxCollateralReport(
								f.collateral,
								quoteFmspc(quote),
								quotePckCa(quote),
							)
						: undefined;
					if (loaded && !f.json) writeCollateralReport(loaded.report);
					const r = verifyTdx({
						quote,
						collateral: loaded?.collateral,
						now,
						expectedReportData,
					});
					addEventLogClaims(r.claims, r.quote.body.rtmr, log);
					claims = r.claims;
					out = {
						tee: "tdx",
						fmspc: r.pck.fmspc,
						tcbStatus: r.tcbStatus ?? null,
						advisoryIds: r.advisoryIds,
						collateralChecked: r.collateralChecked,
						...(loaded ? { collateral: loaded.report } : {}),
					};
				} else if (f.tee === "az-snp-vtpm" || f.tee === "azsnpvtpm") {
					if (f.collateral)
						throw new DadiError(
							"USAGE",
							"--collateral is for tdx; give the AMD ASK/ARK with --certs",
						);
					if (!expectedReportData)
						throw new DadiError(
							"USAGE",
							"--tee az-snp-vtpm needs --report-data: the vTPM quote's nonce must equal it",
						);
					claims = await createAzSnpVtpmVerifier({
						certSource: await azSnpCerts(f.certs ?? []),
					}).verify({
						evidence: bytes.toString("utf8"),
						expectedReportData,
						now,
					});
					out = {
						tee: "azsnpvtpm",
						product: claims.tee_specific.product,
						signer: "vcek",
					};
				} else if (f.tee === "az-tdx-vtpm" || f.tee === "aztdxvtpm") {
					if (f.certs)
						throw new DadiError(
							"USAGE",
							"--certs is for snp; TD quotes carry their PCK chain",
						);
					if (!expectedReportData)
						throw new DadiError(
							"USAGE",
							"--tee az-tdx-vtpm needs --report-data: the vTPM quote's nonce must equal it",
						);
					const dir = f.collateral;
					claims = await createAzTdxVtpmVerifier(
						dir
							? {
									collateralSource: (fmspc, pckCa) =>
										loadTdxCollateral(dir, fmspc, pckCa),
								}
							: {},
					).verify({
						evidence: bytes.toString("utf8"),
						expectedReportData,
						now,
					});
					out = {
						tee: "aztdxvtpm",
						fmspc: claims.tee_specific.fmspc,
						tcbStatus: claims.tcb_status || null,
						collateralChecked: claims.tee_specific.collateral_checked,
					};
				} else
					throw new DadiError(
						"USAGE",
						`--tee "${f.tee}": snp, tdx, az-snp-vtpm (azsnpvtpm) or az-tdx-vtpm (aztdxvtpm)`,
					);
				if (f.json)
					printJson({
						ok: true,
						verified: true,
						...out,
						now: now.toISOString(),
						claims,
					});
				else
					process.stdout.write(
						`verified ${out.tee === "azsnpvtpm" ? `Azure SEV-SNP vTPM (${out.product})` : out.tee === "aztdxvtpm" ? `Azure TDX vTPM (FMSPC ${out.fmspc}, TCB ${out.tcbStatus ?? "not checked: no collateral"})` : f.tee === "snp" ? `SEV-SNP (${out.product}, signed by the ${String(out.signer).toUpperCase()})` : `TDX (FMSPC ${out.fmspc}, TCB ${out.tcbStatus ?? "not checked: no collateral"})`} at ${now.toISOString()}\n${JSON.stringify(claims, null, 2)}\n`,
					);
			}),
		);
}

/** The collateral report, for people (on stderr: stdout is the result). */
function writeCollateralReport(r: TdxCollateralReport): void {
	const lines = [`TDX collateral ${r.dir} for FMSPC ${r.fmspc}:`];
	for (const u of r.used)
		lines.push(`  used     ${u.file} (${u.form}): ${u.gives.join(", ")}`);
	for (const i of r.ignored) lines.push(`  ignored  ${i.file}: ${i.reason}`);
	for (const m of r.missing) lines.push(`  missing  ${m.what}: ${m.from}`);
	process.stderr.write(`${lines.map(printable).join("\n")}\n`);
}

function hexArg(v: string, what: string): Buffer {
	if (!/^([0-9a-fA-F]{2}){1,64}$/.test(v))
		throw new DadiError("USAGE", `${what}: 1 to 64 bytes of hex`);
	return Buffer.from(v, "hex");
}

async function snpCerts(
	paths: string[],
	report: Buffer,
): Promise<SnpCertFiles> {
	const files: string[] = [];
	let fromDir: SnpCertFiles = {};
	for (const p of paths) {
		const st = await stat(p).catch((e) => {
			throw fromSystemError(e, p, "reading certificates");
		});
		if (!st.isDirectory()) {
			files.push(p);
			continue;
		}
		const r = parseReport(report);
		const source = await snpCertSourceFromDir(p);
		fromDir = await source({
			chipId: r.chipId,
			reportedTcb: r.reportedTcb,
			signer: r.signingKey,
		});
	}
	const given = await loadSnpCertFiles(files);
	return {
		leaf: given.leaf ?? fromDir.leaf,
		ask: given.ask ?? fromDir.ask,
		ark: given.ark ?? fromDir.ark,
	};
}

/** The ASK/ARK for Azure SNP evidence: from files, or a directory (by the VCEK's product). */
async function azSnpCerts(paths: string[]): Promise<CertSource> {
	const files: string[] = [];
	const dirs: CertSource[] = [];
	for (const p of paths) {
		const st = await stat(p).catch((e) => {
			throw fromSystemError(e, p, "reading certificates");
		});
		if (st.isDirectory()) dirs.push(await snpCertSourceFromDir(p));
		else files.push(p);
	}
	const given = await loadSnpCertFiles(files);
	return async (r) => {
		let ask = given.ask;
		let ark = given.ark;
		for (const d of dirs) {
			const got = await d(r);
			ask ??= got.ask;
			ark ??= got.ark;
		}
		return { ask, ark };
	};
}
