/**
 * Azure's HCL report (what the paravisor leaves in vTPM NV index 0x01400001), as far as the guest
 * needs it: which TEE it is from, and the hardware report inside (a TD report to have quoted for
 * TDX). Pure, bounds-checked. Layout (az-cvm-vtpm's hcl module):
 *
 *   0    header: signature, version, report_size, request_type, status, reserved[3] (8 × u32)
 *   32   hw_report: the SEV-SNP ATTESTATION_REPORT (1184) or the TDREPORT (1024), in 1184 bytes
 *   1216 IGVM request data: data_size, version, report_type (2 SEV-SNP, 4 TDX), report_data_hash_type,
 *        variable_data_size (5 × u32)
 *   1236 variable data (JSON: the AK's public key, user-data, …), variable_data_size bytes
 */
import { DadiError } from "../errors.js";

export const HCL_HW_REPORT_OFFSET = 32;
const HW_REPORT_MAX = 1184;
const REQUEST_DATA_OFFSET = HCL_HW_REPORT_OFFSET + HW_REPORT_MAX;
export const HCL_FIXED_SIZE = REQUEST_DATA_OFFSET + 20;
const SNP_REPORT_SIZE = 1184;
const TD_REPORT_SIZE = 1024;

export type HclReportType = "snp" | "tdx";

export interface HclReport {
	type: HclReportType;
	/** The SEV-SNP report or the TDREPORT. */
	hwReport: Buffer;
	/** The variable data (JSON text as the paravisor wrote it). */
	varData: Buffer;
}

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `Azure HCL report: ${detail}`);
}

export function parseHclReport(b: Buffer): HclReport {
	if (b.length < HCL_FIXED_SIZE)
		throw invalid(
			`${b.length} bytes, shorter than its ${HCL_FIXED_SIZE}-byte header`,
		);
	const reportType = b.readUInt32LE(REQUEST_DATA_OFFSET + 8);
	const varSize = b.readUInt32LE(REQUEST_DATA_OFFSET + 16);
	if (varSize > b.length - HCL_FIXED_SIZE)
		throw invalid(
			`variable data of ${varSize} bytes runs past the report's end`,
		);
	let type: HclReportType;
	let size: number;
	if (reportType === 2) {
		type = "snp";
		size = SNP_REPORT_SIZE;
	} else if (reportType === 4) {
		type = "tdx";
		size = TD_REPORT_SIZE;
	} else
		throw invalid(
			`report type ${reportType} is neither SEV-SNP (2) nor TDX (4)`,
		);
	return {
		type,
		hwReport: Buffer.from(
			b.subarray(HCL_HW_REPORT_OFFSET, HCL_HW_REPORT_OFFSET + size),
		),
		varData: Buffer.from(b.subarray(HCL_FIXED_SIZE, HCL_FIXED_SIZE + varSize)),
	};
}
