/**
 * Loads our .proto statement of containerd's snapshots API (proto/, beside this file; copied next
 * to the compiled module by `npm run build`) with @grpc/proto-loader. Field names become
 * lowerCamelCase (created_at → createdAt), enums strings ("ACTIVE"), 64-bit integers strings, and
 * every field is present with its default, so the server glue never meets a missing field.
 */
import { fileURLToPath } from "node:url";
import { loadPackageDefinition, type ServiceDefinition } from "@grpc/grpc-js";
import { loadSync, type Options } from "@grpc/proto-loader";

export const PROTO_DIR = fileURLToPath(new URL("./proto/", import.meta.url));
export const SNAPSHOTS_PROTO =
	"containerd/services/snapshots/v1/snapshots.proto";
export const SERVICE_NAME = "containerd.services.snapshots.v1.Snapshots";

export const LOADER_OPTIONS: Options = {
	keepCase: false,
	longs: String,
	enums: String,
	defaults: true,
	arrays: true,
	objects: true,
	oneofs: true,
};

let cached: ServiceDefinition | undefined;

export function snapshotsService(): ServiceDefinition {
	if (cached) return cached;
	const def = loadSync(SNAPSHOTS_PROTO, {
		...LOADER_OPTIONS,
		includeDirs: [PROTO_DIR],
	});
	const pkg = loadPackageDefinition(def) as unknown as {
		containerd: {
			services: {
				snapshots: { v1: { Snapshots: { service: ServiceDefinition } } };
			};
		};
	};
	cached = pkg.containerd.services.snapshots.v1.Snapshots.service;
	return cached;
}
