/** The claims an Azure vTPM verifier adds to the hardware report's: PCRs and the VM configuration. */
import { createHash } from "node:crypto";
import type { Claims } from "../claims.js";
import type { VerifiedTpmQuote } from "./tpm-quote.js";
import type { VarData } from "./var-data.js";

/** PCR 8 carries the init-data binding (Trustee's convention). */
export const INITDATA_PCR = 8;

export function vtpmTeeSpecific(
	version: number,
	hclVersion: number,
	quote: VerifiedTpmQuote,
	v: VarData,
): Claims["tee_specific"] {
	const ts: Claims["tee_specific"] = {
		evidence_version: version,
		hcl_report_version: hclVersion,
		ak_pub_sha256: createHash("sha256").update(v.akModulus).digest("hex"),
		pcr_indices: [...quote.pcrs.keys()].map(String),
	};
	for (const [i, value] of quote.pcrs)
		ts[`pcr${String(i).padStart(2, "0")}`] = value.toString("hex");
	const c = v.vmConfiguration;
	if (c.secureBoot !== undefined) ts.secure_boot = c.secureBoot;
	if (c.tpmEnabled !== undefined) ts.tpm_enabled = c.tpmEnabled;
	if (c.tpmPersisted !== undefined) ts.tpm_persisted = c.tpmPersisted;
	if (c.consoleEnabled !== undefined) ts.console_enabled = c.consoleEnabled;
	if (c.vmUniqueId !== undefined) ts.vm_unique_id = c.vmUniqueId;
	if (c.rootCertThumbprint !== undefined)
		ts.root_cert_thumbprint = c.rootCertThumbprint;
	return ts;
}
