/**
 * A synthetic AMD SEV-SNP signer for tests: a look-alike ARK-Milan → SEV-Milan → SEV-VCEK chain made
 * with openssl (RSA-PSS SHA-384 salt 48, P-384 VCEK with AMD's extensions), and 1184-byte reports
 * signed with the VCEK's key. The chain is generated once per test process; leaves are generated
 * once per distinct set of extensions. It verifies only under its own trust anchors (`trust`).
 */
import { execFileSync } from "node:child_process";
import {
	createHash,
	createPrivateKey,
	sign as cryptoSign,
	type KeyObject,
} from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TrustAnchors } from "../../src/attest/snp/trust.js";
import { pemToDer } from "../../src/attest/snp/vcek.js";

const SUBJECT =
	"/OU=Engineering/C=US/L=Santa Clara/ST=CA/O=Advanced Micro Devices/CN=";
const PSS = [
	"-sha384",
	"-sigopt",
	"rsa_padding_mode:pss",
	"-sigopt",
	"rsa_pss_saltlen:48",
	"-sigopt",
	"rsa_mgf1_md:sha384",
];

export interface SyntheticTcb {
	bootloader: number;
	tee: number;
	snp: number;
	microcode: number;
}

export const SYNTHETIC_TCB: SyntheticTcb = {
	bootloader: 3,
	tee: 0,
	snp: 8,
	microcode: 115,
};
export const SYNTHETIC_CHIP_ID = Buffer.alloc(64, 0xc3);

interface Chain {
	/** The ASK's certificate and private key (PEM), kept in memory to sign leaves later. */
	askPem: string;
	askKey: string;
	ask: Buffer;
	ark: Buffer;
	/** When the chain was made: certificates are valid from one day before to ~10 years after. */
	made: Date;
}

let chain: Chain | undefined;
const leaves = new Map<string, { der: Buffer; key: KeyObject }>();

function openssl(args: string[], cwd: string): void {
	execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

function derOf(pemFile: string): Buffer {
	const [der] = pemToDer(readFileSync(pemFile, "utf8"));
	if (!der) throw new Error(`no certificate in ${pemFile}`);
	return der;
}

/** Runs `f` in a fresh temporary directory, removed afterwards. */
function inTemp<T>(f: (dir: string) => T): T {
	const dir = mkdtempSync(join(tmpdir(), "dadi-snp-"));
	try {
		return f(dir);
	} finally {
		rmSync(dir, { recursive: true, force: true });
	}
}

function makeChain(): Chain {
	if (!chain) chain = inTemp(generateChain);
	return chain;
}

function generateChain(dir: string): Chain {
	const ca = join(dir, "ca.cnf");
	writeFileSync(
		ca,
		"[req]\ndistinguished_name=dn\n[dn]\n[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
	);
	openssl(
		[
			"req",
			"-x509",
			"-newkey",
			"rsa:2048",
			"-nodes",
			"-keyout",
			"ark.key",
			"-out",
			"ark.pem",
			"-days",
			"3650",
			"-subj",
			`${SUBJECT}ARK-Milan`,
			"-config",
			ca,
			"-extensions",
			"ca",
			"-set_serial",
			"1",
			...PSS,
		],
		dir,
	);
	openssl(
		[
			"req",
			"-new",
			"-newkey",
			"rsa:2048",
			"-nodes",
			"-keyout",
			"ask.key",
			"-out",
			"ask.csr",
			"-subj",
			`${SUBJECT}SEV-Milan`,
			"-config",
			ca,
		],
		dir,
	);
	openssl(
		[
			"x509",
			"-req",
			"-in",
			"ask.csr",
			"-CA",
			"ark.pem",
			"-CAkey",
			"ark.key",
			"-set_serial",
			"2",
			"-days",
			"3650",
			"-extfile",
			ca,
			"-extensions",
			"ca",
			"-out",
			"ask.pem",
			...PSS,
		],
		dir,
	);
	return {
		askPem: readFileSync(join(dir, "ask.pem"), "utf8"),
		askKey: readFileSync(join(dir, "ask.key"), "utf8"),
		ask: derOf(join(dir, "ask.pem")),
		ark: derOf(join(dir, "ark.pem")),
		made: new Date(),
	};
}

function colonHex(b: Buffer): string {
	return [...b].map((x) => x.toString(16).padStart(2, "0")).join(":");
}

export interface SyntheticLeafOptions {
	tcb?: SyntheticTcb;
	/** The hardware ID extension (64 bytes); default SYNTHETIC_CHIP_ID. */
	hwid?: Buffer;
	/** Leaf validity in days from the chain's creation (default 365). */
	days?: number;
	productName?: string;
}

/** A VCEK signed by the synthetic ASK (cached by its options). */
export function syntheticLeaf(o: SyntheticLeafOptions = {}): {
	der: Buffer;
	key: KeyObject;
} {
	const c = makeChain();
	const tcb = o.tcb ?? SYNTHETIC_TCB;
	const hwid = o.hwid ?? SYNTHETIC_CHIP_ID;
	const days = o.days ?? 365;
	const productName = o.productName ?? "Milan-B0";
	const id = JSON.stringify([tcb, hwid.toString("hex"), days, productName]);
	const hit = leaves.get(id);
	if (hit) return hit;
	const n = leaves.size;
	const out = inTemp((dir) =>
		makeLeaf(dir, c, n, tcb, hwid, days, productName),
	);
	leaves.set(id, out);
	return out;
}

function makeLeaf(
	dir: string,
	c: Chain,
	n: number,
	tcb: SyntheticTcb,
	hwid: Buffer,
	days: number,
	productName: string,
): { der: Buffer; key: KeyObject } {
	writeFileSync(join(dir, "ask.pem"), c.askPem);
	writeFileSync(join(dir, "ask.key"), c.askKey, { mode: 0o600 });
	const ext = join(dir, `leaf${n}.cnf`);
	// AMD encodes the SPLs as DER INTEGERs and the hardware ID as the raw bytes in the OCTET STRING.
	writeFileSync(
		ext,
		[
			"[req]",
			"distinguished_name=dn",
			"[dn]",
			"[leaf]",
			"1.3.6.1.4.1.3704.1.1=ASN1:INTEGER:0",
			`1.3.6.1.4.1.3704.1.2=ASN1:IA5STRING:${productName}`,
			`1.3.6.1.4.1.3704.1.3.1=ASN1:INTEGER:${tcb.bootloader}`,
			`1.3.6.1.4.1.3704.1.3.2=ASN1:INTEGER:${tcb.tee}`,
			`1.3.6.1.4.1.3704.1.3.3=ASN1:INTEGER:${tcb.snp}`,
			`1.3.6.1.4.1.3704.1.3.8=ASN1:INTEGER:${tcb.microcode}`,
			`1.3.6.1.4.1.3704.1.4=DER:${colonHex(hwid)}`,
			"",
		].join("\n"),
	);
	openssl(
		[
			"ecparam",
			"-name",
			"secp384r1",
			"-genkey",
			"-noout",
			"-out",
			`leaf${n}.key`,
		],
		dir,
	);
	openssl(
		[
			"req",
			"-new",
			"-key",
			`leaf${n}.key`,
			"-out",
			`leaf${n}.csr`,
			"-subj",
			`${SUBJECT}SEV-VCEK`,
			"-config",
			ext,
		],
		dir,
	);
	openssl(
		[
			"x509",
			"-req",
			"-in",
			`leaf${n}.csr`,
			"-CA",
			"ask.pem",
			"-CAkey",
			"ask.key",
			"-set_serial",
			String(100 + n),
			"-days",
			String(days),
			"-extfile",
			ext,
			"-extensions",
			"leaf",
			"-out",
			`leaf${n}.pem`,
			...PSS,
		],
		dir,
	);
	return {
		der: derOf(join(dir, `leaf${n}.pem`)),
		key: createPrivateKey(readFileSync(join(dir, `leaf${n}.key`))),
	};
}

export interface SyntheticReportOptions {
	measurement?: Buffer;
	debug?: boolean;
	reportData?: Buffer;
	hostData?: Buffer;
	version?: number;
	vmpl?: number;
	tcb?: SyntheticTcb;
	chipId?: Buffer;
	/** 0 VCEK (default), 1 VLEK. */
	signingKey?: number;
	/** Edits the unsigned report just before it is signed. */
	edit?: (report: Buffer) => void;
}

/** Builds a Milan-layout report and signs it with `key` (r, s little-endian in 72-byte fields). */
export function signedReport(
	key: KeyObject,
	o: SyntheticReportOptions = {},
): Buffer {
	const r = Buffer.alloc(0x4a0);
	const version = o.version ?? 2;
	r.writeUInt32LE(version, 0x00);
	r.writeUInt32LE(4, 0x04); // guest_svn
	r.writeBigUInt64LE(0x30000n | (o.debug ? 1n << 19n : 0n), 0x08);
	r.writeUInt32LE(o.vmpl ?? 0, 0x30);
	r.writeUInt32LE(1, 0x34); // ECDSA P-384 SHA-384
	const tcb = o.tcb ?? SYNTHETIC_TCB;
	const tcbBytes = Buffer.from([
		tcb.bootloader,
		tcb.tee,
		0,
		0,
		0,
		0,
		tcb.snp,
		tcb.microcode,
	]);
	for (const off of [0x38, 0x180, 0x1e0, 0x1f0]) tcbBytes.copy(r, off);
	r.writeBigUInt64LE(1n, 0x40); // platform_info: SMT enabled
	r.writeUInt32LE((o.signingKey ?? 0) << 2, 0x48);
	(o.reportData ?? Buffer.alloc(64)).copy(r, 0x50, 0, 64);
	(
		o.measurement ??
		createHash("sha384").update("dadi synthetic guest").digest()
	).copy(r, 0x90, 0, 48);
	(o.hostData ?? Buffer.alloc(32)).copy(r, 0xc0, 0, 32);
	if (version >= 3) {
		r[0x188] = 0x19; // Milan
		r[0x189] = 0x01;
		r[0x18a] = 0x01;
	}
	(o.chipId ?? SYNTHETIC_CHIP_ID).copy(r, 0x1a0, 0, 64);
	o.edit?.(r);
	const sig = cryptoSign("sha384", r.subarray(0, 0x2a0), {
		key,
		dsaEncoding: "ieee-p1363",
	});
	for (let i = 0; i < 48; i++) {
		r[0x2a0 + i] = sig[47 - i] as number;
		r[0x2e8 + i] = sig[95 - i] as number;
	}
	return r;
}

export interface SyntheticSnp {
	report: Buffer;
	leaf: Buffer;
	chain: { ask: Buffer; ark: Buffer };
	trust: TrustAnchors;
	/** A time inside every certificate's validity. */
	now: Date;
}

/** Trust anchors that pin the synthetic ARK as Milan's root. */
export function syntheticTrust(): TrustAnchors {
	const c = makeChain();
	return { ark: { milan: [createHash("sha256").update(c.ark).digest("hex")] } };
}

export function syntheticChain(): { ask: Buffer; ark: Buffer; made: Date } {
	const c = makeChain();
	return { ask: c.ask, ark: c.ark, made: c.made };
}

/** A synthetic Milan VCEK-signed report, its chain and the trust anchors it verifies under. */
export function makeSyntheticSnp(
	o: {
		measurement?: Buffer;
		debug?: boolean;
		reportData?: Buffer;
		hostData?: Buffer;
		version?: number;
	} = {},
): SyntheticSnp {
	const c = makeChain();
	const leaf = syntheticLeaf();
	return {
		report: signedReport(leaf.key, o),
		leaf: leaf.der,
		chain: { ask: c.ask, ark: c.ark },
		trust: syntheticTrust(),
		now: new Date(c.made.getTime() + 60_000),
	};
}
