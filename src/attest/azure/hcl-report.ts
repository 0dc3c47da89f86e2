/**
 * The Azure confidential VM "HCL report": what the paravisor (HCL) writes to the vTPM's NV index
 * 0x01400001 for the guest. Little-endian, as az-cvm-vtpm's `hcl` module lays it out:
 *
 *   0x000 u32 signature "HCLA"    0x004 u32 version (1 or 2)   0x008 u32 report_size (header to
 *   end of variable data)         0x00C u32 request_type (2)   0x010 u32 status (0)
 *   0x014 3×u32 reserved (0)
 *   0x020 1184 bytes: the hardware report — SEV-SNP ATTESTATION_REPORT (1184) or TDX TDREPORT
 *         (1024, the rest zero)
 *   0x4C0 IGVM request data: u32 data_size (20 + variable data), u32 version (1),
 *         u32 report_type (2 SNP, 4 TDX), u32 report_data_hash_type (1 SHA-256),
 *         u32 variable_data_size
 *   0x4D4 the variable data ("runtime data", JSON; var-data.ts); zero padding to the buffer's end
 *
 * The hardware report's REPORT_DATA starts with the hash of the variable data. Pure; every size is
 * checked before it is used; versions and types first.
 */
import { DadiError } from "../../errors.js";

export const HCL_HW_REPORT_OFFSET = 0x20;
export const HCL_HW_REPORT_SIZE = 1184;
export const TD_REPORT_SIZE = 1024;
const IGVM_OFFSET = HCL_HW_REPORT_OFFSET + HCL_HW_REPORT_SIZE; // 0x4C0
export const HCL_VAR_DATA_OFFSET = IGVM_OFFSET + 20; // 0x4D4
/** The NV index is 2600 bytes on today's Azure; leave room, but not for anything large. */
export const HCL_MAX_SIZE = 16 * 1024;
const SIGNATURE = 0x414c4348; // "HCLA" little-endian

export type HclReportType = "snp" | "tdx";

export interface HclReport {
	version: number;
	reportType: HclReportType;
	/** The hardware report: 1184 bytes (SNP) or 1024 (TDX TDREPORT). */
	hwReport: Buffer;
	/** The runtime data whose SHA-256 the hardware report's REPORT_DATA begins with. */
	varData: Buffer;
}

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `Azure HCL report: ${detail}`);
}

function unsupported(detail: string): DadiError {
	return new DadiError("EVIDENCE_UNSUPPORTED", `Azure HCL report: ${detail}`);
}

export function parseHclReport(input: Uint8Array): HclReport {
	if (!(input instanceof Uint8Array)) throw invalid("must be bytes");
	const b = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
	if (b.length < HCL_VAR_DATA_OFFSET || b.length > HCL_MAX_SIZE)
		throw invalid(
			`${b.length} bytes; expected ${HCL_VAR_DATA_OFFSET} to ${HCL_MAX_SIZE}`,
		);
	if (b.readUInt32LE(0) !== SIGNATURE) throw invalid('no "HCLA" signature');
	const version = b.readUInt32LE(4);
	if (version !== 1 && version !== 2)
		throw unsupported(`header version ${version} (1 and 2 are verified)`);
	const requestType = b.readUInt32LE(12);
	if (requestType !== 2)
		throw unsupported(`request type ${requestType} (2 is verified)`);
	const status = b.readUInt32LE(16);
	if (status !== 0) throw invalid(`status ${status} (not 0: no report)`);
	for (let o = 20; o < 32; o += 4)
		if (b.readUInt32LE(o) !== 0) throw invalid("reserved header bytes set");
	const igvmVersion = b.readUInt32LE(IGVM_OFFSET + 4);
	if (igvmVersion !== 1)
		throw unsupported(`request data version ${igvmVersion} (1 is verified)`);
	const type = b.readUInt32LE(IGVM_OFFSET + 8);
	const reportType: HclReportType | undefined =
		type === 2 ? "snp" : type === 4 ? "tdx" : undefined;
	if (!reportType)
		throw unsupported(`report type ${type} (2 SEV-SNP and 4 TDX are verified)`);
	const hashType = b.readUInt32LE(IGVM_OFFSET + 12);
	if (hashType !== 1)
		throw unsupported(
			`report data hash type ${hashType} (1, SHA-256, is verified)`,
		);
	const varSize = b.readUInt32LE(IGVM_OFFSET + 16);
	if (varSize === 0 || varSize > b.length - HCL_VAR_DATA_OFFSET)
		throw invalid(`variable data size ${varSize} does not fit`);
	if (b.readUInt32LE(IGVM_OFFSET) !== 20 + varSize)
		throw invalid("request data size does not match the variable data size");
	const end = HCL_VAR_DATA_OFFSET + varSize;
	if (b.readUInt32LE(8) !== end)
		throw invalid("report size does not match the variable data size");
	for (let i = end; i < b.length; i++)
		if (b[i] !== 0) throw invalid("bytes after the variable data");
	const hwSize = reportType === "snp" ? HCL_HW_REPORT_SIZE : TD_REPORT_SIZE;
	for (let i = HCL_HW_REPORT_OFFSET + hwSize; i < IGVM_OFFSET; i++)
		if (b[i] !== 0) throw invalid("bytes after the TD report");
	return {
		version,
		reportType,
		hwReport: Buffer.from(
			b.subarray(HCL_HW_REPORT_OFFSET, HCL_HW_REPORT_OFFSET + hwSize),
		),
		varData: Buffer.from(b.subarray(HCL_VAR_DATA_OFFSET, end)),
	};
}
