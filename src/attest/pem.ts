/** PEM certificate bundles (AMD KDS chains, Intel PCK and signing chains) → DER, strictly. */
import type { DadiError } from "../errors.js";

/**
 * Every CERTIFICATE block of `text`, in order. Any other block, malformed base64, no certificate
 * at all, or more than `max` certificates is an error made by `invalid` (so each caller keeps its
 * own code and wording).
 */
export function pemCertificates(
	text: string,
	what: string,
	invalid: (detail: string) => DadiError,
	max = 8,
): Buffer[] {
	const out: Buffer[] = [];
	const re =
		/-----BEGIN ([A-Z0-9 ]+)-----([A-Za-z0-9+/=\s]*?)-----END ([A-Z0-9 ]+)-----/g;
	for (let m = re.exec(text); m !== null; m = re.exec(text)) {
		if (m[1] !== "CERTIFICATE" || m[3] !== "CERTIFICATE")
			throw invalid(`${what}: unexpected PEM block "${m[1]?.slice(0, 32)}"`);
		const b64 = (m[2] ?? "").replace(/\s+/g, "");
		if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || b64.length % 4 !== 0)
			throw invalid(`${what}: malformed PEM base64`);
		out.push(Buffer.from(b64, "base64"));
		if (out.length > max)
			throw invalid(`${what}: more than ${max} certificates`);
	}
	if (out.length === 0) throw invalid(`${what}: no PEM certificate`);
	return out;
}
