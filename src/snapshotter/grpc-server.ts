/**
 * containerd's snapshots gRPC service (containerd.services.snapshots.v1.Snapshots) on a unix
 * socket, over the Snapshotter. Glue only: each handler turns the decoded request into one call and
 * the result into the response message; every failure becomes a gRPC status through
 * grpc-status.ts (never a crash: a handler cannot throw past its try). The `snapshotter` field of
 * requests names containerd's proxy plugin; a proxy serves one snapshotter, so it is not checked.
 */
import { chmod, lstat, rm } from "node:fs/promises";
import { connect } from "node:net";
import {
	Metadata,
	Server,
	ServerCredentials,
	type ServerUnaryCall,
	type ServerWritableStream,
	type ServiceError,
	type sendUnaryData,
	status,
	type UntypedServiceImplementation,
} from "@grpc/grpc-js";
import { asDadiError, DadiError } from "../errors.js";
import { grpcCodeFor } from "./grpc-status.js";
import { copyLabels } from "./labels.js";
import { snapshotsService } from "./proto.js";
import type { Snapshotter } from "./snapshotter.js";
import type { Info, Kind, Mount } from "./types.js";

/** containerd's service streams List in messages of this many snapshots. */
const LIST_BATCH = 100;

type Req = Record<string, unknown>;

const KIND: Record<Kind, string> = {
	view: "VIEW",
	active: "ACTIVE",
	committed: "COMMITTED",
};

function timestamp(d: Date): { seconds: string; nanos: number } {
	const ms = d.getTime();
	const seconds = Math.floor(ms / 1000);
	return { seconds: String(seconds), nanos: (ms - seconds * 1000) * 1_000_000 };
}

export function infoMessage(i: Info): Req {
	return {
		name: i.name,
		parent: i.parent,
		kind: KIND[i.kind],
		createdAt: timestamp(i.created),
		updatedAt: timestamp(i.updated),
		labels: { ...i.labels },
	};
}

function mountMessages(ms: Mount[]): Req[] {
	return ms.map((m) => ({
		type: m.type,
		source: m.source,
		target: m.target ?? "",
		options: m.options,
	}));
}

function str(v: unknown): string {
	return typeof v === "string" ? v : "";
}

function labelsOf(v: unknown): Record<string, string> {
	if (typeof v !== "object" || v === null) return Object.create(null);
	return copyLabels(v as Record<string, string>);
}

function strings(v: unknown): string[] {
	return Array.isArray(v)
		? v.filter((x): x is string => typeof x === "string")
		: [];
}

export interface SnapshotsServer {
	/** "unix:/path". */
	address: string;
	/** Stops accepting, lets calls finish (5 s at most), removes the socket. Idempotent. */
	close(): Promise<void>;
}

export async function serveSnapshots(
	sn: Snapshotter,
	socketPath: string,
	log: (line: string) => void,
): Promise<SnapshotsServer> {
	const fail = (what: string, e: unknown): Partial<ServiceError> => {
		const err = asDadiError(e);
		const code = grpcCodeFor(err.code);
		if (code !== status.NOT_FOUND && code !== status.ALREADY_EXISTS)
			log(`${what}: ${err.message} [${err.code}]`);
		return { code, details: err.message, metadata: new Metadata() };
	};
	const unary =
		<T>(
			what: string,
			fn: (r: Req) => Promise<T> | T,
			done?: (r: Req) => string,
		) =>
		async (call: ServerUnaryCall<Req, unknown>, cb: sendUnaryData<unknown>) => {
			const r = (call.request ?? {}) as Req;
			let reply: T;
			try {
				reply = await fn(r);
			} catch (e) {
				cb(fail(what, e) as ServiceError);
				return;
			}
			if (done) log(done(r));
			cb(null, reply);
		};
	const impl: UntypedServiceImplementation = {
		Prepare: unary(
			"prepare",
			async (r) => ({
				mounts: mountMessages(
					await sn.prepare(str(r.key), str(r.parent), labelsOf(r.labels)),
				),
			}),
			(r) =>
				`prepared ${JSON.stringify(str(r.key))}${str(r.parent) ? ` on ${JSON.stringify(str(r.parent))}` : ""}`,
		),
		View: unary(
			"view",
			async (r) => ({
				mounts: mountMessages(
					await sn.view(str(r.key), str(r.parent), labelsOf(r.labels)),
				),
			}),
			(r) =>
				`view ${JSON.stringify(str(r.key))} of ${JSON.stringify(str(r.parent))}`,
		),
		Mounts: unary("mounts", async (r) => ({
			mounts: mountMessages(await sn.mounts(str(r.key))),
		})),
		Commit: unary(
			"commit",
			async (r) => {
				await sn.commit(str(r.name), str(r.key), labelsOf(r.labels));
				return {};
			},
			(r) =>
				`committed ${JSON.stringify(str(r.key))} as ${JSON.stringify(str(r.name))}`,
		),
		Remove: unary(
			"remove",
			async (r) => {
				await sn.remove(str(r.key));
				return {};
			},
			(r) => `removed ${JSON.stringify(str(r.key))}`,
		),
		Stat: unary("stat", (r) => ({ info: infoMessage(sn.stat(str(r.key))) })),
		Update: unary("update", async (r) => {
			const info = r.info as Req | null | undefined;
			if (!info)
				throw new DadiError("INPUT_INVALID", "update: info is required");
			const mask = r.updateMask as Req | null | undefined;
			return {
				info: infoMessage(
					await sn.update(
						str(info.name),
						labelsOf(info.labels),
						strings(mask?.paths),
					),
				),
			};
		}),
		Usage: unary("usage", async (r) => {
			const u = await sn.usage(str(r.key));
			return { size: String(u.size), inodes: String(u.inodes) };
		}),
		Cleanup: unary("cleanup", async () => {
			const n = await sn.cleanup();
			if (n > 0) log(`cleanup removed ${n} directories no snapshot owns`);
			return {};
		}),
		List: (call: ServerWritableStream<Req, unknown>) => {
			try {
				const infos = sn.list(strings(call.request?.filters));
				for (let i = 0; i < infos.length; i += LIST_BATCH)
					call.write({ info: infos.slice(i, i + LIST_BATCH).map(infoMessage) });
				call.end();
			} catch (e) {
				call.emit("error", fail("list", e));
			}
		},
	};
	await claimSocketPath(socketPath);
	const server = new Server();
	server.addService(snapshotsService(), impl);
	const address = `unix:${socketPath}`;
	await new Promise<void>((resolve, reject) =>
		server.bindAsync(address, ServerCredentials.createInsecure(), (err) =>
			err
				? reject(
						new DadiError("IO", `cannot listen on ${address}: ${err.message}`),
					)
				: resolve(),
		),
	);
	await chmod(socketPath, 0o660).catch(() => {});
	let closing: Promise<void> | undefined;
	return {
		address,
		close() {
			closing ??= (async () => {
				await new Promise<void>((resolve) => {
					const timer = setTimeout(() => {
						server.forceShutdown();
						resolve();
					}, 5000);
					server.tryShutdown(() => {
						clearTimeout(timer);
						resolve();
					});
				});
				await rm(socketPath, { force: true }).catch(() => {});
			})();
			return closing;
		},
	};
}

/**
 * The socket path must be free: a socket no one answers on (a killed snapshotter's) is removed;
 * one that answers, or any other file, is refused.
 */
async function claimSocketPath(path: string): Promise<void> {
	let st: Awaited<ReturnType<typeof lstat>>;
	try {
		st = await lstat(path);
	} catch {
		return;
	}
	if (!st.isSocket())
		throw new DadiError(
			"OUTPUT_EXISTS",
			`--address ${path}: exists and is not a socket; not replacing it`,
		);
	const alive = await new Promise<boolean>((resolve) => {
		const s = connect(path);
		s.once("connect", () => {
			s.destroy();
			resolve(true);
		});
		s.once("error", () => resolve(false));
	});
	if (alive)
		throw new DadiError(
			"IO",
			`--address ${path}: another server is listening on this socket`,
		);
	await rm(path, { force: true });
}
