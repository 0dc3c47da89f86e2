/**
 * Intel TDX DCAP quote parser (pure: bytes in, a ParsedQuote or a DadiError out). Every length the
 * quote declares is checked against the buffer before anything is sliced; bytes after the signature
 * data are tolerated (real quotes carry padding) but reported as `trailingBytes`.
 *
 * Layout (all integers little-endian):
 *
 *   v4: header (48) | TD report body (584)                          | u32 sigLen | signature data
 *   v5: header (48) | u16 body type | u32 body size | body (584/648) | u32 sigLen | signature data
 *
 *   header: 0 u16 version | 2 u16 attestation key type (2 = ECDSA P-256) | 4 u32 TEE type (0x81 = TDX)
 *           | 8 reserved (4) | 12 QE vendor id (16) | 28 user data (20)
 *   TD report body: 0 TEE_TCB_SVN (16) | 16 MRSEAM (48) | 64 MRSIGNERSEAM (48) | 112 SEAMATTRIBUTES (8)
 *           | 120 TDATTRIBUTES (8) | 128 XFAM (8) | 136 MRTD (48) | 184 MRCONFIGID (48) | 232 MROWNER (48)
 *           | 280 MROWNERCONFIG (48) | 328 RTMR0..3 (4 x 48) | 520 REPORTDATA (64)
 *           | TDX 1.5 only: 584 TEE_TCB_SVN_2 (16) | 600 MRSERVICETD (48)
 *   signature data: ECDSA signature r||s (64, big-endian, over header..body) | attestation key x||y (64)
 *           | u16 certification data type (6) | u32 size | QE report (384) | QE report signature (64)
 *           | u16 QE auth data size | QE auth data | u16 certification data type (5) | u32 size | PEM chain
 *   QE report (SGX report body): 0 CPUSVN (16) | 16 MISCSELECT u32 | 48 ATTRIBUTES (16) | 64 MRENCLAVE (32)
 *           | 128 MRSIGNER (32) | 256 ISVPRODID u16 | 258 ISVSVN u16 | 320 REPORTDATA (64)
 */
import { DadiError } from "../../errors.js";
import { pemCertificates as pemChain } from "../pem.js";

export const HEADER_SIZE = 48;
export const TDX10_BODY_SIZE = 584;
export const TDX15_BODY_SIZE = 648;
export const QE_REPORT_SIZE = 384;
export const ATT_KEY_TYPE_ECDSA_P256 = 2;
export const TEE_TYPE_TDX = 0x81;
export const INTEL_QE_VENDOR_ID = "939a7233f79c4ca9940a0db3957f0607";
/** A quote larger than this is refused before parsing (real ones are about 5 KiB). */
export const MAX_QUOTE_SIZE = 64 * 1024;
const MAX_CERTS = 8;

export interface TdReportBody {
	teeTcbSvn: Buffer;
	mrSeam: Buffer;
	mrSignerSeam: Buffer;
	seamAttributes: Buffer;
	tdAttributes: Buffer;
	xfam: Buffer;
	mrTd: Buffer;
	mrConfigId: Buffer;
	mrOwner: Buffer;
	mrOwnerConfig: Buffer;
	rtmr: [Buffer, Buffer, Buffer, Buffer];
	reportData: Buffer;
	/** TDX 1.5 (body type 3) only. */
	teeTcbSvn2?: Buffer;
	/** TDX 1.5 (body type 3) only. */
	mrServiceTd?: Buffer;
}

export interface QeReport {
	raw: Buffer;
	cpuSvn: Buffer;
	miscSelect: number;
	attributes: Buffer;
	mrEnclave: Buffer;
	mrSigner: Buffer;
	isvProdId: number;
	isvSvn: number;
	reportData: Buffer;
}

export interface ParsedQuote {
	version: 4 | 5;
	attestationKeyType: number;
	teeType: number;
	qeVendorId: Buffer;
	userData: Buffer;
	/** 2 = TDX 1.0 (584-byte body), 3 = TDX 1.5 (648-byte body); v4 quotes are always 2. */
	bodyType: 2 | 3;
	body: TdReportBody;
	/** The bytes the quote signature covers: header (and v5 body descriptor) and body. */
	signedRegion: Buffer;
	/** r||s, 64 bytes big-endian. */
	signature: Buffer;
	/** Uncompressed P-256 point without the 0x04 prefix: x||y. */
	attestationKey: Buffer;
	qeReport: QeReport;
	qeReportSignature: Buffer;
	qeAuthData: Buffer;
	/** The PCK certificate chain, PEM blocks leaf first, as DER. */
	pckChain: Buffer[];
	/** Bytes after the declared signature data (ignored). */
	trailingBytes: number;
}

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `TDX quote: ${detail}`);
}

function unsupported(detail: string): DadiError {
	return new DadiError("EVIDENCE_UNSUPPORTED", `TDX quote: ${detail}`);
}

/** A bounds-checked cursor over the quote; every read names what it reads. */
class Reader {
	constructor(
		private readonly buf: Buffer,
		public pos: number,
		private readonly end: number,
	) {}
	need(n: number, what: string): void {
		if (n < 0 || this.pos + n > this.end)
			throw invalid(
				`truncated: ${what} needs ${n} bytes at offset ${this.pos}, ${Math.max(0, this.end - this.pos)} left`,
			);
	}
	bytes(n: number, what: string): Buffer {
		this.need(n, what);
		const b = this.buf.subarray(this.pos, this.pos + n);
		this.pos += n;
		return b;
	}
	u16(what: string): number {
		this.need(2, what);
		const v = this.buf.readUInt16LE(this.pos);
		this.pos += 2;
		return v;
	}
	u32(what: string): number {
		this.need(4, what);
		const v = this.buf.readUInt32LE(this.pos);
		this.pos += 4;
		return v;
	}
}

function parseBody(b: Buffer, bodyType: 2 | 3): TdReportBody {
	const f = (o: number, n: number) => b.subarray(o, o + n);
	const body: TdReportBody = {
		teeTcbSvn: f(0, 16),
		mrSeam: f(16, 48),
		mrSignerSeam: f(64, 48),
		seamAttributes: f(112, 8),
		tdAttributes: f(120, 8),
		xfam: f(128, 8),
		mrTd: f(136, 48),
		mrConfigId: f(184, 48),
		mrOwner: f(232, 48),
		mrOwnerConfig: f(280, 48),
		rtmr: [f(328, 48), f(376, 48), f(424, 48), f(472, 48)],
		reportData: f(520, 64),
	};
	if (bodyType === 3) {
		body.teeTcbSvn2 = f(584, 16);
		body.mrServiceTd = f(600, 48);
	}
	return body;
}

export function parseQeReport(raw: Buffer): QeReport {
	if (raw.length !== QE_REPORT_SIZE) throw invalid("QE report size");
	return {
		raw,
		cpuSvn: raw.subarray(0, 16),
		miscSelect: raw.readUInt32LE(16),
		attributes: raw.subarray(48, 64),
		mrEnclave: raw.subarray(64, 96),
		mrSigner: raw.subarray(128, 160),
		isvProdId: raw.readUInt16LE(256),
		isvSvn: raw.readUInt16LE(258),
		reportData: raw.subarray(320, 384),
	};
}

/** Splits PEM text into DER certificates (leaf first); anything but CERTIFICATE blocks is refused. */
export function pemCertificates(text: string, what: string): Buffer[] {
	return pemChain(text, what, invalid, MAX_CERTS);
}

function isPemText(t: string): boolean {
	for (let i = 0; i < t.length; i++) {
		const c = t.charCodeAt(i);
		if (!(c === 9 || c === 10 || c === 13 || (c >= 32 && c <= 126)))
			return false;
	}
	return true;
}

export function parseQuote(quote: Buffer): ParsedQuote {
	if (!Buffer.isBuffer(quote)) throw invalid("expected bytes");
	if (quote.length > MAX_QUOTE_SIZE)
		throw invalid(`larger than ${MAX_QUOTE_SIZE} bytes`);
	const r = new Reader(quote, 0, quote.length);
	const version = r.u16("header version");
	if (version !== 4 && version !== 5)
		throw unsupported(`version ${version} (only 4 and 5 are verified)`);
	const attestationKeyType = r.u16("attestation key type");
	const teeType = r.u32("TEE type");
	if (teeType !== TEE_TYPE_TDX)
		throw unsupported(
			`TEE type 0x${teeType.toString(16)} is not TDX (0x81); SGX quotes are not verified`,
		);
	if (attestationKeyType !== ATT_KEY_TYPE_ECDSA_P256)
		throw unsupported(
			`attestation key type ${attestationKeyType} (only 2 = ECDSA P-256)`,
		);
	r.bytes(4, "header reserved");
	const qeVendorId = r.bytes(16, "QE vendor id");
	const userData = r.bytes(20, "user data");

	let bodyType: 2 | 3 = 2;
	let bodySize = TDX10_BODY_SIZE;
	if (version === 5) {
		const t = r.u16("body type");
		const size = r.u32("body size");
		if (t === 2) bodyType = 2;
		else if (t === 3) bodyType = 3;
		else
			throw unsupported(`v5 body type ${t} (only 2 = TDX 1.0 and 3 = TDX 1.5)`);
		bodySize = bodyType === 3 ? TDX15_BODY_SIZE : TDX10_BODY_SIZE;
		if (size !== bodySize)
			throw invalid(
				`body type ${t} declares ${size} bytes, expected ${bodySize}`,
			);
	}
	const body = parseBody(r.bytes(bodySize, "TD report body"), bodyType);
	const signedRegion = quote.subarray(0, r.pos);

	const sigLen = r.u32("signature data length");
	r.need(sigLen, "signature data");
	const sigEnd = r.pos + sigLen;
	const trailingBytes = quote.length - sigEnd;
	const s = new Reader(quote, r.pos, sigEnd);
	const signature = s.bytes(64, "quote signature");
	const attestationKey = s.bytes(64, "attestation key");
	const certType = s.u16("certification data type");
	const certSize = s.u32("certification data size");
	if (certType !== 6)
		throw unsupported(
			`certification data type ${certType} (only 6 = QE report certification data)`,
		);
	s.need(certSize, "certification data");
	if (s.pos + certSize !== sigEnd)
		throw invalid(
			`certification data (${certSize} bytes) does not fill the signature data`,
		);
	const c = new Reader(quote, s.pos, s.pos + certSize);
	const qeReport = parseQeReport(c.bytes(QE_REPORT_SIZE, "QE report"));
	const qeReportSignature = c.bytes(64, "QE report signature");
	const authLen = c.u16("QE auth data size");
	const qeAuthData = c.bytes(authLen, "QE auth data");
	const innerType = c.u16("inner certification data type");
	const innerSize = c.u32("inner certification data size");
	if (innerType !== 5)
		throw unsupported(
			`inner certification data type ${innerType} (only 5 = PCK certificate chain)`,
		);
	const pem = c.bytes(innerSize, "PCK certificate chain");
	if (c.pos !== s.pos + certSize)
		throw invalid("QE report certification data has unexplained bytes");
	// The chain is PEM text, sometimes NUL-terminated.
	let text = pem.toString("latin1");
	text = text.replace(/\0+$/, "");
	if (!isPemText(text)) throw invalid("PCK certificate chain is not PEM text");
	const pckChain = pemCertificates(text, "PCK certificate chain");
	return {
		version,
		attestationKeyType,
		teeType,
		qeVendorId,
		userData,
		bodyType,
		body,
		signedRegion,
		signature,
		attestationKey,
		qeReport,
		qeReportSignature,
		qeAuthData,
		pckChain,
		trailingBytes,
	};
}
