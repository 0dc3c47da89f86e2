/**
 * Normalized attestation claims: what a verifier concludes from evidence, in one shape for every
 * TEE, so one policy can speak of all of them (EAR-style: the verifier's appraisal, not the raw
 * evidence). Every field is present; values a TEE does not have are empty strings, `false` or {}.
 * Hex strings are lowercase without a prefix.
 */
export type TeeType = "sample" | "snp" | "tdx" | "azsnpvtpm" | "aztdxvtpm";

export const TEE_TYPES: readonly TeeType[] = [
	"sample",
	"snp",
	"tdx",
	"azsnpvtpm",
	"aztdxvtpm",
];

export interface Claims {
	/** Which TEE produced the evidence. */
	tee: TeeType;
	/** True when the evidence says the TEE can be debugged (its memory is not confidential). */
	debug: boolean;
	/** The launch measurement (SNP MEASUREMENT, TDX MRTD); "" for the sample TEE. */
	measurement: string;
	/** REPORT_DATA as signed by the TEE (hex). */
	report_data: string;
	/** The init-data binding (SNP HOST_DATA, TDX MRCONFIGID, sample init_data) as hex; "" if none. */
	init_data: string;
	/** Security version numbers by component name (sample: {svn}; SNP: bootloader, tee, snp, microcode; TDX: ...). */
	tcb: Record<string, number>;
	/** Overall TCB status where the TEE has one ("UpToDate", "OutOfDate", ...), else "". */
	tcb_status: string;
	/** Further TEE-specific facts (strings, numbers, booleans, string lists), for policies that need them. */
	tee_specific: Record<string, string | number | boolean | string[]>;
}

/** What a verifier is handed: the evidence as sent and what it must be bound to. */
export interface VerifyInput {
	/** tee-evidence.primary_evidence as received (a JSON value; its shape is the TEE's). */
	evidence: unknown;
	/** The digest report_data must begin with (the rest, up to the TEE's field size, zero). */
	expectedReportData: Buffer;
	/** The digest of init-data when the guest sent some: the evidence must bind exactly this. */
	expectedInitData?: Buffer;
	/** The verification time. */
	now: Date;
}

/**
 * A verifier appraises one TEE's evidence. It is pure: bytes, trust roots and the clock come in;
 * claims or a DadiError with code EVIDENCE_INVALID go out. It never returns claims for evidence
 * it did not verify.
 */
export interface Verifier {
	readonly tee: TeeType;
	verify(input: VerifyInput): Promise<Claims>;
}
