/**
 * A snapshots API client for tests, built from containerd's own .proto files as Debian ships them
 * (not from ours), so what it speaks is containerd's wire format. Every call resolves to
 * `{ code: 0, value }` or `{ code: <gRPC status>, message }`.
 */
import {
	type Client,
	credentials,
	loadPackageDefinition,
	type ServiceError,
	type status,
} from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";

const GOCODE = "/usr/share/gocode/src";

export type Reply<T = Record<string, any>> =
	| { code: 0; value: T }
	| { code: status; message: string };

export interface SnapshotsClient {
	call<T = Record<string, any>>(
		method: string,
		req: Record<string, unknown>,
	): Promise<Reply<T>>;
	list(filters?: string[]): Promise<Reply<Record<string, any>[]>>;
	close(): void;
}

export function snapshotsClient(socket: string): SnapshotsClient {
	const def = loadSync(
		"github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto",
		{
			includeDirs: [
				GOCODE,
				`${GOCODE}/github.com/gogo/protobuf`,
				"/usr/include",
			],
			keepCase: false,
			longs: String,
			enums: String,
			defaults: true,
		},
	);
	const pkg = loadPackageDefinition(def) as any;
	const Ctor = pkg.containerd.services.snapshots.v1.Snapshots;
	const c: Client & Record<string, any> = new Ctor(
		`unix:${socket}`,
		credentials.createInsecure(),
	);
	const deadline = () => new Date(Date.now() + 30_000);
	return {
		call(method, req) {
			return new Promise((resolve) =>
				c[method](
					{ snapshotter: "dadi", ...req },
					{ deadline: deadline() },
					(err: ServiceError | null, v: any) =>
						resolve(
							err
								? { code: err.code, message: err.details }
								: { code: 0, value: v },
						),
				),
			);
		},
		list(filters = []) {
			return new Promise((resolve) => {
				const out: Record<string, any>[] = [];
				const s = c.List(
					{ snapshotter: "dadi", filters },
					{ deadline: deadline() },
				);
				s.on("data", (m: any) => out.push(...m.info));
				s.on("error", (e: ServiceError) =>
					resolve({ code: e.code, message: e.details }),
				);
				s.on("end", () => resolve({ code: 0, value: out }));
			});
		},
		close: () => c.close(),
	};
}
