/**
 * Synthetic Azure SEV-SNP vTPM evidence for tests (Trustee's v1/v2 shape): a test AK (RSA-2048), HCL
 * runtime data naming it, an HCL report around a synthetic SNP report (snp-synthetic.ts) whose
 * REPORT_DATA is the runtime data's SHA-256, and a TPMS_ATTEST quote over 24 SHA-256 PCRs with the
 * given nonce, signed by the AK. Verifies only under the synthetic SNP trust anchors.
 */
import {
	createHash,
	sign as cryptoSign,
	generateKeyPairSync,
	type KeyObject,
} from "node:crypto";
import type { CertSource } from "../../src/attest/snp/verifier.js";
import {
	type SyntheticReportOptions,
	signedReport,
	syntheticChain,
	syntheticLeaf,
	syntheticTrust,
} from "./snp-synthetic.js";

let ak: { privateKey: KeyObject; publicKey: KeyObject } | undefined;

export function testAk(): { privateKey: KeyObject; publicKey: KeyObject } {
	ak ??= generateKeyPairSync("rsa", { modulusLength: 2048 });
	return ak;
}

export function runtimeData(
	o: { akPublic?: KeyObject; userData?: Buffer; extra?: object } = {},
): Buffer {
	const jwk = (o.akPublic ?? testAk().publicKey).export({ format: "jwk" });
	const ud = Buffer.alloc(64);
	o.userData?.copy(ud);
	return Buffer.from(
		JSON.stringify({
			keys: [{ kid: "HCLAkPub", key_ops: ["sign"], ...jwk }],
			"vm-configuration": {
				"console-enabled": false,
				"secure-boot": true,
				"tpm-enabled": true,
				vmUniqueId: "00000000-0000-4000-8000-000000000001",
			},
			"user-data": ud.toString("hex").toUpperCase(),
			...o.extra,
		}),
	);
}

/** An HCL report (2600 bytes, zero-padded) of `type` (2 SNP, 4 TDX) around `hw`. */
export function hclReport(
	hw: Buffer,
	varData: Buffer,
	o: { type?: number; version?: number } = {},
): Buffer {
	const b = Buffer.alloc(Math.max(2600, 0x4d4 + varData.length));
	b.writeUInt32LE(0x414c4348, 0);
	b.writeUInt32LE(o.version ?? 1, 4);
	b.writeUInt32LE(0x4d4 + varData.length, 8);
	b.writeUInt32LE(2, 12);
	hw.copy(b, 0x20);
	b.writeUInt32LE(20 + varData.length, 0x4c0);
	b.writeUInt32LE(1, 0x4c4);
	b.writeUInt32LE(o.type ?? 2, 0x4c8);
	b.writeUInt32LE(1, 0x4cc);
	b.writeUInt32LE(varData.length, 0x4d0);
	varData.copy(b, 0x4d4);
	return b;
}

/** TPMS_ATTEST of a quote selecting `select` (default PCRs 0–23) of the SHA-256 bank. */
export function tpmsAttest(
	nonce: Buffer,
	pcrs: Buffer[],
	select: Buffer = Buffer.from([0xff, 0xff, 0xff]),
): Buffer {
	const head = Buffer.alloc(6);
	head.writeUInt32BE(0xff544347, 0);
	head.writeUInt16BE(0x8018, 4);
	const sized = (b: Buffer) => {
		const n = Buffer.alloc(2);
		n.writeUInt16BE(b.length);
		return Buffer.concat([n, b]);
	};
	const clock = Buffer.alloc(17 + 8);
	clock.writeBigUInt64BE(123456n, 0);
	clock.writeUInt32BE(2, 8);
	clock[16] = 1;
	clock.writeBigUInt64BE(0x2020031200120003n, 17);
	const sel = Buffer.alloc(4 + 3);
	sel.writeUInt32BE(1, 0);
	sel.writeUInt16BE(0x000b, 4);
	sel[6] = select.length;
	const digest = createHash("sha256").update(Buffer.concat(pcrs)).digest();
	return Buffer.concat([
		head,
		sized(Buffer.concat([Buffer.from([0, 0x0b]), Buffer.alloc(32, 7)])),
		sized(nonce),
		clock,
		sel,
		select,
		sized(digest),
	]);
}

export function syntheticPcrs(o: { pcr8?: Buffer } = {}): Buffer[] {
	return Array.from({ length: 24 }, (_, i) =>
		i === 8 && o.pcr8
			? o.pcr8
			: createHash("sha256").update(`pcr${i}`).digest(),
	);
}

export interface SyntheticAzOptions {
	/** The quote's nonce (extraData): the session's report-data digest. */
	nonce: Buffer;
	/** v2 puts the nonce into the runtime data's user-data too (default 2). */
	version?: 1 | 2;
	/** user-data to write instead of the nonce. */
	userData?: Buffer;
	pcrs?: Buffer[];
	report?: SyntheticReportOptions;
	/** Edits the HCL report after it is built (the SNP report inside is already signed). */
	editHcl?: (b: Buffer) => void;
	/** Edits the TPMS_ATTEST before it is signed. */
	editMessage?: (b: Buffer) => Buffer;
	signer?: KeyObject;
}

export interface SyntheticAz {
	evidence: {
		version: number;
		tpm_quote: { signature: string; message: string; pcrs: string[] };
		hcl_report: string;
		vcek: string;
	};
	varData: Buffer;
}

export function makeSyntheticAzSnp(o: SyntheticAzOptions): SyntheticAz {
	const version = o.version ?? 2;
	const varData = runtimeData({
		userData: o.userData ?? (version >= 2 ? o.nonce : undefined),
	});
	const reportData = Buffer.alloc(64);
	createHash("sha256").update(varData).digest().copy(reportData);
	const leaf = syntheticLeaf();
	const report = signedReport(leaf.key, {
		version: 3,
		reportData,
		...o.report,
	});
	const hcl = hclReport(report, varData);
	o.editHcl?.(hcl);
	const pcrs = o.pcrs ?? syntheticPcrs();
	let message = tpmsAttest(o.nonce, pcrs);
	if (o.editMessage) message = o.editMessage(message);
	const signature = cryptoSign(
		"sha256",
		message,
		o.signer ?? testAk().privateKey,
	);
	return {
		evidence: {
			version,
			tpm_quote: {
				signature: signature.toString("hex"),
				message: message.toString("hex"),
				pcrs: pcrs.map((p) => p.toString("hex")),
			},
			hcl_report: hcl.toString("base64url"),
			vcek: leaf.der.toString("base64url"),
		},
		varData,
	};
}

/** The synthetic ASK/ARK as a certificate source, and the trust anchors and a time they verify at. */
export function syntheticAzTrust() {
	const c = syntheticChain();
	const certSource: CertSource = async () => ({ ask: c.ask, ark: c.ark });
	return {
		certSource,
		trust: syntheticTrust(),
		now: new Date(c.made.getTime() + 60_000),
	};
}
