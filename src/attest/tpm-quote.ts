/**
 * A TPM 2.0 quote as the vTPM signs it: TPMS_ATTEST (the "message") and the PCR values it covers.
 * Pure, bounds-checked (TPM 2.0 Library Part 2, §10.12):
 *
 *   TPMS_ATTEST: magic u32 (0xff544347) | type u16 (0x8018 quote) | qualifiedSigner TPM2B_NAME |
 *     extraData TPM2B_DATA (the qualifying data) | clockInfo (u64 clock, u32 resetCount,
 *     u32 restartCount, u8 safe) | firmwareVersion u64 | TPMS_QUOTE_INFO: TPML_PCR_SELECTION
 *     (u32 count, each {hash u16, sizeofSelect u8, pcrSelect[]}) | pcrDigest TPM2B_DIGEST
 *
 * Everything big-endian; TPM2B is u16 size then bytes.
 */
import { DadiError } from "../errors.js";

export const TPM_GENERATED_VALUE = 0xff544347;
export const TPM_ST_ATTEST_QUOTE = 0x8018;

export interface TpmQuoteInfo {
	qualifiedSigner: Buffer;
	extraData: Buffer;
	/** PCR selections: hash algorithm id → selected PCR indices. */
	selections: { hash: number; pcrs: number[] }[];
	pcrDigest: Buffer;
}

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `TPM quote: ${detail}`);
}

export function parseTpmsAttestQuote(b: Buffer): TpmQuoteInfo {
	let at = 0;
	const need = (n: number, what: string) => {
		if (at + n > b.length) throw invalid(`truncated in ${what}`);
	};
	const u8 = (what: string) => {
		need(1, what);
		return b.readUInt8(at++);
	};
	const u16 = (what: string) => {
		need(2, what);
		const v = b.readUInt16BE(at);
		at += 2;
		return v;
	};
	const u32 = (what: string) => {
		need(4, what);
		const v = b.readUInt32BE(at);
		at += 4;
		return v;
	};
	const bytes = (n: number, what: string) => {
		need(n, what);
		const v = Buffer.from(b.subarray(at, at + n));
		at += n;
		return v;
	};
	const tpm2b = (what: string, max: number) => {
		const n = u16(what);
		if (n > max) throw invalid(`${what} of ${n} bytes (at most ${max})`);
		return bytes(n, what);
	};
	if (u32("magic") !== TPM_GENERATED_VALUE)
		throw invalid("not TPM-generated (magic is not 0xff544347)");
	const type = u16("type");
	if (type !== TPM_ST_ATTEST_QUOTE)
		throw invalid(`type 0x${type.toString(16)} is not a quote (0x8018)`);
	const qualifiedSigner = tpm2b("qualifiedSigner", 68);
	const extraData = tpm2b("extraData", 64);
	bytes(17, "clockInfo");
	bytes(8, "firmwareVersion");
	const count = u32("PCR selection count");
	if (count > 16) throw invalid(`${count} PCR selections`);
	const selections: TpmQuoteInfo["selections"] = [];
	for (let i = 0; i < count; i++) {
		const hash = u16("PCR selection hash");
		const size = u8("sizeofSelect");
		if (size > 32) throw invalid(`a ${size}-byte PCR select`);
		const select = bytes(size, "pcrSelect");
		const pcrs: number[] = [];
		for (let j = 0; j < size * 8; j++)
			if (((select[j >> 3] as number) >> (j & 7)) & 1) pcrs.push(j);
		selections.push({ hash, pcrs });
	}
	const pcrDigest = tpm2b("pcrDigest", 64);
	if (at !== b.length) throw invalid(`${b.length - at} bytes after the quote`);
	return { qualifiedSigner, extraData, selections, pcrDigest };
}

/** `n` concatenated 32-byte SHA-256 PCR values → the list. */
export function splitPcrs(values: Buffer, n = 24): Buffer[] {
	if (values.length !== n * 32)
		throw invalid(`${values.length} bytes of PCR values, expected ${n} × 32`);
	return Array.from({ length: n }, (_, i) =>
		Buffer.from(values.subarray(i * 32, i * 32 + 32)),
	);
}
