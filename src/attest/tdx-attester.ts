/**
 * TDX guest attester: the quote through configfs-tsm (Linux ≥ 6.7; the kernel asks the host's
 * quoting service). The legacy /dev/tdx_guest TDX_CMD_GET_QUOTE path is not implemented.
 * Evidence shape: tdx-evidence.ts.
 */
import type { Attester } from "./attester.js";
import { reportDataField } from "./report-data-field.js";
import { tdxEvidence } from "./tdx-evidence.js";
import { TSM_REPORT_ROOT, tsmReport } from "./tsm-report.js";

export function tdxTsmAttester(root: string = TSM_REPORT_ROOT): Attester {
	return {
		tee: "tdx",
		async evidence(digest) {
			const reportData = reportDataField(digest);
			const r = await tsmReport({
				root,
				inblob: reportData,
				provider: "tdx_guest",
			});
			return tdxEvidence({ quote: r.outblob, reportData });
		},
	};
}
