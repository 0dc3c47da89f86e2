/**
 * /dev/sev-guest's SNP_GET_REPORT, as bytes. Pure. From linux/include/uapi/linux/sev-guest.h and
 * the SEV-SNP firmware ABI (MSG_REPORT_REQ / MSG_REPORT_RSP):
 *
 *   struct snp_report_req { u8 user_data[64]; u32 vmpl; u8 rsvd[28]; }            96 bytes
 *   struct snp_report_resp { u8 data[4000]; }                                     the firmware's
 *       MSG_REPORT_RSP: u32 status | u32 report_size | 24 reserved | report (1184 bytes at 32)
 *   struct snp_guest_request_ioctl { u8 msg_version; (7 bytes padding) u64 req_data;
 *       u64 resp_data; u64 exitinfo2 (fw_error low 32 bits, vmm_error high 32) }  32 bytes
 *   SNP_GET_REPORT = _IOWR('S', 0x0, struct snp_guest_request_ioctl)
 */
import { DadiError } from "../errors.js";
import { REPORT_SIZE } from "./snp/report.js";

export const SNP_REPORT_REQ_SIZE = 96;
export const SNP_REPORT_RESP_SIZE = 4000;
export const SNP_GUEST_REQUEST_SIZE = 32;
const IOC_READ_WRITE = 3;
/** _IOWR('S', 0, 32 bytes) = 0xc0205300. */
export const SNP_GET_REPORT =
	((IOC_READ_WRITE << 30) |
		(SNP_GUEST_REQUEST_SIZE << 16) |
		("S".charCodeAt(0) << 8) |
		0) >>>
	0;
/** Where the report starts in MSG_REPORT_RSP. */
export const REPORT_RESP_REPORT_OFFSET = 32;

export function encodeReportRequest(userData: Buffer, vmpl: number): Buffer {
	if (userData.length !== 64)
		throw new DadiError("INTERNAL", "SNP_GET_REPORT: user_data is 64 bytes");
	if (!Number.isInteger(vmpl) || vmpl < 0 || vmpl > 3)
		throw new DadiError("USAGE", `SNP_GET_REPORT: VMPL ${vmpl} is not 0 to 3`);
	const b = Buffer.alloc(SNP_REPORT_REQ_SIZE);
	userData.copy(b, 0);
	b.writeUInt32LE(vmpl, 64);
	return b;
}

/** The ioctl argument naming the request and response buffers by address. */
export function encodeGuestRequest(reqData: bigint, respData: bigint): Buffer {
	const b = Buffer.alloc(SNP_GUEST_REQUEST_SIZE);
	b.writeUInt8(1, 0); // msg_version: must be non-zero; 1 is the only version
	b.writeBigUInt64LE(reqData, 8);
	b.writeBigUInt64LE(respData, 16);
	return b;
}

/** exitinfo2 after the ioctl: the firmware's and the hypervisor's error codes. */
export function decodeExitInfo2(ioctlArg: Buffer): {
	fwError: number;
	vmmError: number;
} {
	if (ioctlArg.length !== SNP_GUEST_REQUEST_SIZE)
		throw new DadiError(
			"INTERNAL",
			"SNP_GET_REPORT: the ioctl argument is 32 bytes",
		);
	return {
		fwError: ioctlArg.readUInt32LE(24),
		vmmError: ioctlArg.readUInt32LE(28),
	};
}

/** The report in MSG_REPORT_RSP, or an error naming the firmware's status. Untrusted bytes. */
export function decodeReportResponse(resp: Buffer): Buffer {
	if (resp.length < REPORT_RESP_REPORT_OFFSET + REPORT_SIZE)
		throw new DadiError(
			"EVIDENCE_INVALID",
			`SNP_GET_REPORT: a ${resp.length}-byte response is too short`,
		);
	const status = resp.readUInt32LE(0);
	if (status !== 0)
		throw new DadiError(
			"IO",
			`SNP_GET_REPORT: the firmware answered status 0x${status.toString(16)}${status === 0x16 ? " (invalid parameters: is the VMPL below this guest's?)" : ""}`,
		);
	const size = resp.readUInt32LE(4);
	if (size !== REPORT_SIZE)
		throw new DadiError(
			"EVIDENCE_INVALID",
			`SNP_GET_REPORT: the firmware's report is ${size} bytes, expected ${REPORT_SIZE}`,
		);
	return Buffer.from(
		resp.subarray(
			REPORT_RESP_REPORT_OFFSET,
			REPORT_RESP_REPORT_OFFSET + REPORT_SIZE,
		),
	);
}
