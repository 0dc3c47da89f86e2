/**
 * Azure's instance metadata service (IMDS, http://169.254.169.254), the I/O edge for what the vTPM
 * does not hold: the VCEK of an SEV-SNP CVM (GET /metadata/THIM/amd/certification →
 * {"vcekCert": PEM, "certificateChain": PEM}) and the quote of a TDX CVM's TD report
 * (POST /acc/tdquote {"report": base64url} → {"quote": base64url}). Both with "Metadata: true".
 * The base URL is a parameter ($DADI_AZURE_IMDS) so tests can serve it.
 */
import { DadiError } from "../errors.js";
import { pemToDer } from "./snp/vcek.js";

export const AZURE_IMDS = "http://169.254.169.254";

async function call(
	url: string,
	init: RequestInit,
	what: string,
): Promise<Record<string, unknown>> {
	let res: Response;
	try {
		res = await fetch(url, {
			...init,
			redirect: "error",
			signal: AbortSignal.timeout(30_000),
		});
	} catch (e) {
		throw new DadiError(
			"NETWORK",
			`Azure IMDS ${url}: ${(e as Error).message} (while fetching ${what})`,
		);
	}
	const text = await res.text();
	if (res.status !== 200)
		throw new DadiError(
			"REMOTE_PROTOCOL",
			`Azure IMDS ${url}: status ${res.status} (while fetching ${what})`,
		);
	if (text.length > 1 << 20)
		throw new DadiError(
			"REMOTE_PROTOCOL",
			`Azure IMDS ${url}: answer too large`,
		);
	try {
		const v = JSON.parse(text) as unknown;
		if (typeof v === "object" && v !== null && !Array.isArray(v))
			return v as Record<string, unknown>;
	} catch {
		// below
	}
	throw new DadiError(
		"REMOTE_PROTOCOL",
		`Azure IMDS ${url}: the answer is not a JSON object (while fetching ${what})`,
	);
}

/** The VCEK (DER) of this SEV-SNP CVM. */
export async function azureVcek(base: string = AZURE_IMDS): Promise<Buffer> {
	const j = await call(
		`${base.replace(/\/$/, "")}/metadata/THIM/amd/certification`,
		{ headers: { Metadata: "true" } },
		"the VCEK",
	);
	if (typeof j.vcekCert !== "string")
		throw new DadiError(
			"REMOTE_PROTOCOL",
			"Azure IMDS: no vcekCert in the answer",
		);
	const ders = pemToDer(j.vcekCert);
	if (ders.length !== 1)
		throw new DadiError(
			"REMOTE_PROTOCOL",
			`Azure IMDS: vcekCert holds ${ders.length} certificates, expected 1`,
		);
	return ders[0] as Buffer;
}

/** The TD quote for a TD report (from the HCL report). */
export async function azureTdQuote(
	tdReport: Buffer,
	base: string = AZURE_IMDS,
): Promise<Buffer> {
	const j = await call(
		`${base.replace(/\/$/, "")}/acc/tdquote`,
		{
			method: "POST",
			headers: {
				Metadata: "true",
				"content-type": "application/json",
				accept: "application/json",
			},
			body: JSON.stringify({ report: tdReport.toString("base64url") }),
		},
		"the TD quote",
	);
	if (
		typeof j.quote !== "string" ||
		!/^[A-Za-z0-9_=-]{1,200000}$/.test(j.quote)
	)
		throw new DadiError(
			"REMOTE_PROTOCOL",
			"Azure IMDS: no base64url quote in the answer",
		);
	return Buffer.from(j.quote, "base64url");
}
