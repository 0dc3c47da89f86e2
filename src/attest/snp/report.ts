/**
 * AMD SEV-SNP ATTESTATION_REPORT: a pure parser (no I/O, no crypto) for report versions 2, 3 and 5.
 *
 * Layout (SEV-SNP ABI specification, all integers little-endian; 1184 bytes):
 *
 *   0x000 u32 VERSION             0x004 u32 GUEST_SVN          0x008 u64 POLICY
 *   0x010 16  FAMILY_ID           0x020 16  IMAGE_ID           0x030 u32 VMPL
 *   0x034 u32 SIGNATURE_ALGO      0x038 u64 CURRENT_TCB        0x040 u64 PLATFORM_INFO
 *   0x048 u32 key info: bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY, 31:5 reserved
 *   0x04C u32 reserved            0x050 64  REPORT_DATA        0x090 48  MEASUREMENT
 *   0x0C0 32  HOST_DATA           0x0E0 48  ID_KEY_DIGEST      0x110 48  AUTHOR_KEY_DIGEST
 *   0x140 32  REPORT_ID           0x160 32  REPORT_ID_MA       0x180 u64 REPORTED_TCB
 *   0x188 u8  CPUID_FAM_ID, 0x189 u8 CPUID_MOD_ID, 0x18A u8 CPUID_STEP (version >= 3; reserved in 2)
 *   0x18B..0x19F reserved         0x1A0 64  CHIP_ID            0x1E0 u64 COMMITTED_TCB
 *   0x1E8 u8 CURRENT_BUILD, MINOR, MAJOR, 0x1EB reserved
 *   0x1EC u8 COMMITTED_BUILD, MINOR, MAJOR, 0x1EF reserved      0x1F0 u64 LAUNCH_TCB
 *   0x1F8 u64 LAUNCH_MIT_VECTOR, 0x200 u64 CURRENT_MIT_VECTOR (version 5; reserved before)
 *   0x208..0x29F reserved
 *   0x2A0 SIGNATURE (512 bytes): R (72, little-endian), S (72, little-endian), 368 reserved
 *
 * The signed region is [0x000, 0x2A0). Reserved bytes are checked only where they are reserved in
 * every version we accept (so v2 reports' CPUID bytes and pre-v5 mitigation-vector bytes are not).
 */
import { DadiError } from "../../errors.js";

export const REPORT_SIZE = 0x4a0;
export const SIGNED_END = 0x2a0;
export const SUPPORTED_VERSIONS: readonly number[] = [2, 3, 5];
/** SIGNATURE_ALGO 1: ECDSA over P-384 with SHA-384. */
export const SIG_ALGO_ECDSA_P384_SHA384 = 1;

export type SnpProduct = "milan" | "genoa" | "turin";
export const SNP_PRODUCTS: readonly SnpProduct[] = ["milan", "genoa", "turin"];

export interface SnpPolicy {
	raw: bigint;
	abiMinor: number;
	abiMajor: number;
	/** bit 16 */
	smtAllowed: boolean;
	/** bit 18 */
	migrationAgent: boolean;
	/** bit 19 */
	debug: boolean;
	/** bit 20 */
	singleSocket: boolean;
	/** bit 21 */
	cxlAllowed: boolean;
	/** bit 22 */
	memAes256Xts: boolean;
	/** bit 23 */
	raplDisabled: boolean;
	/** bit 24 */
	ciphertextHiding: boolean;
}

export interface SnpPlatformInfo {
	raw: bigint;
	/** bit 0 */
	smtEnabled: boolean;
	/** bit 1 */
	tsmeEnabled: boolean;
	/** bit 2 */
	eccEnabled: boolean;
	/** bit 3 */
	raplDisabled: boolean;
	/** bit 4 */
	ciphertextHidingEnabled: boolean;
	/** bit 5 */
	aliasCheckComplete: boolean;
}

export type SigningKey = "vcek" | "vlek";

export interface FirmwareVersion {
	major: number;
	minor: number;
	build: number;
}

/** One TCB_VERSION value: the 8 raw bytes, decoded per product by decodeTcb. */
export type RawTcb = Buffer;

export interface SnpTcb {
	bootloader: number;
	tee: number;
	snp: number;
	microcode: number;
	/** Turin only. */
	fmc?: number;
}

export interface ParsedReport {
	version: number;
	guestSvn: number;
	policy: SnpPolicy;
	familyId: Buffer;
	imageId: Buffer;
	vmpl: number;
	signatureAlgo: number;
	currentTcb: RawTcb;
	platformInfo: SnpPlatformInfo;
	authorKeyEn: boolean;
	maskChipKey: boolean;
	signingKey: SigningKey;
	reportData: Buffer;
	measurement: Buffer;
	hostData: Buffer;
	idKeyDigest: Buffer;
	authorKeyDigest: Buffer;
	reportId: Buffer;
	reportIdMa: Buffer;
	reportedTcb: RawTcb;
	/** Version >= 3 only (undefined on version 2). */
	cpuid?: { family: number; model: number; stepping: number };
	chipId: Buffer;
	/** True when CHIP_ID is all zero (the platform's MASK_CHIP_ID setting). */
	chipIdMasked: boolean;
	committedTcb: RawTcb;
	current: FirmwareVersion;
	committed: FirmwareVersion;
	launchTcb: RawTcb;
	/** Version 5 only. */
	launchMitVector?: bigint;
	currentMitVector?: bigint;
	/** Big-endian, 48 bytes each. */
	signatureR: Buffer;
	signatureS: Buffer;
	/** The signed bytes [0x000, 0x2A0) (a view of the input). */
	signed: Buffer;
}

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `SEV-SNP report: ${detail}`);
}

function unsupported(detail: string): DadiError {
	return new DadiError("EVIDENCE_UNSUPPORTED", `SEV-SNP report: ${detail}`);
}

function allZero(b: Buffer, from: number, to: number): boolean {
	let acc = 0;
	for (let i = from; i < to; i++) acc |= b[i] as number;
	return acc === 0;
}

function mbz(b: Buffer, from: number, to: number, what: string): void {
	if (!allZero(b, from, to))
		throw invalid(
			`reserved bytes ${what} (0x${from.toString(16)}..0x${(to - 1).toString(16)}) are not zero`,
		);
}

function copy(b: Buffer, off: number, len: number): Buffer {
	return Buffer.from(b.subarray(off, off + len));
}

/** A 72-byte little-endian signature component: value in the low 48 bytes, the rest zero. */
function sigComponent(b: Buffer, off: number, name: string): Buffer {
	if (!allZero(b, off + 48, off + 72))
		throw invalid(`signature ${name}: the upper 24 bytes must be zero`);
	const out = Buffer.allocUnsafe(48);
	for (let i = 0; i < 48; i++) out[i] = b[off + 47 - i] as number;
	return out;
}

const bit = (v: bigint, n: number): boolean => ((v >> BigInt(n)) & 1n) === 1n;

export function decodePolicy(raw: bigint): SnpPolicy {
	return {
		raw,
		abiMinor: Number(raw & 0xffn),
		abiMajor: Number((raw >> 8n) & 0xffn),
		smtAllowed: bit(raw, 16),
		migrationAgent: bit(raw, 18),
		debug: bit(raw, 19),
		singleSocket: bit(raw, 20),
		cxlAllowed: bit(raw, 21),
		memAes256Xts: bit(raw, 22),
		raplDisabled: bit(raw, 23),
		ciphertextHiding: bit(raw, 24),
	};
}

export function decodePlatformInfo(raw: bigint): SnpPlatformInfo {
	return {
		raw,
		smtEnabled: bit(raw, 0),
		tsmeEnabled: bit(raw, 1),
		eccEnabled: bit(raw, 2),
		raplDisabled: bit(raw, 3),
		ciphertextHidingEnabled: bit(raw, 4),
		aliasCheckComplete: bit(raw, 5),
	};
}

/**
 * TCB_VERSION byte layout. Milan and Genoa: [0] bootloader, [1] TEE, [2..5] reserved, [6] SNP,
 * [7] microcode. Turin: [0] FMC, [1] bootloader, [2] TEE, [3] SNP, [4..6] reserved, [7] microcode.
 */
export function decodeTcb(raw: RawTcb, product: SnpProduct): SnpTcb {
	if (raw.length !== 8) throw invalid("a TCB value must be 8 bytes");
	const at = (i: number): number => raw[i] as number;
	if (product === "turin")
		return {
			fmc: at(0),
			bootloader: at(1),
			tee: at(2),
			snp: at(3),
			microcode: at(7),
		};
	return { bootloader: at(0), tee: at(1), snp: at(6), microcode: at(7) };
}

/** The TCB as a 16-digit lowercase hex u64 (the value as the firmware reports it). */
export function tcbHex(raw: RawTcb): string {
	return raw.readBigUInt64LE(0).toString(16).padStart(16, "0");
}

/**
 * The product a version >= 3 report names through its CPUID family/model, or undefined when it
 * names none we know (family 19h models 0x-: Milan, 1x- and Ax-: Genoa; family 1Ah: Turin).
 */
export function productFromCpuid(
	cpuid: ParsedReport["cpuid"],
): SnpProduct | undefined {
	if (!cpuid) return undefined;
	if (cpuid.family === 0x19) {
		if (cpuid.model <= 0x0f) return "milan";
		if (
			(cpuid.model >= 0x10 && cpuid.model <= 0x1f) ||
			(cpuid.model >= 0xa0 && cpuid.model <= 0xaf)
		)
			return "genoa";
		return undefined;
	}
	if (cpuid.family === 0x1a) return "turin";
	return undefined;
}

/** Parses and checks the structure of a report. It does not verify the signature. */
export function parseReport(input: Uint8Array): ParsedReport {
	if (!(input instanceof Uint8Array)) throw invalid("expected bytes");
	const b = Buffer.isBuffer(input)
		? input
		: Buffer.from(input.buffer, input.byteOffset, input.byteLength);
	if (b.length !== REPORT_SIZE)
		throw invalid(`expected exactly ${REPORT_SIZE} bytes, got ${b.length}`);
	const version = b.readUInt32LE(0x00);
	if (!SUPPORTED_VERSIONS.includes(version))
		throw unsupported(
			`version ${version} is not supported (expected 2, 3 or 5)`,
		);
	const signatureAlgo = b.readUInt32LE(0x34);
	if (signatureAlgo !== SIG_ALGO_ECDSA_P384_SHA384)
		throw unsupported(
			`signature algorithm ${signatureAlgo} is not supported (expected 1, ECDSA P-384 SHA-384)`,
		);
	const vmpl = b.readUInt32LE(0x30);
	if (vmpl > 3) throw invalid(`VMPL ${vmpl} is out of range (0..3)`);
	const keyInfo = b.readUInt32LE(0x48);
	if (keyInfo >>> 5 !== 0)
		throw invalid("reserved key-info bits 31:5 are not zero");
	const signingKeyField = (keyInfo >>> 2) & 7;
	let signingKey: SigningKey;
	if (signingKeyField === 0) signingKey = "vcek";
	else if (signingKeyField === 1) signingKey = "vlek";
	else if (signingKeyField === 7)
		throw unsupported("the report is unsigned (signing key 7: none)");
	else throw unsupported(`signing key ${signingKeyField} is not supported`);

	mbz(b, 0x4c, 0x50, "after key info");
	mbz(b, 0x18b, 0x1a0, "after reported TCB");
	mbz(b, 0x1eb, 0x1ec, "after current version");
	mbz(b, 0x1ef, 0x1f0, "after committed version");
	mbz(b, 0x208, SIGNED_END, "before the signature");
	mbz(b, 0x330, REPORT_SIZE, "after signature s");

	const chipId = copy(b, 0x1a0, 64);
	const report: ParsedReport = {
		version,
		guestSvn: b.readUInt32LE(0x04),
		policy: decodePolicy(b.readBigUInt64LE(0x08)),
		familyId: copy(b, 0x10, 16),
		imageId: copy(b, 0x20, 16),
		vmpl,
		signatureAlgo,
		currentTcb: copy(b, 0x38, 8),
		platformInfo: decodePlatformInfo(b.readBigUInt64LE(0x40)),
		authorKeyEn: (keyInfo & 1) === 1,
		maskChipKey: (keyInfo & 2) === 2,
		signingKey,
		reportData: copy(b, 0x50, 64),
		measurement: copy(b, 0x90, 48),
		hostData: copy(b, 0xc0, 32),
		idKeyDigest: copy(b, 0xe0, 48),
		authorKeyDigest: copy(b, 0x110, 48),
		reportId: copy(b, 0x140, 32),
		reportIdMa: copy(b, 0x160, 32),
		reportedTcb: copy(b, 0x180, 8),
		chipId,
		chipIdMasked: allZero(chipId, 0, 64),
		committedTcb: copy(b, 0x1e0, 8),
		current: {
			build: b[0x1e8] as number,
			minor: b[0x1e9] as number,
			major: b[0x1ea] as number,
		},
		committed: {
			build: b[0x1ec] as number,
			minor: b[0x1ed] as number,
			major: b[0x1ee] as number,
		},
		launchTcb: copy(b, 0x1f0, 8),
		signatureR: sigComponent(b, 0x2a0, "r"),
		signatureS: sigComponent(b, 0x2e8, "s"),
		signed: b.subarray(0, SIGNED_END),
	};
	if (version >= 3)
		report.cpuid = {
			family: b[0x188] as number,
			model: b[0x189] as number,
			stepping: b[0x18a] as number,
		};
	if (version >= 5) {
		report.launchMitVector = b.readBigUInt64LE(0x1f8);
		report.currentMitVector = b.readBigUInt64LE(0x200);
	}
	return report;
}
