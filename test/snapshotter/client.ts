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
} from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";

const GOCODE = "/usr/share/gocode/src";

/** A decoded protobuf message: dynamic JSON-like data, checked by the tests' assertions. */
// biome-ignore lint/suspicious/noExplicitAny: decoded messages are untyped by nature
export type Msg = any;

/** `code` 0 with `value`, or a gRPC status code with `message` (and no value). */
export interface Reply<T = Msg> {
	code: number;
	value: T;
	message: string;
}

export interface SnapshotsClient {
	call<T = Msg>(
		method: string,
		req: Record<string, unknown>,
	): Promise<Reply<T>>;
	list(filters?: string[]): Promise<Reply<Msg[]>>;
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
	const pkg = loadPackageDefinition(def) as Msg;
	const Ctor = pkg.containerd.services.snapshots.v1.Snapshots;
	const c: Client & Record<string, Msg> = new Ctor(
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
					(err: ServiceError | null, v: Msg) =>
						resolve(
							err
								? { code: err.code, message: err.details, value: undefined }
								: { code: 0, value: v, message: "" },
						),
				),
			);
		},
		list(filters = []) {
			return new Promise((resolve) => {
				const out: Msg[] = [];
				const s = c.List(
					{ snapshotter: "dadi", filters },
					{ deadline: deadline() },
				);
				s.on("data", (m: Msg) => out.push(...m.info));
				s.on("error", (e: ServiceError) =>
					resolve({ code: e.code, message: e.details, value: [] }),
				);
				s.on("end", () => resolve({ code: 0, value: out, message: "" }));
			});
		},
		close: () => c.close(),
	};
}
