/**
 * Test-only TDX quotes: a v4 quote signed by a fresh attestation key, whose QE report is signed by a
 * test PCK certificate (with an SGX extension) under a test root made with openssl. The verifier
 * accepts them only when that root is pinned (`trust`). Nothing here is Intel's.
 */
import { execFileSync } from "node:child_process";
import {
	createHash,
	createPrivateKey,
	generateKeyPairSync,
	type KeyObject,
	sign,
	X509Certificate,
} from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TdxTrust } from "../../src/attest/tdx/trust.js";

const SGX = [1, 2, 840, 113741, 1, 13, 1];

function derLen(n: number): Buffer {
	if (n < 0x80) return Buffer.from([n]);
	if (n < 0x100) return Buffer.from([0x81, n]);
	return Buffer.from([0x82, n >> 8, n & 0xff]);
}
function tlv(tag: number, body: Buffer): Buffer {
	return Buffer.concat([Buffer.from([tag]), derLen(body.length), body]);
}
function oid(arcs: number[]): Buffer {
	const out = [40 * (arcs[0] as number) + (arcs[1] as number)];
	for (const a of arcs.slice(2)) {
		const b: number[] = [a & 0x7f];
		for (let v = a >>> 7; v > 0; v >>>= 7) b.unshift(0x80 | (v & 0x7f));
		out.push(...b);
	}
	return tlv(0x06, Buffer.from(out));
}
const seq = (...p: Buffer[]) => tlv(0x30, Buffer.concat(p));
const octets = (b: Buffer) => tlv(0x04, b);
const int = (n: number) =>
	tlv(0x02, n < 0x80 ? Buffer.from([n]) : Buffer.from([0, n]));

/** The SGX extension of a PCK certificate: PPID, TCB (16 SVNs, PCESVN, CPUSVN), PCE-ID, FMSPC. */
export function sgxExtension(fmspc = "00906ed50000"): Buffer {
	const tcb: Buffer[] = [];
	for (let i = 1; i <= 16; i++) tcb.push(seq(oid([...SGX, 2, i]), int(2)));
	tcb.push(seq(oid([...SGX, 2, 17]), int(11)));
	tcb.push(seq(oid([...SGX, 2, 18]), octets(Buffer.alloc(16, 2))));
	return seq(
		seq(oid([...SGX, 1]), octets(Buffer.alloc(16, 0x33))),
		seq(oid([...SGX, 2]), seq(...tcb)),
		seq(oid([...SGX, 3]), octets(Buffer.from("0000", "hex"))),
		seq(oid([...SGX, 4]), octets(Buffer.from(fmspc, "hex"))),
	);
}

export interface SyntheticTdxPlatform {
	trust: TdxTrust;
	/** PEM: PCK leaf, then the test root. */
	chainPem: string;
	pckKey: KeyObject;
}

/** A test root and PCK certificate (valid from a day ago for ten years). Needs openssl. */
export function syntheticTdxPlatform(): SyntheticTdxPlatform {
	const dir = mkdtempSync(join(tmpdir(), "dadi-tdx-synth-"));
	try {
		const ossl = (...args: string[]) =>
			execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
		ossl(
			"ecparam",
			"-name",
			"prime256v1",
			"-genkey",
			"-noout",
			"-out",
			"root.key",
		);
		ossl(
			"req",
			"-new",
			"-x509",
			"-key",
			"root.key",
			"-out",
			"root.pem",
			"-days",
			"3650",
			"-subj",
			"/CN=dadi test SGX root",
			"-addext",
			"basicConstraints=critical,CA:TRUE",
			"-addext",
			"keyUsage=critical,keyCertSign,cRLSign",
		);
		ossl(
			"ecparam",
			"-name",
			"prime256v1",
			"-genkey",
			"-noout",
			"-out",
			"pck.key",
		);
		ossl(
			"req",
			"-new",
			"-key",
			"pck.key",
			"-out",
			"pck.csr",
			"-subj",
			"/CN=dadi test PCK",
		);
		writeFileSync(
			join(dir, "ext.cnf"),
			`[v]\nbasicConstraints=critical,CA:FALSE\n1.2.840.113741.1.13.1=DER:${sgxExtension().toString("hex")}\n`,
		);
		ossl(
			"x509",
			"-req",
			"-in",
			"pck.csr",
			"-CA",
			"root.pem",
			"-CAkey",
			"root.key",
			"-CAcreateserial",
			"-out",
			"pck.pem",
			"-days",
			"3650",
			"-extfile",
			"ext.cnf",
			"-extensions",
			"v",
		);
		const root = readFileSync(join(dir, "root.pem"), "utf8");
		const pck = readFileSync(join(dir, "pck.pem"), "utf8");
		return {
			trust: { rootFingerprints: [new X509Certificate(root).fingerprint256] },
			chainPem: pck + root,
			pckKey: createPrivateKey(readFileSync(join(dir, "pck.key"))),
		};
	} finally {
		rmSync(dir, { recursive: true, force: true });
	}
}

export interface SyntheticQuoteOptions {
	reportData?: Buffer;
	mrtd?: Buffer;
	rtmrs?: Buffer[];
	debug?: boolean;
}

const INTEL_QE_VENDOR = Buffer.from("939a7233f79c4ca9940a0db3957f0607", "hex");

/** A v4 TDX quote signed under `platform`. */
export function syntheticQuote(
	platform: SyntheticTdxPlatform,
	o: SyntheticQuoteOptions = {},
): Buffer {
	const header = Buffer.alloc(48);
	header.writeUInt16LE(4, 0);
	header.writeUInt16LE(2, 2);
	header.writeUInt32LE(0x81, 4);
	INTEL_QE_VENDOR.copy(header, 12);
	const body = Buffer.alloc(584);
	if (o.debug) body[120] = 1;
	(o.mrtd ?? Buffer.alloc(48, 0x4d)).copy(body, 136);
	(o.rtmrs ?? []).forEach((r, i) => {
		r.copy(body, 328 + 48 * i);
	});
	(o.reportData ?? Buffer.alloc(64)).copy(body, 520, 0, 64);
	const signed = Buffer.concat([header, body]);

	const ak = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
	const jwk = ak.publicKey.export({ format: "jwk" });
	const akRaw = Buffer.concat([
		Buffer.from(jwk.x as string, "base64url"),
		Buffer.from(jwk.y as string, "base64url"),
	]);
	const sig = sign("sha256", signed, {
		key: ak.privateKey,
		dsaEncoding: "ieee-p1363",
	});
	const auth = Buffer.alloc(32, 0xa5);
	const qe = Buffer.alloc(384);
	createHash("sha256").update(akRaw).update(auth).digest().copy(qe, 320);
	const qeSig = sign("sha256", qe, {
		key: platform.pckKey,
		dsaEncoding: "ieee-p1363",
	});
	const pem = Buffer.from(platform.chainPem, "latin1");
	const u16 = (n: number) => {
		const b = Buffer.alloc(2);
		b.writeUInt16LE(n);
		return b;
	};
	const u32 = (n: number) => {
		const b = Buffer.alloc(4);
		b.writeUInt32LE(n);
		return b;
	};
	const inner = Buffer.concat([
		qe,
		qeSig,
		u16(auth.length),
		auth,
		u16(5),
		u32(pem.length),
		pem,
	]);
	const sigData = Buffer.concat([sig, akRaw, u16(6), u32(inner.length), inner]);
	return Buffer.concat([signed, u32(sigData.length), sigData]);
}
