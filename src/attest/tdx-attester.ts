/**
 * TDX guest attester: the quote through configfs-tsm (Linux ≥ 6.7; the kernel asks the host's
 * quoting service), and the CC event log the firmware left in the ACPI CCEL table's log area
 * (`/sys/firmware/acpi/tables/data/CCEL`, as guest-components reads it; absent → null), so the
 * broker can replay it against the quote's RTMRs. The legacy /dev/tdx_guest TDX_CMD_GET_QUOTE path
 * is not implemented. Evidence shape: tdx-evidence.ts.
 */
import { readFile } from "node:fs/promises";
import { DadiError, fromSystemError } from "../errors.js";
import type { Attester } from "./attester.js";
import { reportDataField } from "./report-data-field.js";
import { tdxEvidence } from "./tdx-evidence.js";
import { TSM_REPORT_ROOT, tsmReport } from "./tsm-report.js";

/** Where Linux exposes the CCEL table's event log area. */
export const CCEL_DATA = "/sys/firmware/acpi/tables/data/CCEL";
/** The log area is firmware-sized (64 KiB with TDVF); anything far larger is not an event log. */
const MAX_CCEL_BYTES = 8 << 20;

/** The event log, or null when this TD has none. */
export async function readCcel(
	path: string = CCEL_DATA,
): Promise<Buffer | null> {
	const log = await readFile(path).catch((e: NodeJS.ErrnoException) => {
		if (e.code === "ENOENT") return null;
		throw fromSystemError(e, path, "reading the CC event log");
	});
	if (log && log.length > MAX_CCEL_BYTES)
		throw new DadiError(
			"EVIDENCE_INVALID",
			`${path}: ${log.length} bytes, more than an event log holds (${MAX_CCEL_BYTES})`,
		);
	return log;
}

export function tdxTsmAttester(
	root: string = TSM_REPORT_ROOT,
	o: { ccel?: string } = {},
): Attester {
	return {
		tee: "tdx",
		async evidence(digest) {
			const reportData = reportDataField(digest);
			const r = await tsmReport({
				root,
				inblob: reportData,
				provider: "tdx_guest",
			});
			return tdxEvidence({
				quote: r.outblob,
				reportData,
				ccel: await readCcel(o.ccel),
			});
		},
	};
}
