/**
 * TPMS_ATTEST of a TPM2_Quote (TPM 2.0 Library Part 2, §10.12), big-endian:
 *
 *   u32 magic TPM_GENERATED_VALUE (0xff544347)   u16 type TPM_ST_ATTEST_QUOTE (0x8018)
 *   TPM2B_NAME qualifiedSigner (u16 size ≤ 68)    TPM2B_DATA extraData (u16 size ≤ 64)
 *   TPMS_CLOCK_INFO: u64 clock, u32 resetCount, u32 restartCount, u8 safe (0 or 1)
 *   u64 firmwareVersion
 *   TPMS_QUOTE_INFO: TPML_PCR_SELECTION (u32 count ≤ 16; each u16 hash, u8 sizeofSelect 1..4,
 *                    that many bitmap bytes, PCR n = bit n%8 of byte n/8) and TPM2B_DIGEST
 *                    pcrDigest (u16 size ≤ 64)
 *
 * Nothing may follow. Other attestation types are refused. Pure.
 */
import { DadiError } from "../../errors.js";

export const TPM_GENERATED_VALUE = 0xff544347;
export const TPM_ST_ATTEST_QUOTE = 0x8018;
export const TPM_ALG_SHA256 = 0x000b;
export const TPM_MAX_ATTEST = 1024;

export interface PcrSelection {
	hash: number;
	/** Selected PCR indices, ascending. */
	pcrs: number[];
}

export interface TpmQuoteInfo {
	qualifiedSigner: Buffer;
	extraData: Buffer;
	clock: bigint;
	resetCount: number;
	restartCount: number;
	safe: boolean;
	firmwareVersion: bigint;
	pcrSelections: PcrSelection[];
	pcrDigest: Buffer;
}

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `TPM quote: ${detail}`);
}

export function parseTpmsAttest(input: Uint8Array): TpmQuoteInfo {
	if (!(input instanceof Uint8Array)) throw invalid("must be bytes");
	const b = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
	if (b.length > TPM_MAX_ATTEST)
		throw invalid(`longer than ${TPM_MAX_ATTEST} bytes`);
	let o = 0;
	const need = (n: number, what: string) => {
		if (o + n > b.length) throw invalid(`truncated in ${what}`);
	};
	const u8 = (what: string) => {
		need(1, what);
		return b.readUInt8(o++);
	};
	const u16 = (what: string) => {
		need(2, what);
		const v = b.readUInt16BE(o);
		o += 2;
		return v;
	};
	const u32 = (what: string) => {
		need(4, what);
		const v = b.readUInt32BE(o);
		o += 4;
		return v;
	};
	const u64 = (what: string) => {
		need(8, what);
		const v = b.readBigUInt64BE(o);
		o += 8;
		return v;
	};
	const sized = (max: number, what: string) => {
		const n = u16(what);
		if (n > max) throw invalid(`${what} is ${n} bytes (at most ${max})`);
		need(n, what);
		const v = Buffer.from(b.subarray(o, o + n));
		o += n;
		return v;
	};
	if (u32("magic") !== TPM_GENERATED_VALUE)
		throw invalid("not TPM-generated (magic)");
	const type = u16("type");
	if (type !== TPM_ST_ATTEST_QUOTE)
		throw new DadiError(
			"EVIDENCE_UNSUPPORTED",
			`TPM quote: attestation type 0x${type.toString(16)} is not a quote`,
		);
	const qualifiedSigner = sized(68, "qualifiedSigner");
	const extraData = sized(64, "extraData");
	const clock = u64("clockInfo");
	const resetCount = u32("clockInfo");
	const restartCount = u32("clockInfo");
	const safe = u8("clockInfo");
	if (safe > 1) throw invalid("clockInfo.safe is not a boolean");
	const firmwareVersion = u64("firmwareVersion");
	const count = u32("pcrSelect");
	if (count > 16) throw invalid(`${count} PCR selections (at most 16)`);
	const pcrSelections: PcrSelection[] = [];
	for (let i = 0; i < count; i++) {
		const hash = u16("pcrSelect");
		const size = u8("pcrSelect");
		if (size < 1 || size > 4) throw invalid(`sizeofSelect ${size} (1 to 4)`);
		need(size, "pcrSelect");
		const pcrs: number[] = [];
		for (let j = 0; j < size; j++) {
			const byte = b[o + j] as number;
			for (let bit = 0; bit < 8; bit++)
				if (byte & (1 << bit)) pcrs.push(j * 8 + bit);
		}
		o += size;
		pcrSelections.push({ hash, pcrs });
	}
	const pcrDigest = sized(64, "pcrDigest");
	if (o !== b.length) throw invalid("bytes after the quote");
	return {
		qualifiedSigner,
		extraData,
		clock,
		resetCount,
		restartCount,
		safe: safe === 1,
		firmwareVersion,
		pcrSelections,
		pcrDigest,
	};
}
