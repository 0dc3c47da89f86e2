/**
 * What a TDX collateral directory (`--tdx-collateral DIR`) holds, and the collateral it gives a
 * quote's FMSPC — with a report of the files used, the files ignored and why (pure: names and
 * bytes in; the I/O is in evidence-files.ts).
 *
 * Files are recognised by content where content says what they are:
 *  - JSON (any name; text starting with "{"): an Intel PCS TCB info response (`tcbInfo`, id "TDX"),
 *    a QE identity response (`enclaveIdentity`, id "TD_QE"), a dcap-qvl collateral bundle or an
 *    Intel PCS Client Tool platform-collaterals file (Trustee's `file://` collateral source);
 *  - PEM by name: `*tcb-signing-chain*` / `*tcb-info-issuer-chain*` (the TCB-Info-Issuer-Chain
 *    header), `*qe-identity-signing-chain*` / `*enclave-identity-issuer-chain*` (the same Intel SGX
 *    TCB Signing chain, used when no TCB one is given), `*pck-crl-issuer-chain*`;
 *  - DER CRLs by name: `*pck-crl*.der|.crl`, `*root-crl*` / `*rootcacrl*` / `*root-ca-crl*`.
 * Anything else is ignored, and listed with the reason.
 *
 * Selection for an FMSPC: a bundle entry for it supplies everything it carries (first bundle by
 * name); separate files fill the rest (first file by name per role). A TCB info or bundle for
 * another FMSPC, a second file for a role and unrecognised files are reported as ignored. No TCB
 * info, QE identity or signing chain for the FMSPC is a PRECONDITION_FAILED error saying where
 * to get them (Intel PCS); missing CRLs are reported (the result then has collateral_checked
 * false and policies decide).
 */
import { DadiError } from "../../errors.js";
import {
	type BundleEntry,
	bundleKind,
	type PckCa,
	parseCollateralBundle,
} from "./collateral-bundle.js";
import type { TdxCollateral } from "./verify.js";

export type Role =
	| "tcb-info"
	| "qe-identity"
	| "tcb-signing-chain"
	| "pck-crl"
	| "root-crl"
	| "pck-crl-issuer-chain";

export type CollateralItem =
	| {
			kind: "piece";
			name: string;
			role: Role;
			value: string | Buffer;
			/** TCB info only, lowercase hex. */
			fmspc?: string;
			/** A QE identity signing chain: used for the role only when no TCB one is given. */
			fallback?: boolean;
	  }
	| {
			kind: "bundle";
			name: string;
			form: "dcap-qvl bundle" | "PCS Client Tool file";
			entries: BundleEntry[];
	  }
	| { kind: "ignored"; name: string; reason: string };

export interface TdxCollateralReport {
	dir: string;
	fmspc: string;
	used: { file: string; gives: Role[]; form: string }[];
	ignored: { file: string; reason: string }[];
	/** Optional collateral not found, with where to get it. */
	missing: { what: Role; from: string }[];
}

const PCS = "https://api.trustedservices.intel.com";

/** Where Intel publishes each piece (PCS API v4). */
export function pcsSource(role: Role, fmspc: string): string {
	switch (role) {
		case "tcb-info":
		case "tcb-signing-chain":
			return `${PCS}/tdx/certification/v4/tcb?fmspc=${fmspc.toUpperCase()} (body: the TCB info; TCB-Info-Issuer-Chain header: the signing chain)`;
		case "qe-identity":
			return `${PCS}/tdx/certification/v4/qe/identity (body; SGX-Enclave-Identity-Issuer-Chain header: the signing chain)`;
		case "pck-crl":
		case "pck-crl-issuer-chain":
			return `${PCS}/sgx/certification/v4/pckcrl?ca=platform|processor&encoding=der (body; SGX-PCK-CRL-Issuer-Chain header: its issuer chain)`;
		case "root-crl":
			return "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der";
	}
}

function ignored(name: string, reason: string): CollateralItem {
	return { kind: "ignored", name, reason };
}

function isObj(v: unknown): v is Record<string, unknown> {
	return typeof v === "object" && v !== null && !Array.isArray(v);
}

const PEM_ROLES: [RegExp, Role, boolean][] = [
	[/tcb-?(signing|info-?issuer)-?chain/i, "tcb-signing-chain", false],
	[
		/(qe-?identity-?signing|enclave-?identity-?issuer)-?chain/i,
		"tcb-signing-chain",
		true,
	],
	[/pck-?crl-?issuer-?chain/i, "pck-crl-issuer-chain", false],
];

/**
 * What one file is. A JSON file that claims to be a bundle but is malformed is an INPUT_INVALID
 * error (a broken bundle is not silently dropped); everything unrecognised is `ignored`.
 */
export function classifyCollateralFile(
	name: string,
	bytes: Buffer,
): CollateralItem {
	if (name.startsWith(".")) return ignored(name, "hidden file");
	const head = bytes.subarray(0, 64).toString("utf8").trimStart();
	if (head.startsWith("{")) {
		const text = bytes.toString("utf8");
		let v: unknown;
		try {
			v = JSON.parse(text);
		} catch {
			return ignored(name, "not JSON (starts with '{' but does not parse)");
		}
		if (!isObj(v)) return ignored(name, "JSON, but not an object");
		if (isObj(v.tcbInfo)) {
			const id = v.tcbInfo.id;
			const f = v.tcbInfo.fmspc;
			if (id !== "TDX")
				return ignored(
					name,
					`a TCB info with id ${JSON.stringify(id)?.slice(0, 32)}, not "TDX" (an SGX TCB info?)`,
				);
			if (typeof f !== "string" || !/^[0-9a-fA-F]{12}$/.test(f))
				return ignored(name, "a TCB info without a 6-byte hex fmspc");
			return {
				kind: "piece",
				name,
				role: "tcb-info",
				value: text,
				fmspc: f.toLowerCase(),
			};
		}
		if (isObj(v.enclaveIdentity)) {
			const id = v.enclaveIdentity.id;
			if (id !== "TD_QE")
				return ignored(
					name,
					`an enclave identity with id ${JSON.stringify(id)?.slice(0, 32)}, not "TD_QE" (the SGX QE's?)`,
				);
			return { kind: "piece", name, role: "qe-identity", value: text };
		}
		const kind = bundleKind(v);
		if (kind) {
			const b = parseCollateralBundle(text, name);
			return {
				kind: "bundle",
				name,
				form: kind === "dcap-qvl" ? "dcap-qvl bundle" : "PCS Client Tool file",
				entries: b.entries,
			};
		}
		return ignored(
			name,
			"JSON, but not collateral (no tcbInfo, enclaveIdentity, tcb_info or collaterals member)",
		);
	}
	if (/\.json$/i.test(name)) return ignored(name, "not JSON");
	if (/\.(pem|crt|cer)$/i.test(name)) {
		const pem = bytes.toString("latin1");
		for (const [re, role, fallback] of PEM_ROLES)
			if (re.test(name)) {
				if (!pem.includes("-----BEGIN CERTIFICATE-----"))
					return ignored(name, "named as a certificate chain, but not PEM");
				return {
					kind: "piece",
					name,
					role,
					value: pem,
					...(fallback ? { fallback } : {}),
				};
			}
		return ignored(
			name,
			"a certificate file of no collateral role (unknown name; the Intel SGX Root CA is pinned, not read from here)",
		);
	}
	if (/\.(der|crl)$/i.test(name)) {
		if (/pck-?crl/i.test(name) && !/issuer/i.test(name))
			return { kind: "piece", name, role: "pck-crl", value: bytes };
		if (/root-?(ca-?)?crl|rootcacrl/i.test(name))
			return { kind: "piece", name, role: "root-crl", value: bytes };
		return ignored(name, "unknown name (not a PCK or root CRL name)");
	}
	return ignored(name, "unknown name");
}

const REQUIRED: Role[] = ["tcb-info", "qe-identity", "tcb-signing-chain"];
const OPTIONAL: Role[] = ["pck-crl", "root-crl"];

const KEY: Record<Role, keyof TdxCollateral> = {
	"tcb-info": "tcbInfo",
	"qe-identity": "qeIdentity",
	"tcb-signing-chain": "tcbSigningChain",
	"pck-crl": "pckCrl",
	"root-crl": "rootCrl",
	"pck-crl-issuer-chain": "pckCrlIssuerChain",
};

/**
 * The collateral for `fmspc` (lowercase or uppercase hex) from classified files, and the report.
 * `pckCa` picks the PCK CRL when a source carries both (Intel PCS Client Tool files).
 */
export function selectTdxCollateral(
	dir: string,
	items: CollateralItem[],
	fmspcIn: string,
	pckCa?: PckCa,
): { collateral: TdxCollateral; report: TdxCollateralReport } {
	const fmspc = fmspcIn.toLowerCase();
	const report: TdxCollateralReport = {
		dir,
		fmspc,
		used: [],
		ignored: [],
		missing: [],
	};
	const out: TdxCollateral = {};
	const from = new Map<Role, string>();
	const sorted = [...items].sort((a, b) =>
		a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
	);
	const set = (role: Role, value: string | Buffer, file: string) => {
		(out as Record<string, unknown>)[KEY[role]] = value;
		from.set(role, file);
	};
	// Bundles first: one matching bundle entry gives everything it carries.
	for (const it of sorted) {
		if (it.kind !== "bundle") continue;
		const mine = it.entries.find((e) => e.fmspc === fmspc);
		if (!mine) {
			const others = it.entries.map((e) => e.fmspc).join(", ");
			report.ignored.push({
				file: it.name,
				reason: others
					? `a ${it.form} for FMSPC ${others}, not the quote's ${fmspc}`
					: `a ${it.form} with no TDX TCB info`,
			});
			continue;
		}
		if (from.has("tcb-info")) {
			report.ignored.push({
				file: it.name,
				reason: `duplicate: the collateral for FMSPC ${fmspc} comes from ${from.get("tcb-info")}`,
			});
			continue;
		}
		const gives: Role[] = [];
		for (const [k, v] of Object.entries(mine.collateral)) {
			if (v === undefined) continue;
			const role = (Object.keys(KEY) as Role[]).find((r) => KEY[r] === k);
			if (role) {
				set(role, v as string | Buffer, it.name);
				gives.push(role);
			}
		}
		const crl = pckCa ? mine.pckCrls?.[pckCa] : undefined;
		if (crl) {
			set("pck-crl", crl.crl, it.name);
			gives.push("pck-crl");
			if (crl.issuerChain) {
				set("pck-crl-issuer-chain", crl.issuerChain, it.name);
				gives.push("pck-crl-issuer-chain");
			}
		}
		report.used.push({ file: it.name, gives, form: it.form });
	}
	// Then separate files, first by name per role; fallback chains last.
	const pieces = sorted.filter(
		(i): i is Extract<CollateralItem, { kind: "piece" }> => i.kind === "piece",
	);
	pieces.sort(
		(a, b) => Number(Boolean(a.fallback)) - Number(Boolean(b.fallback)),
	);
	const byFile = new Map<string, Role[]>();
	for (const p of pieces) {
		if (p.role === "tcb-info" && p.fmspc !== fmspc) {
			report.ignored.push({
				file: p.name,
				reason: `a TCB info for FMSPC ${p.fmspc}, not the quote's ${fmspc}`,
			});
			continue;
		}
		const taken = from.get(p.role);
		if (taken !== undefined) {
			// Contents compare only between files of the same form (a bundle re-wraps its pieces).
			const same = out[KEY[p.role]];
			const note = !byFile.has(taken)
				? ""
				: (typeof same === "string" || Buffer.isBuffer(same)) &&
						Buffer.from(same).equals(Buffer.from(p.value))
					? " (same content)"
					: " (different content)";
			report.ignored.push({
				file: p.name,
				reason: `duplicate: the ${p.role} comes from ${taken}${note}`,
			});
			continue;
		}
		set(p.role, p.value, p.name);
		byFile.set(p.name, [p.role]);
	}
	for (const [file, gives] of byFile) {
		const p = pieces.find((x) => x.name === file);
		report.used.push({
			file,
			gives,
			form:
				p?.role === "tcb-info" || p?.role === "qe-identity"
					? "PCS response"
					: Buffer.isBuffer(p?.value)
						? "DER"
						: "PEM",
		});
	}
	for (const it of sorted)
		if (it.kind === "ignored")
			report.ignored.push({ file: it.name, reason: it.reason });
	report.used.sort((a, b) => (a.file < b.file ? -1 : 1));
	report.ignored.sort((a, b) => (a.file < b.file ? -1 : 1));
	const lacking = REQUIRED.filter((r) => !from.has(r));
	if (lacking.length > 0) {
		const otherFmspcs = [
			...new Set(
				items.flatMap((i) =>
					i.kind === "piece" && i.role === "tcb-info" && i.fmspc
						? [i.fmspc]
						: i.kind === "bundle"
							? i.entries.map((e) => e.fmspc)
							: [],
				),
			),
		].filter((f) => f !== fmspc);
		const what = lacking.map((r) => `${r} (${pcsSource(r, fmspc)})`).join("; ");
		const seen = otherFmspcs.length
			? ` It has TCB info only for FMSPC ${otherFmspcs.join(", ")}.`
			: "";
		const ign = report.ignored.length
			? ` Ignored: ${report.ignored
					.slice(0, 8)
					.map((i) => `${i.file} (${i.reason})`)
					.join("; ")}${report.ignored.length > 8 ? "; …" : ""}.`
			: "";
		throw new DadiError(
			"PRECONDITION_FAILED",
			`TDX collateral ${dir}: nothing for the quote's FMSPC ${fmspc} gives ${lacking.join(", ")}; get ${what}.${seen}${ign}`,
		);
	}
	for (const r of OPTIONAL)
		if (!from.has(r))
			report.missing.push({
				what: r,
				from:
					r === "pck-crl" && pckCa === undefined
						? `${pcsSource(r, fmspc)} — the quote's PCK CA is unknown here`
						: pcsSource(r, fmspc),
			});
	return { collateral: out, report };
}

/** A one-line account of a directory's contents (for the broker's start log). */
export function describeCollateralItems(
	dir: string,
	items: CollateralItem[],
): string {
	const fmspcs = new Map<string, string[]>();
	const roles = new Map<Role, string[]>();
	const ign: string[] = [];
	for (const i of items) {
		if (i.kind === "ignored") ign.push(`${i.name} (${i.reason})`);
		else if (i.kind === "bundle")
			for (const e of i.entries)
				fmspcs.set(e.fmspc, [...(fmspcs.get(e.fmspc) ?? []), i.name]);
		else if (i.role === "tcb-info" && i.fmspc)
			fmspcs.set(i.fmspc, [...(fmspcs.get(i.fmspc) ?? []), i.name]);
		else roles.set(i.role, [...(roles.get(i.role) ?? []), i.name]);
	}
	const f = [...fmspcs].map(([k, v]) => `${k} (${v.join(", ")})`).join(", ");
	const r = [...roles].map(([k, v]) => `${k} ${v.join(", ")}`).join("; ");
	return `TDX collateral ${dir}: TCB info for FMSPC ${f || "none"}${r ? `; ${r}` : ""}${ign.length ? `; ignored ${ign.length}: ${ign.join("; ")}` : ""}`;
}
