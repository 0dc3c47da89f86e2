/**
 * Pinned AMD SEV-SNP roots. Each product line has one AMD Root Key (ARK, RSA-4096, self-signed)
 * that signs an AMD SEV Key (ASK, signs VCEKs) and an AMD SEV VLEK Key (ASVK, signs VLEKs).
 *
 * Provenance: AMD's Key Distribution Service (https://kdsintf.amd.com/vcek/v1/<product>/cert_chain
 * and .../vlek/v1/<product>/cert_chain), as vendored by google/go-sev-guest in verify/trust/
 * (ask_ark_<product>.pem, ask_ark_<product>_vlek.pem). The SHA-256 fingerprints below are of the
 * certificates' DER encodings, computed with `openssl x509 -noout -fingerprint -sha256`. See
 * keys/amd-sev-snp.md for subjects and validity windows.
 */
import type { SnpProduct } from "./report.js";

export interface TrustAnchors {
	/** Accepted ARK SHA-256 fingerprints (lowercase hex of the DER), per product. */
	ark: Partial<Record<SnpProduct, readonly string[]>>;
	/**
	 * Optionally, accepted ASK / ASVK fingerprints per product. When a product has a list here, the
	 * intermediate must be in it too; when it has none, any ASK/ASVK the pinned ARK signed is accepted.
	 */
	intermediates?: Partial<Record<SnpProduct, readonly string[]>>;
}

/** ARK-Milan, valid 2020-10-22 .. 2045-10-22. */
export const ARK_MILAN_SHA256 =
	"69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd";
/** ARK-Genoa, valid 2022-01-26 .. 2047-01-26. */
export const ARK_GENOA_SHA256 =
	"4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1";
/** ARK-Turin, valid 2023-05-15 .. 2048-05-15. */
export const ARK_TURIN_SHA256 =
	"1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a";

/** SEV-Milan (ASK), valid 2020-10-22 .. 2045-10-22. */
export const ASK_MILAN_SHA256 =
	"67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b";
/** SEV-VLEK-Milan (ASVK), valid 2022-11-16 .. 2047-11-16. */
export const ASVK_MILAN_SHA256 =
	"c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5";
/** SEV-Genoa (ASK), valid 2022-10-31 .. 2047-10-31. */
export const ASK_GENOA_SHA256 =
	"5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521";
/** SEV-VLEK-Genoa (ASVK), valid 2022-11-18 .. 2047-11-18. */
export const ASVK_GENOA_SHA256 =
	"197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372";
/** SEV-Turin (ASK), valid 2023-05-15 .. 2048-05-15. */
export const ASK_TURIN_SHA256 =
	"5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185";
/** SEV-VLEK-Turin (ASVK), valid 2023-05-15 .. 2048-05-15. */
export const ASVK_TURIN_SHA256 =
	"104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c";

/**
 * The default trust: AMD's three ARKs. Intermediates are not pinned (AMD may reissue an ASK under
 * the same ARK); the constants above are exported for callers that want to pin them too.
 */
export const AMD_TRUST: TrustAnchors = Object.freeze({
	ark: Object.freeze({
		milan: Object.freeze([ARK_MILAN_SHA256]),
		genoa: Object.freeze([ARK_GENOA_SHA256]),
		turin: Object.freeze([ARK_TURIN_SHA256]),
	}),
});
