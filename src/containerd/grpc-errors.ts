/**
 * containerd's answers as DadiErrors: the one place gRPC status codes from containerd become the
 * project's codes (containerd's errdefs put its error classes into these codes). The message says
 * what was being done and quotes containerd.
 */
import { type ServiceError, status } from "@grpc/grpc-js";
import { DadiError, type ErrorCode } from "../errors.js";

export function codeForGrpc(code: number): ErrorCode {
	switch (code) {
		case status.NOT_FOUND:
			return "INPUT_NOT_FOUND";
		case status.ALREADY_EXISTS:
			return "OUTPUT_EXISTS";
		case status.INVALID_ARGUMENT:
			return "INPUT_INVALID";
		case status.FAILED_PRECONDITION:
			return "PRECONDITION_FAILED";
		case status.OUT_OF_RANGE:
			return "OUT_OF_RANGE";
		case status.UNAVAILABLE:
		case status.DEADLINE_EXCEEDED:
		case status.CANCELLED:
			return "NETWORK";
		case status.PERMISSION_DENIED:
		case status.UNAUTHENTICATED:
			return "REMOTE_DENIED";
		case status.UNIMPLEMENTED:
			return "REMOTE_PROTOCOL";
		default:
			// Unknown, Internal, DataLoss, ResourceExhausted, Aborted: containerd failed at
			// something (a mount, a write); the details say what.
			return "IO";
	}
}

/** The gRPC code of a failed call (Unknown for anything that is not a gRPC error). */
export function grpcCode(e: unknown): number {
	const c = (e as Partial<ServiceError>)?.code;
	return typeof c === "number" ? c : status.UNKNOWN;
}

function details(e: unknown): string {
	const err = e as Partial<ServiceError>;
	const d = (err?.details || err?.message || String(e))
		.replace(/[^\x20-\x7e]/g, "?")
		.slice(0, 500);
	return d;
}

export function fromGrpcError(e: unknown, doing: string): DadiError {
	if (e instanceof DadiError) return e;
	const code = grpcCode(e);
	const name = status[code] ?? String(code);
	return new DadiError(
		codeForGrpc(code),
		`${doing}: containerd answered ${name}: ${details(e)}`,
		{ cause: e },
	);
}

/** For "is containerd there at all": the connection's own failure, said plainly. */
export function unreachable(e: unknown, socket: string): DadiError {
	const d = details(e);
	if (/EACCES|EPERM/.test(d))
		return new DadiError(
			"REMOTE_DENIED",
			`cannot talk to containerd at ${socket}: permission denied (run as root, or as a user allowed on the socket)`,
			{ cause: e },
		);
	const why = /ENOENT/.test(d)
		? "there is no socket"
		: /ECONNREFUSED/.test(d)
			? "nothing listens on the socket"
			: d;
	return new DadiError(
		"NETWORK",
		`cannot reach containerd at ${socket} (${why}); is containerd running? Give its socket with --address`,
		{ cause: e },
	);
}
