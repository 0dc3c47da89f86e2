/**
 * The I/O edge of attestation: certificates and collateral from files and directories, for
 * `dadi-broker evidence verify` and for the broker's SNP/TDX verifiers.
 *
 * SNP certificates: any mix of PEM bundles and DER files; each certificate is sorted by what it is
 * (VCEK or VLEK leaf by its CN "SEV-VCEK"/"SEV-VLEK", ARK self-signed, ASK/ASVK otherwise) — so AMD
 * KDS's `cert_chain` (ASK then ARK) and `vcek` downloads work as they are.
 *
 * TDX collateral directory: the Intel PCS response bodies and files, recognised by name —
 * `*tcbinfo*.json` or `*tcb-info*.json` (several allowed: the one whose fmspc matches the quote is
 * used), `*qe-identity*.json`, `*tcb-signing-chain*.pem`, `pck-crl.der`, `root-crl.der`,
 * `pck-crl-issuer-chain.pem`.
 */
import { X509Certificate } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { DadiError, fromSystemError } from "../errors.js";
import { pemCertificates } from "./pem.js";
import { decodeTcb, SNP_PRODUCTS, type SnpProduct } from "./snp/report.js";
import {
	amdExtensions,
	type ParsedCert,
	parseCert,
	type SignerKind,
} from "./snp/vcek.js";
import type { CertRequest, CertSource } from "./snp/verifier.js";
import type { TdxCollateral } from "./tdx/verify.js";

export interface SnpCertFiles {
	leaf?: Buffer;
	leafKind?: "vcek" | "vlek";
	ask?: Buffer;
	ark?: Buffer;
}

const MAX_FILE = 1 << 20;

async function readSmall(path: string, what: string): Promise<Buffer> {
	const b = await readFile(path).catch((e) => {
		throw fromSystemError(e, path, `reading ${what}`);
	});
	if (b.length > MAX_FILE)
		throw new DadiError(
			"INPUT_INVALID",
			`${path}: larger than ${MAX_FILE} bytes; not ${what}`,
		);
	return b;
}

/** DER certificates in a file: one DER certificate, or every PEM block of a bundle. */
export function certificatesIn(bytes: Buffer, source: string): Buffer[] {
	const text = bytes.toString("latin1");
	if (text.includes("-----BEGIN CERTIFICATE-----"))
		return pemCertificates(
			text,
			source,
			(d) => new DadiError("INPUT_INVALID", d),
			64,
		);
	return [bytes];
}

export function sortSnpCertificates(
	ders: { der: Buffer; source: string }[],
): SnpCertFiles {
	const out: SnpCertFiles = {};
	for (const { der, source } of ders) {
		let c: X509Certificate;
		try {
			c = new X509Certificate(der);
		} catch {
			throw new DadiError(
				"EVIDENCE_INVALID",
				`${source}: not an X.509 certificate`,
			);
		}
		const cn = /CN=([^\n,]+)/.exec(c.subject)?.[1]?.trim() ?? "";
		const set = (k: "leaf" | "ask" | "ark", kind?: "vcek" | "vlek") => {
			if (out[k])
				throw new DadiError(
					"USAGE",
					`${source}: a second ${k === "leaf" ? "VCEK/VLEK" : k.toUpperCase()} certificate; give one chain`,
				);
			out[k] = der;
			if (kind) out.leafKind = kind;
		};
		if (cn === "SEV-VCEK") set("leaf", "vcek");
		else if (cn === "SEV-VLEK") set("leaf", "vlek");
		else if (c.subject === c.issuer) set("ark");
		else set("ask");
	}
	return out;
}

export async function loadSnpCertFiles(paths: string[]): Promise<SnpCertFiles> {
	const ders: { der: Buffer; source: string }[] = [];
	for (const p of paths)
		for (const der of certificatesIn(await readSmall(p, "a certificate"), p))
			ders.push({ der, source: p });
	return sortSnpCertificates(ders);
}

export type TdxCollateralFiles = TdxCollateral;

/** The collateral in `dir` for a quote of this FMSPC (hex, any case). */
export async function loadTdxCollateral(
	dir: string,
	fmspc: string,
): Promise<TdxCollateralFiles> {
	const names = await readdir(dir).catch((e) => {
		throw fromSystemError(e, dir, "reading the collateral directory");
	});
	const out: TdxCollateralFiles = {};
	const text = async (n: string) =>
		(await readSmall(join(dir, n), "collateral")).toString("utf8");
	const tcbInfos = names.filter((n) => /tcb-?info.*\.json$/i.test(n)).sort();
	for (const n of tcbInfos) {
		const body = await text(n);
		let f: unknown;
		try {
			f = (JSON.parse(body) as { tcbInfo?: { fmspc?: unknown } }).tcbInfo
				?.fmspc;
		} catch {
			throw new DadiError(
				"INPUT_INVALID",
				`${join(dir, n)}: not a TCB info response (JSON)`,
			);
		}
		if (typeof f === "string" && f.toLowerCase() === fmspc.toLowerCase()) {
			out.tcbInfo = body;
			break;
		}
	}
	for (const n of names.sort()) {
		if (/qe-?identity.*\.json$/i.test(n)) out.qeIdentity ??= await text(n);
		else if (/tcb-signing-chain.*\.pem$/i.test(n))
			out.tcbSigningChain ??= await text(n);
		else if (n === "pck-crl.der")
			out.pckCrl = await readSmall(join(dir, n), "a CRL");
		else if (n === "root-crl.der")
			out.rootCrl = await readSmall(join(dir, n), "a CRL");
		else if (n === "pck-crl-issuer-chain.pem")
			out.pckCrlIssuerChain = await text(n);
	}
	return out;
}

/**
 * An SNP certificate source over a directory (`--snp-certs DIR`): every PEM/DER certificate in
 * it, indexed once — ARKs ("ARK-<Product>"), ASKs ("SEV-<Product>"), ASVKs ("SEV-VLEK-<Product>"),
 * and VCEKs/VLEKs by product, hardware ID and TCB — so a guest may send only its report.
 * Chains are still verified for every report against the pinned roots: the directory is a cache,
 * not a trust anchor.
 */
export async function snpCertSourceFromDir(dir: string): Promise<CertSource> {
	const names = (
		await readdir(dir).catch((e) => {
			throw fromSystemError(e, dir, "reading the SNP certificate directory");
		})
	)
		.filter((n) => /\.(pem|der|crt|cer)$/i.test(n))
		.sort();
	const certs: ParsedCert[] = [];
	for (const n of names)
		for (const der of certificatesIn(
			await readSmall(join(dir, n), "a certificate"),
			join(dir, n),
		))
			certs.push(parseCert(der, join(dir, n)));
	const productOf = (cn: string): SnpProduct | undefined =>
		SNP_PRODUCTS.find((p) => cn.toLowerCase().endsWith(`-${p}`));
	const arks = new Map<SnpProduct, Buffer>();
	const asks = new Map<string, Buffer>(); // `${signer}:${product}`
	const leaves: {
		kind: SignerKind;
		product?: SnpProduct;
		ext: ReturnType<typeof amdExtensions>;
		der: Buffer;
	}[] = [];
	for (const c of certs) {
		const cn = c.subjectCn;
		if (cn === "SEV-VCEK" || cn === "SEV-VLEK")
			leaves.push({
				kind: cn === "SEV-VCEK" ? "vcek" : "vlek",
				product: productOf(c.issuerCn),
				ext: amdExtensions(c, c.subjectCn),
				der: c.der,
			});
		else if (cn.startsWith("ARK-")) {
			const p = productOf(cn);
			if (p) arks.set(p, c.der);
		} else if (cn.startsWith("SEV-VLEK-")) {
			const p = productOf(cn);
			if (p) asks.set(`vlek:${p}`, c.der);
		} else if (cn.startsWith("SEV-")) {
			const p = productOf(cn);
			if (p) asks.set(`vcek:${p}`, c.der);
		}
	}
	return async (r: CertRequest) => {
		const candidates = leaves.filter(
			(l) =>
				l.kind === r.signer &&
				(r.product === undefined || l.product === r.product) &&
				(r.signer === "vlek" ||
					(l.ext.hwid !== undefined &&
						l.ext.hwid.equals(r.chipId.subarray(0, l.ext.hwid.length)))),
		);
		const sameTcb = candidates.find((l) => {
			if (!l.product) return false;
			const t = decodeTcb(r.reportedTcb, l.product) as unknown as Record<
				string,
				number
			>;
			return ["bootloader", "tee", "snp", "microcode"].every(
				(k) => (l.ext as Record<string, unknown>)[k] === t[k],
			);
		});
		const leaf = sameTcb ?? candidates[0];
		const product = leaf?.product ?? r.product;
		if (!product) return { leaf: leaf?.der };
		return {
			leaf: leaf?.der,
			ask: asks.get(`${r.signer}:${product}`),
			ark: arks.get(product),
		};
	};
}
