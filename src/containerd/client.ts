/**
 * A client for containerd's own gRPC API on its unix socket, with what a pull needs: every request
 * carries the namespace (`containerd-namespace` metadata) and, once a lease is taken, the lease
 * (`containerd-lease`), so what is made under it is kept from garbage collection until the image
 * record holds it. Each call has a deadline; failures are DadiErrors (grpc-errors.ts), and the
 * lookups (content Info, image Get, snapshot Stat) answer `undefined` for NotFound.
 */
import {
	type Client,
	type ClientDuplexStream,
	credentials,
	Metadata,
	type ServiceError,
	status,
} from "@grpc/grpc-js";
import { DadiError } from "../errors.js";
import type { Descriptor } from "../oci/digest.js";
import type { Mount } from "../snapshotter/types.js";
import { type ServiceName, serviceClients } from "./api.js";
import { fromGrpcError, grpcCode, unreachable } from "./grpc-errors.js";

export const NAMESPACE_HEADER = "containerd-namespace";
export const LEASE_HEADER = "containerd-lease";

/** containerd's namespace names (namespaces/validate.go). */
const NAMESPACE_RE = /^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$/;
const MAX_NAMESPACE = 76;

const SECOND = 1000;
const MINUTE = 60 * SECOND;

// biome-ignore lint/suspicious/noExplicitAny: decoded protobuf messages are dynamic
type Msg = any;

export interface ContentInfo {
	digest: string;
	size: number;
	labels: Record<string, string>;
}

export interface SnapshotInfo {
	name: string;
	parent: string;
	kind: string;
	labels: Record<string, string>;
}

export interface ImageRecord {
	name: string;
	labels: Record<string, string>;
	target: Descriptor;
}

export interface PluginInfo {
	type: string;
	id: string;
	/** Why it failed to load, if it did. */
	initError?: string;
}

export interface ClientOptions {
	/** containerd's socket path. */
	socket: string;
	namespace: string;
}

export function checkNamespace(ns: string): void {
	if (ns.length > MAX_NAMESPACE || !NAMESPACE_RE.test(ns))
		throw new DadiError(
			"USAGE",
			`--namespace "${ns.slice(0, 100)}": containerd namespaces are letters and digits separated by single . _ or - (at most ${MAX_NAMESPACE} characters)`,
		);
}

function descriptorMessage(d: Descriptor): Msg {
	return {
		mediaType: d.mediaType,
		digest: d.digest,
		size: d.size,
		annotations: { ...(d.annotations ?? {}) },
	};
}

function descriptorOf(m: Msg): Descriptor {
	const d: Descriptor = {
		mediaType: String(m?.mediaType ?? ""),
		digest: String(m?.digest ?? ""),
		size: Number(m?.size ?? 0),
	};
	if (m?.annotations && Object.keys(m.annotations).length > 0)
		d.annotations = { ...m.annotations };
	return d;
}

function labelsOf(m: Msg): Record<string, string> {
	return { ...(m ?? {}) };
}

export class ContainerdClient {
	readonly socket: string;
	readonly namespace: string;
	#clients = new Map<ServiceName, Client>();
	#lease: string | undefined;

	constructor(o: ClientOptions) {
		checkNamespace(o.namespace);
		this.socket = o.socket;
		this.namespace = o.namespace;
	}

	/** Requests from now on are made under this lease (undefined: none). */
	useLease(id: string | undefined): void {
		this.#lease = id;
	}

	/** The lease requests are made under, if any. */
	get lease(): string | undefined {
		return this.#lease;
	}

	#client(s: ServiceName): Client {
		let c = this.#clients.get(s);
		if (!c) {
			const Ctor = serviceClients()[s];
			c = new Ctor(`unix:${this.socket}`, credentials.createInsecure(), {
				"grpc.max_receive_message_length": 16 << 20,
				"grpc.max_send_message_length": 16 << 20,
			});
			this.#clients.set(s, c);
		}
		return c;
	}

	metadata(): Metadata {
		const md = new Metadata();
		md.set(NAMESPACE_HEADER, this.namespace);
		if (this.#lease) md.set(LEASE_HEADER, this.#lease);
		return md;
	}

	/** One unary call; rejects with the raw gRPC error (callers map it). */
	rawCall(
		s: ServiceName,
		method: string,
		req: Msg,
		timeoutMs = MINUTE,
	): Promise<Msg> {
		const c = this.#client(s) as Client & Record<string, Msg>;
		return new Promise((resolve, reject) =>
			c[method](
				req,
				this.metadata(),
				{ deadline: new Date(Date.now() + timeoutMs) },
				(err: ServiceError | null, v: Msg) => (err ? reject(err) : resolve(v)),
			),
		);
	}

	async call(
		s: ServiceName,
		method: string,
		req: Msg,
		doing: string,
		timeoutMs?: number,
	): Promise<Msg> {
		try {
			return await this.rawCall(s, method, req, timeoutMs);
		} catch (e) {
			throw fromGrpcError(e, doing);
		}
	}

	/** A call whose NotFound means "there is none". */
	async lookup(
		s: ServiceName,
		method: string,
		req: Msg,
		doing: string,
	): Promise<Msg | undefined> {
		try {
			return await this.rawCall(s, method, req);
		} catch (e) {
			if (grpcCode(e) === status.NOT_FOUND) return undefined;
			throw fromGrpcError(e, doing);
		}
	}

	/** A bidirectional stream (content Write). */
	duplex(s: ServiceName, method: string): ClientDuplexStream<Msg, Msg> {
		const c = this.#client(s) as Client & Record<string, Msg>;
		return c[method](this.metadata());
	}

	/** The first call: tells "containerd is not there" from anything later. */
	async version(): Promise<{ version: string; revision: string }> {
		try {
			const v = await this.rawCall("version", "Version", {}, 15 * SECOND);
			return { version: String(v.version), revision: String(v.revision) };
		} catch (e) {
			const code = grpcCode(e);
			if (code === status.UNAVAILABLE || code === status.DEADLINE_EXCEEDED)
				throw unreachable(e, this.socket);
			throw fromGrpcError(e, `asking containerd at ${this.socket} its version`);
		}
	}

	async plugins(filters: string[]): Promise<PluginInfo[]> {
		const r = await this.call(
			"introspection",
			"Plugins",
			{ filters },
			"listing containerd's plugins",
		);
		return (r.plugins as Msg[]).map((p) => {
			const out: PluginInfo = { type: String(p.type), id: String(p.id) };
			if (p.initErr && (p.initErr.code || p.initErr.message))
				out.initError = String(p.initErr.message || `code ${p.initErr.code}`);
			return out;
		});
	}

	async contentInfo(digest: string): Promise<ContentInfo | undefined> {
		const r = await this.lookup(
			"content",
			"Info",
			{ digest },
			`looking up ${digest} in containerd's content store`,
		);
		if (!r) return undefined;
		return {
			digest: String(r.info.digest),
			size: Number(r.info.size),
			labels: labelsOf(r.info.labels),
		};
	}

	/** Sets (or, with an empty value, removes) the given labels of a blob, leaving the others. */
	async contentLabel(
		digest: string,
		labels: Record<string, string>,
	): Promise<void> {
		const paths = Object.keys(labels).map((k) => `labels.${k}`);
		if (paths.length === 0) return;
		await this.call(
			"content",
			"Update",
			{ info: { digest, labels }, updateMask: { paths } },
			`labelling ${digest} in containerd's content store`,
		);
	}

	async contentAbort(ref: string): Promise<void> {
		try {
			await this.rawCall("content", "Abort", { ref });
		} catch (e) {
			if (grpcCode(e) !== status.NOT_FOUND)
				throw fromGrpcError(e, `aborting the ingest ${ref}`);
		}
	}

	async imageGet(name: string): Promise<ImageRecord | undefined> {
		const r = await this.lookup(
			"images",
			"Get",
			{ name },
			`looking up the image ${name}`,
		);
		if (!r?.image) return undefined;
		return {
			name: String(r.image.name),
			labels: labelsOf(r.image.labels),
			target: descriptorOf(r.image.target),
		};
	}

	/** Creates the record, or points an existing one at `target` (as containerd's pull does). */
	async imagePut(
		name: string,
		target: Descriptor,
	): Promise<"created" | "updated"> {
		const image = { name, labels: {}, target: descriptorMessage(target) };
		try {
			await this.rawCall("images", "Create", { image });
			return "created";
		} catch (e) {
			if (grpcCode(e) !== status.ALREADY_EXISTS)
				throw fromGrpcError(e, `creating the image record ${name}`);
		}
		await this.call(
			"images",
			"Update",
			{ image, updateMask: { paths: ["target"] } },
			`updating the image record ${name}`,
		);
		return "updated";
	}

	async leaseCreate(id: string, labels: Record<string, string>): Promise<void> {
		await this.call(
			"leases",
			"Create",
			{ id, labels },
			"taking a lease from containerd",
		);
	}

	/**
	 * Puts content under the current lease (as containerd's own writer does when a commit finds
	 * the blob there), so the collector keeps it until the image record refers to it.
	 */
	async leaseAddContent(digest: string): Promise<void> {
		const id = this.#lease;
		if (!id) return;
		await this.call(
			"leases",
			"AddResource",
			{ id, resource: { id: digest, type: "content" } },
			`adding ${digest} to the lease ${id}`,
		);
	}

	async leaseDelete(id: string): Promise<void> {
		await this.call(
			"leases",
			"Delete",
			{ id, sync: false },
			`releasing the lease ${id}`,
		);
	}

	async snapshotStat(
		snapshotter: string,
		key: string,
	): Promise<SnapshotInfo | undefined> {
		const r = await this.lookup(
			"snapshots",
			"Stat",
			{ snapshotter, key },
			`looking up the snapshot ${key} (snapshotter ${snapshotter})`,
		);
		if (!r?.info) return undefined;
		return {
			name: String(r.info.name),
			parent: String(r.info.parent),
			kind: String(r.info.kind),
			labels: labelsOf(r.info.labels),
		};
	}

	/** The new snapshot's mounts, or "exists" when containerd answers AlreadyExists. */
	async snapshotPrepare(
		snapshotter: string,
		key: string,
		parent: string,
		labels: Record<string, string>,
	): Promise<Mount[] | "exists"> {
		try {
			const r = await this.rawCall(
				"snapshots",
				"Prepare",
				{ snapshotter, key, parent, labels },
				5 * MINUTE,
			);
			return (r.mounts as Msg[]).map((m) => ({
				type: String(m.type),
				source: String(m.source),
				target: String(m.target ?? ""),
				options: (m.options as string[]).map(String),
			}));
		} catch (e) {
			if (grpcCode(e) === status.ALREADY_EXISTS) return "exists";
			throw fromGrpcError(
				e,
				`preparing the snapshot ${key} (snapshotter ${snapshotter})`,
			);
		}
	}

	async snapshotCommit(
		snapshotter: string,
		name: string,
		key: string,
		labels: Record<string, string>,
	): Promise<void> {
		await this.call(
			"snapshots",
			"Commit",
			{ snapshotter, name, key, labels },
			`committing the snapshot ${key} as ${name} (snapshotter ${snapshotter})`,
			5 * MINUTE,
		);
	}

	async snapshotRemove(snapshotter: string, key: string): Promise<void> {
		await this.call(
			"snapshots",
			"Remove",
			{ snapshotter, key },
			`removing the snapshot ${key} (snapshotter ${snapshotter})`,
		);
	}

	/** Applies a layer (in the content store) onto mounts: the uncompressed tar's descriptor. */
	async diffApply(layer: Descriptor, mounts: Mount[]): Promise<Descriptor> {
		const r = await this.call(
			"diff",
			"Apply",
			{
				diff: descriptorMessage(layer),
				mounts: mounts.map((m) => ({
					type: m.type,
					source: m.source,
					target: m.target ?? "",
					options: m.options,
				})),
				payloads: {},
			},
			`applying the layer ${layer.digest}`,
			60 * MINUTE,
		);
		return descriptorOf(r.applied);
	}

	close(): void {
		for (const c of this.#clients.values()) c.close();
		this.#clients.clear();
	}
}
