/**
 * containerd's gRPC services as `dadi-snapshotter pull` calls them, loaded from our .proto
 * statement of containerd's API (src/snapshotter/proto, the same files the snapshotter serves
 * from; checked against containerd's own by test/snapshotter-proto.test.ts) with the snapshotter's
 * loader options: lowerCamelCase fields, enums as strings, 64-bit integers as strings, defaults
 * present.
 */
import {
	type ChannelCredentials,
	type ChannelOptions,
	type Client,
	loadPackageDefinition,
} from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { LOADER_OPTIONS, PROTO_DIR } from "../snapshotter/proto.js";

export const SERVICES = {
	version: {
		file: "containerd/services/version/v1/version.proto",
		name: "containerd.services.version.v1.Version",
	},
	introspection: {
		file: "containerd/services/introspection/v1/introspection.proto",
		name: "containerd.services.introspection.v1.Introspection",
	},
	content: {
		file: "containerd/services/content/v1/content.proto",
		name: "containerd.services.content.v1.Content",
	},
	images: {
		file: "containerd/services/images/v1/images.proto",
		name: "containerd.services.images.v1.Images",
	},
	leases: {
		file: "containerd/services/leases/v1/leases.proto",
		name: "containerd.services.leases.v1.Leases",
	},
	snapshots: {
		file: "containerd/services/snapshots/v1/snapshots.proto",
		name: "containerd.services.snapshots.v1.Snapshots",
	},
	diff: {
		file: "containerd/services/diff/v1/diff.proto",
		name: "containerd.services.diff.v1.Diff",
	},
} as const;

export type ServiceName = keyof typeof SERVICES;

type ClientCtor = new (
	address: string,
	credentials: ChannelCredentials,
	options?: ChannelOptions,
) => Client;

let cached: Record<ServiceName, ClientCtor> | undefined;

/** A client constructor per service. */
export function serviceClients(): Record<ServiceName, ClientCtor> {
	if (cached) return cached;
	const def = loadSync(
		Object.values(SERVICES).map((s) => s.file),
		{ ...LOADER_OPTIONS, includeDirs: [PROTO_DIR] },
	);
	const pkg = loadPackageDefinition(def) as unknown as Record<string, unknown>;
	const lookup = (name: string): ClientCtor => {
		let v: unknown = pkg;
		for (const part of name.split("."))
			v = (v as Record<string, unknown>)[part];
		return v as ClientCtor;
	};
	const out = {} as Record<ServiceName, ClientCtor>;
	for (const [k, s] of Object.entries(SERVICES))
		out[k as ServiceName] = lookup(s.name);
	cached = out;
	return out;
}
