/**
 * Guest side, pure: the SEV-SNP evidence sent to the broker. Preferably the Confidential Containers
 * form, Trustee's SnpEvidence ({"attestation_report": the sev crate's serde object, "cert_chain":
 * [{cert_type, data}] | null}), which both Trustee and dadi-broker verify; when a report cannot
 * travel in that form exactly (the serde object rebuilds the bytes the signature covers, so a
 * report with non-zero reserved bytes or an out-of-range u64 cannot), dadi-broker's own form
 * {"report": base64(1184 bytes), "cert_table": base64(...)}. Certificates only when the host
 * supplied them (configfs-tsm auxblob, the extended report's table). The report's REPORT_DATA is
 * checked against what was asked for, so a stale or foreign report from the device is caught here
 * rather than refused by the broker.
 */
import { timingSafeEqual } from "node:crypto";
import { DadiError } from "../errors.js";
import { parseCertTable } from "./snp/cert-table.js";
import { REPORT_SIZE } from "./snp/report.js";
import { reportFromSerde, serdeFromReport } from "./snp/serde-report.js";

/** REPORT_DATA's offset in the ATTESTATION_REPORT. */
export const SNP_REPORT_DATA_OFFSET = 0x50;

/** dadi-broker's own form. */
export interface RawSnpEvidence {
	report: string;
	cert_table?: string;
}

/** The Confidential Containers form (Trustee's SnpEvidence). */
export interface CocoSnpEvidence {
	attestation_report: Record<string, unknown>;
	cert_chain: { cert_type: string; data: number[] }[] | null;
}

export type SnpEvidence = RawSnpEvidence | CocoSnpEvidence;

/** The report as the sev crate's serde object, when that object rebuilds exactly these bytes. */
function serdeExactly(report: Buffer): Record<string, unknown> | undefined {
	try {
		const serde = serdeFromReport(report);
		return reportFromSerde(serde).equals(report) ? serde : undefined;
	} catch {
		return undefined;
	}
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
	const certs =
		o.certTable && o.certTable.length > 0
			? parseCertTable(o.certTable) // refuse to forward a malformed table
			: undefined;
	const serde = serdeExactly(o.report);
	if (serde) {
		const chain = (["vcek", "vlek", "ask", "ark"] as const).flatMap((k) => {
			const der = certs?.[k];
			return der ? [{ cert_type: k.toUpperCase(), data: [...der] }] : [];
		});
		return {
			attestation_report: serde,
			cert_chain: chain.length > 0 ? chain : null,
		};
	}
	const ev: RawSnpEvidence = { report: o.report.toString("base64") };
	if (o.certTable && o.certTable.length > 0)
		ev.cert_table = o.certTable.toString("base64");
	return ev;
}
