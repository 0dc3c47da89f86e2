/**
 * /dev/sev-guest SNP_GET_REPORT through koffi: the I/O edge for SEV-SNP guests whose kernel has no
 * configfs-tsm (before 6.7). The bytes are made and read by sev-guest-ioctl.ts (pure, tested); the
 * request and response live in memory koffi allocates, so their addresses can go in the ioctl's
 * argument. UNTESTED on a real device (no SEV-SNP guest in CI).
 */
import { closeSync, openSync } from "node:fs";
import { getSystemErrorMap } from "node:util";
import { DadiError } from "../errors.js";
import { type Koffi, loadKoffi } from "../native/addons.js";
import {
	decodeExitInfo2,
	decodeReportResponse,
	encodeGuestRequest,
	encodeReportRequest,
	SNP_GET_REPORT,
	SNP_REPORT_REQ_SIZE,
	SNP_REPORT_RESP_SIZE,
} from "./sev-guest-ioctl.js";

export const SEV_GUEST_DEVICE = "/dev/sev-guest";

type Ioctl = (fd: number, request: number, arg: Buffer) => number;
let calls: { koffi: Koffi; ioctl: Ioctl } | undefined;

function load(): { koffi: Koffi; ioctl: Ioctl } {
	if (calls) return calls;
	try {
		const koffi = loadKoffi();
		const lib = koffi.load("libc.so.6");
		const ioctl = lib.func(
			"int ioctl(int fd, unsigned long request, _Inout_ uint8_t *arg)",
		) as Ioctl;
		calls = { koffi, ioctl };
		return calls;
	} catch (e) {
		if (e instanceof DadiError) throw e;
		throw new DadiError(
			"INTERNAL",
			`cannot load koffi/libc for ${SEV_GUEST_DEVICE}: ${(e as Error).message}`,
			{ cause: e },
		);
	}
}

/** A 1184-byte SEV-SNP report with REPORT_DATA = `reportData`, requested at `vmpl`. */
export function sevGuestReport(
	reportData: Buffer,
	vmpl = 0,
	device = SEV_GUEST_DEVICE,
): Buffer {
	const { koffi, ioctl } = load();
	const req = koffi.alloc("uint8_t", SNP_REPORT_REQ_SIZE);
	const resp = koffi.alloc("uint8_t", SNP_REPORT_RESP_SIZE);
	let fd = -1;
	try {
		const reqBytes = encodeReportRequest(reportData, vmpl);
		koffi.encode(req, "uint8_t", Array.from(reqBytes), reqBytes.length);
		koffi.encode(
			resp,
			"uint8_t",
			new Array(SNP_REPORT_RESP_SIZE).fill(0),
			SNP_REPORT_RESP_SIZE,
		);
		const arg = encodeGuestRequest(koffi.address(req), koffi.address(resp));
		try {
			fd = openSync(device, "r+");
		} catch (e) {
			throw new DadiError(
				"IO",
				`${device}: ${(e as Error).message} (while opening the SEV-SNP guest device)`,
			);
		}
		if (ioctl(fd, SNP_GET_REPORT, arg) !== 0) {
			const errno = koffi.errno();
			const [code] = getSystemErrorMap().get(-errno) ?? [`E${errno}`];
			const { fwError, vmmError } = decodeExitInfo2(arg);
			throw new DadiError(
				"IO",
				`${device}: SNP_GET_REPORT failed (${code}; firmware error 0x${fwError.toString(16)}, hypervisor error 0x${vmmError.toString(16)})`,
			);
		}
		return decodeReportResponse(
			Buffer.from(koffi.view(resp, SNP_REPORT_RESP_SIZE)),
		);
	} finally {
		if (fd >= 0) closeSync(fd);
		koffi.free(req);
		koffi.free(resp);
	}
}
