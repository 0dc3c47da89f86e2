/**
 * One error type for the whole project. `code` is stable and is what tests and callers match on;
 * `message` is for people and may change. Authentication and decryption failures carry a fixed
 * message that says nothing about why they failed.
 */
export type ErrorCode =
	| "USAGE" // the command line or an API argument is wrong
	| "INPUT_NOT_FOUND" // a named file, directory, tag or blob does not exist
	| "INPUT_INVALID" // an input exists but is not usable (not a disk image, not a key file, ...)
	| "OUTPUT_EXISTS" // refusing to overwrite an existing output
	| "PRECONDITION_FAILED" // the object is in the wrong state for the operation (a snapshot with children, committing a view)
	| "FORMAT_INVALID" // bytes that claim to be ours are malformed (bad magic, sizes, reserved bytes)
	| "FORMAT_UNSUPPORTED" // a well-formed structure with a version, suite or codec we do not implement
	| "LAYOUT_INVALID" // an OCI image layout is malformed or incomplete
	| "DIGEST_MISMATCH" // a content-addressed blob does not hash to its digest
	| "AUTH_FAILED" // an AEAD tag, key unwrap or MAC did not verify
	| "LAYER_MISMATCH" // a layer blob is not the layer the image config names
	| "KEY_INVALID" // a key file is malformed
	| "KEY_MISMATCH" // the key is not the one the image was sealed for
	| "OUT_OF_RANGE" // a read outside the virtual disk
	| "IO" // the operating system refused an operation
	| "NETWORK" // a remote peer could not be reached, timed out or broke off, after bounded retries
	| "REMOTE_DENIED" // a registry refused our credentials or has none for us (401/403 after auth)
	| "REMOTE_PROTOCOL" // a registry answered outside its protocol (wrong status, Content-Range, size)
	| "EVIDENCE_INVALID" // attestation evidence is malformed, truncated, or not bound to this session and key
	| "EVIDENCE_UNSUPPORTED" // evidence of a version, body type or algorithm we do not verify
	| "SIGNATURE_INVALID" // a signature over evidence, a certificate, a CRL or collateral does not verify
	| "CHAIN_UNTRUSTED" // a certificate chain does not lead to a pinned root (or to the right product's)
	| "CERT_EXPIRED" // a certificate, CRL or collateral is outside its validity window at "now"
	| "CERT_REVOKED" // a certificate is listed in a CRL
	| "TCB_MISMATCH" // evidence and its endorsement disagree (VCEK TCB or chip id, FMSPC, QE identity)
	| "EVENTLOG_MISMATCH" // a TEE event log does not replay to the measurement registers the evidence signed
	| "POLICY_INVALID" // a policy document does not parse or does not compile
	| "POLICY_DENIED" // a policy (or the broker's default) refused to release a resource
	| "SESSION_INVALID" // a broker session or attestation token is missing, unknown, expired or forged
	| "VM_FAILED" // a sandbox VM did not boot, timed out, or ended without reporting its job's exit
	| "INTERNAL"; // a bug

export class DadiError extends Error {
	readonly code: ErrorCode;

	constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
		super(message, options);
		this.name = "DadiError";
		this.code = code;
	}
}

/** The single message for every authentication failure: it must not help an attacker. */
export const AUTH_MESSAGE =
	"authentication failed: the data was modified, truncated or sealed under another key";

export function authFailed(what: string): DadiError {
	return new DadiError("AUTH_FAILED", `${what}: ${AUTH_MESSAGE}`);
}

/** `e` itself when it is a DadiError, else an INTERNAL one carrying its stack (a bug). */
export function asDadiError(e: unknown): DadiError {
	return e instanceof DadiError
		? e
		: new DadiError(
				"INTERNAL",
				`unexpected error: ${(e as Error)?.stack ?? String(e)}`,
			);
}

export function isDadiError(e: unknown, code?: ErrorCode): e is DadiError {
	return e instanceof DadiError && (code === undefined || e.code === code);
}

/** Turns an operating-system error into a DadiError naming the path and what to do. */
export function fromSystemError(
	e: unknown,
	path: string,
	doing: string,
): DadiError {
	if (e instanceof DadiError) return e;
	const err = e as NodeJS.ErrnoException;
	if (err?.code === "ENOENT")
		return new DadiError(
			"INPUT_NOT_FOUND",
			`${path}: no such file or directory (while ${doing})`,
		);
	if (err?.code === "EEXIST")
		return new DadiError(
			"OUTPUT_EXISTS",
			`${path}: already exists (while ${doing})`,
		);
	if (err?.code === "EISDIR")
		return new DadiError(
			"INPUT_INVALID",
			`${path}: is a directory, expected a file (while ${doing})`,
		);
	if (err?.code === "ENOTDIR")
		return new DadiError(
			"INPUT_INVALID",
			`${path}: a path component is not a directory (while ${doing})`,
		);
	if (err?.code === "EACCES" || err?.code === "EPERM")
		return new DadiError("IO", `${path}: permission denied (while ${doing})`);
	if (err?.code === "ENOSPC")
		return new DadiError(
			"IO",
			`${path}: no space left on device (while ${doing})`,
		);
	return new DadiError(
		"IO",
		`${path}: ${err?.message ?? String(e)} (while ${doing})`,
		{ cause: e },
	);
}
