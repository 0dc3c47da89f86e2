/**
 * The one place DadiError codes become gRPC status codes, as containerd's errdefs reads them back
 * (FromGRPC): NotFound, AlreadyExists, InvalidArgument, FailedPrecondition and Unavailable have
 * meanings containerd acts on (a remote snapshot's AlreadyExists, a NotFound Stat before an
 * unpack); everything else is Unknown to containerd, and a bug is Internal.
 */
import { status } from "@grpc/grpc-js";
import type { ErrorCode } from "../errors.js";

export function grpcCodeFor(code: ErrorCode): status {
	switch (code) {
		case "INPUT_NOT_FOUND":
			return status.NOT_FOUND;
		case "OUTPUT_EXISTS":
			return status.ALREADY_EXISTS;
		case "USAGE":
		case "INPUT_INVALID":
		case "OUT_OF_RANGE":
			return status.INVALID_ARGUMENT;
		case "PRECONDITION_FAILED":
			return status.FAILED_PRECONDITION;
		case "NETWORK":
			return status.UNAVAILABLE;
		case "REMOTE_DENIED":
		case "POLICY_DENIED":
			return status.PERMISSION_DENIED;
		case "INTERNAL":
			return status.INTERNAL;
		default:
			return status.UNKNOWN;
	}
}
