/**
 * SEV-SNP guest attester: the report through configfs-tsm (Linux ≥ 6.7, with the host's
 * certificate table from auxblob when it provides one) or /dev/sev-guest's SNP_GET_REPORT (older
 * kernels; no certificates: the broker then needs its VCEK cache). Evidence shape: snp-evidence.ts.
 */
import type { Attester } from "./attester.js";
import { reportDataField } from "./report-data-field.js";
import { SEV_GUEST_DEVICE, sevGuestReport } from "./sev-guest-device.js";
import { snpEvidence } from "./snp-evidence.js";
import { TSM_REPORT_ROOT, tsmReport } from "./tsm-report.js";

/** The VMPL /dev/sev-guest reports are requested at: 0, what verifiers expect of a workload guest. */
const VMPL = 0;

/** configfs-tsm: privlevel is left at the kernel's choice (the guest's own VMPL floor). */
export function snpTsmAttester(root: string = TSM_REPORT_ROOT): Attester {
	return {
		tee: "snp",
		async evidence(digest) {
			const reportData = reportDataField(digest);
			const r = await tsmReport({
				root,
				inblob: reportData,
				provider: "sev_guest",
				aux: true,
			});
			return snpEvidence({
				report: r.outblob,
				reportData,
				certTable: r.auxblob,
			});
		},
	};
}

export function snpDeviceAttester(device: string = SEV_GUEST_DEVICE): Attester {
	return {
		tee: "snp",
		async evidence(digest) {
			const reportData = reportDataField(digest);
			return snpEvidence({
				report: sevGuestReport(reportData, VMPL, device),
				reportData,
			});
		},
	};
}
