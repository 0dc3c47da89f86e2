/**
 * Guest side, pure: the SEV-SNP evidence the broker's verifier reads (src/attest/snp/verifier.ts):
 * {"report": base64(1184-byte ATTESTATION_REPORT), "cert_table": base64(...)} — cert_table only when
 * the host supplied the VCEK/ASK/ARK (configfs-tsm auxblob, the extended report's table). The
 * report's REPORT_DATA is checked against what was asked for, so a stale or foreign report from
 * the device is caught here rather than refused by the broker.
 */
import { timingSafeEqual } from "node:crypto";
import { DadiError } from "../errors.js";
import { parseCertTable } from "./snp/cert-table.js";
import { REPORT_SIZE } from "./snp/report.js";

/** REPORT_DATA's offset in the ATTESTATION_REPORT. */
export const SNP_REPORT_DATA_OFFSET = 0x50;

export interface SnpEvidence {
	report: string;
	cert_table?: string;
}

export function snpEvidence(o: {
	report: Buffer;
	reportData: Buffer;
	certTable?: Buffer;
}): SnpEvidence {
	if (o.report.length !== REPORT_SIZE)
		throw new DadiError(
			"EVIDENCE_INVALID",
			`SEV-SNP: the device returned ${o.report.length} bytes, not a ${REPORT_SIZE}-byte report`,
		);
	const got = o.report.subarray(
		SNP_REPORT_DATA_OFFSET,
		SNP_REPORT_DATA_OFFSET + 64,
	);
	if (o.reportData.length !== 64 || !timingSafeEqual(got, o.reportData))
		throw new DadiError(
			"EVIDENCE_INVALID",
			"SEV-SNP: the report's REPORT_DATA is not the one requested (a stale or foreign report)",
		);
	const ev: SnpEvidence = { report: o.report.toString("base64") };
	if (o.certTable && o.certTable.length > 0) {
		parseCertTable(o.certTable); // refuse to forward a malformed table
		ev.cert_table = o.certTable.toString("base64");
	}
	return ev;
}
