/**
 * A vTPM quote as Trustee's Azure evidence carries it ({signature, message, pcrs}), verified
 * against the attestation key from the HCL runtime data: the signature is RSASSA-PKCS1-v1_5 with
 * SHA-256 over `message` (a TPMS_ATTEST, tpm/attest.ts), as the vTPM's AK signs; the quote must
 * select exactly one bank, SHA-256, and the PCR values sent must be exactly the selected ones, in
 * ascending order, whose SHA-256 over their concatenation is the quote's pcrDigest. Pure.
 */
import {
	createHash,
	verify as cryptoVerify,
	type KeyObject,
	timingSafeEqual,
} from "node:crypto";
import { DadiError } from "../../errors.js";
import {
	parseTpmsAttest,
	TPM_ALG_SHA256,
	type TpmQuoteInfo,
} from "../tpm/attest.js";

export interface TpmQuote {
	signature: Buffer;
	message: Buffer;
	pcrs: Buffer[];
}

export interface VerifiedTpmQuote {
	info: TpmQuoteInfo;
	/** PCR index → its SHA-256 bank value. */
	pcrs: Map<number, Buffer>;
}

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `vTPM quote: ${detail}`);
}

export function verifyTpmQuote(q: TpmQuote, ak: KeyObject): VerifiedTpmQuote {
	const modulusBytes = ((ak.asymmetricKeyDetails?.modulusLength ?? 0) + 7) >> 3;
	let ok = false;
	if (ak.asymmetricKeyType === "rsa" && q.signature.length === modulusBytes) {
		try {
			ok = cryptoVerify("sha256", q.message, ak, q.signature);
		} catch {
			ok = false;
		}
	}
	if (!ok)
		throw new DadiError(
			"SIGNATURE_INVALID",
			"vTPM quote: the signature does not verify under the HCL attestation key (HCLAkPub)",
		);
	const info = parseTpmsAttest(q.message);
	const [sel, ...more] = info.pcrSelections;
	if (!sel || more.length > 0 || sel.hash !== TPM_ALG_SHA256)
		throw new DadiError(
			"EVIDENCE_UNSUPPORTED",
			"vTPM quote: expected exactly one PCR bank, SHA-256",
		);
	if (sel.pcrs.length !== q.pcrs.length)
		throw invalid(
			`the quote selects ${sel.pcrs.length} PCRs, ${q.pcrs.length} values were sent`,
		);
	const h = createHash("sha256");
	const pcrs = new Map<number, Buffer>();
	sel.pcrs.forEach((index, i) => {
		const v = q.pcrs[i] as Buffer;
		if (v.length !== 32) throw invalid("a PCR value is not 32 bytes");
		h.update(v);
		pcrs.set(index, v);
	});
	const digest = h.digest();
	if (info.pcrDigest.length !== 32 || !timingSafeEqual(info.pcrDigest, digest))
		throw invalid("the PCR values sent are not those the quote signed");
	return { info, pcrs };
}
