/**
 * The I/O edge of attestation: certificates and collateral from files and directories, for
 * `dadi-broker evidence verify` and for the broker's SNP/TDX verifiers.
 *
 * SNP certificates: any mix of PEM bundles and DER files; each certificate is sorted by what it is
 * (VCEK or VLEK leaf by its CN "SEV-VCEK"/"SEV-VLEK", ARK self-signed, ASK/ASVK otherwise) — so AMD
 * KDS's `cert_chain` (ASK then ARK) and `vcek` downloads work as they are.
 *
 * TDX collateral directory: Intel PCS response bodies and files, dcap-qvl collateral bundles and
 * Intel PCS Client Tool files (Trustee's), classified and selected per FMSPC by tdx/collateral-dir.ts
 * with a report of the files used and ignored.
 */
import { X509Certificate } from "node:crypto";
import { readdir, readFile, stat } from "node:fs/promises";
import { basename, join } from "node:path";
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
import type { PckCa } from "./tdx/collateral-bundle.js";
import {
	type CollateralItem,
	classifyCollateralFile,
	selectTdxCollateral,
	type TdxCollateralReport,
} from "./tdx/collateral-dir.js";
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

const MAX_COLLATERAL_FILES = 4096;

/**
 * Classified files by path, kept while the file's identity, size and times are unchanged: the
 * broker reads the directory for every TDX quote, and parsing bundles each time would let
 * attestation requests cost a full parse of the collateral.
 */
const classified = new Map<string, { key: string; item: CollateralItem }>();

/** Every file of a TDX collateral directory, classified (see tdx/collateral-dir.ts). */
export async function readTdxCollateralDir(
	dir: string,
): Promise<CollateralItem[]> {
	const top = await stat(dir).catch((e) => {
		throw fromSystemError(e, dir, "reading the TDX collateral directory");
	});
	// One file (a dcap-qvl bundle, or the PCS Client Tool file Trustee's file:// URL names) is a
	// directory of one.
	if (top.isFile()) {
		if (top.size > MAX_FILE)
			throw new DadiError(
				"INPUT_INVALID",
				`${dir}: larger than ${MAX_FILE} bytes; not TDX collateral`,
			);
		return [
			classifyCollateralFile(
				basename(dir),
				await readSmall(dir, "TDX collateral"),
			),
		];
	}
	const names = await readdir(dir).catch((e) => {
		throw fromSystemError(e, dir, "reading the TDX collateral directory");
	});
	if (names.length > MAX_COLLATERAL_FILES)
		throw new DadiError(
			"INPUT_INVALID",
			`${dir}: more than ${MAX_COLLATERAL_FILES} entries; not a collateral directory`,
		);
	const items: CollateralItem[] = [];
	for (const name of names.sort()) {
		const path = join(dir, name);
		const st = await stat(path).catch((e) => {
			throw fromSystemError(e, path, "reading TDX collateral");
		});
		if (!st.isFile()) {
			items.push({ kind: "ignored", name, reason: "not a regular file" });
			continue;
		}
		if (st.size > MAX_FILE) {
			items.push({
				kind: "ignored",
				name,
				reason: `larger than ${MAX_FILE} bytes`,
			});
			continue;
		}
		const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
		const cached = classified.get(path);
		if (cached?.key === key) {
			items.push(cached.item);
			continue;
		}
		const item = classifyCollateralFile(
			name,
			await readSmall(path, "collateral"),
		);
		if (classified.size >= MAX_COLLATERAL_FILES) classified.clear();
		classified.set(path, { key, item });
		items.push(item);
	}
	return items;
}

/**
 * The collateral in `dir` for a quote of this FMSPC (hex, any case) and PCK CA, with the report
 * of what was used and ignored; PRECONDITION_FAILED when the TCB info, QE identity or signing
 * chain for the FMSPC is missing.
 */
export async function loadTdxCollateralReport(
	dir: string,
	fmspc: string,
	pckCa?: PckCa,
): Promise<{ collateral: TdxCollateral; report: TdxCollateralReport }> {
	return selectTdxCollateral(
		dir,
		await readTdxCollateralDir(dir),
		fmspc,
		pckCa,
	);
}

export async function loadTdxCollateral(
	dir: string,
	fmspc: string,
	pckCa?: PckCa,
): Promise<TdxCollateralFiles> {
	return (await loadTdxCollateralReport(dir, fmspc, pckCa)).collateral;
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
