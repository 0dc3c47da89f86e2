/**
 * The snapshotter: containerd's snapshot operations over the store (store.ts), with the overlay
 * snapshotter's semantics (model.ts decides, mounts.ts describes the mounts) and the remote-layer
 * plug-in point (remote.ts). Changes (Prepare, View, Commit, Remove, Update, Cleanup) run one at a
 * time, each ending in one atomic metadata write; reads (Stat, List, Usage, Mounts) see the last
 * committed state and never wait for a change.
 */
import { isAbsolute } from "node:path";
import { DadiError } from "../errors.js";
import { diskUsage } from "./disk-usage.js";
import { LABEL_SNAPSHOT_REF } from "./labels.js";
import * as model from "./model.js";
import { type OverlayOptions, snapshotMounts } from "./mounts.js";
import type { Claim, ClaimedLayer, RemoteLayers } from "./remote.js";
import { Store } from "./store.js";
import type { Info, JsonValue, Kind, Labels, Mount, Usage } from "./types.js";

export interface SnapshotterOptions {
	root: string;
	log: (line: string) => void;
	/** The remote-layer plug-in, if any. */
	remote?: RemoteLayers;
	/** Overlay mount options; detectOverlayOptions() (overlay-support.ts) gives what this machine calls for. */
	overlay: OverlayOptions;
	/** For tests. */
	now?: () => Date;
}

type Ancestor = { name: string; record: model.SnapshotRecord };

export class Snapshotter {
	#queue: Promise<unknown> = Promise.resolve();
	#closed = false;

	private constructor(
		private readonly store: Store,
		private readonly o: SnapshotterOptions,
	) {}

	static async open(o: SnapshotterOptions): Promise<Snapshotter> {
		const store = await Store.open(o.root, o.log);
		const s = new Snapshotter(store, o);
		try {
			if (o.remote?.start) {
				const layers = [...store.state.snapshots.entries()]
					.filter(([, r]) => r.remote !== undefined)
					.map(([name, r]) => s.layer(name, r));
				await o.remote.start(layers);
			}
		} catch (e) {
			await store.close();
			throw e;
		}
		return s;
	}

	get root(): string {
		return this.store.root;
	}

	/** Runs one change at a time. */
	private exclusive<T>(fn: () => Promise<T>): Promise<T> {
		if (this.#closed)
			return Promise.reject(
				new DadiError("NETWORK", "the snapshotter is shutting down"),
			);
		const run = this.#queue.then(fn, fn);
		this.#queue = run.catch(() => {});
		return run;
	}

	private now(): Date {
		return this.o.now?.() ?? new Date();
	}

	private layer(name: string, r: model.SnapshotRecord): ClaimedLayer {
		return {
			name,
			dir: this.store.dir(r.id),
			labels: { ...r.labels },
			metadata: r.remote as JsonValue,
		};
	}

	/** The committed records by key or name (what metadata.json holds), read-only. */
	records(): ReadonlyMap<string, Readonly<model.SnapshotRecord>> {
		return this.store.state.snapshots;
	}

	stat(key: string): Info {
		return model.infoOf(key, model.get(this.store.state, key));
	}

	list(filters: readonly string[]): Info[] {
		return model.list(this.store.state, filters);
	}

	/** Active snapshots: measured now (their upper directory); others: as recorded. */
	async usage(key: string): Promise<Usage> {
		const r = model.get(this.store.state, key);
		if (r.kind === "active") return diskUsage(this.store.upper(r.id));
		return r.usage ?? { size: 0, inodes: 0 };
	}

	async mounts(key: string): Promise<Mount[]> {
		const state = this.store.state;
		const r = model.get(state, key);
		if (r.kind === "committed")
			throw new DadiError(
				"PRECONDITION_FAILED",
				`snapshot ${JSON.stringify(key)} is committed: only active and view snapshots have mounts`,
			);
		return this.mountsFor(key, r, model.ancestry(state, r.parent));
	}

	prepare(key: string, parent: string, labels: Labels): Promise<Mount[]> {
		return this.create("active", key, parent, labels);
	}

	view(key: string, parent: string, labels: Labels): Promise<Mount[]> {
		return this.create("view", key, parent, labels);
	}

	private create(
		kind: "active" | "view",
		key: string,
		parent: string,
		labels: Labels,
	): Promise<Mount[]> {
		return this.exclusive(async () => {
			const state = this.store.state;
			model.checkCreate(state, key, parent, labels);
			const ref = Object.hasOwn(labels, LABEL_SNAPSHOT_REF)
				? labels[LABEL_SNAPSHOT_REF]
				: undefined;
			if (kind === "active" && ref) {
				const target = state.snapshots.get(ref);
				if (
					target?.kind === "committed" &&
					target.parent === parent &&
					target.labels[LABEL_SNAPSHOT_REF] === ref
				)
					throw targetExists(ref);
				if (this.o.remote && !target) {
					const claim = await this.o.remote.claim({
						key,
						parent,
						ref,
						labels: { ...labels },
					});
					if (claim) {
						await this.recordClaim(ref, parent, labels, claim);
						throw targetExists(ref);
					}
				}
			}
			const record = model.newRecord(state, kind, parent, labels, this.now());
			const chain = model.ancestry(state, parent);
			const owner = chain[0] ? this.store.upper(chain[0].record.id) : undefined;
			await this.store.createDir(record.id, kind, owner);
			try {
				const mounts = await this.mountsFor(key, record, chain);
				await this.store.save(model.withRecord(state, key, record));
				return mounts;
			} catch (e) {
				await this.store
					.removeDir(record.id)
					.catch((err: Error) =>
						this.o.log(`warning: ${err.message} (Cleanup retries)`),
					);
				throw e;
			}
		});
	}

	/** A remote layer the plug-in claimed: a committed snapshot named `ref`, recorded whole or not at all. */
	private async recordClaim(
		ref: string,
		parent: string,
		labels: Labels,
		claim: Claim,
	): Promise<void> {
		const state = this.store.state;
		const metadata = checkJson(claim.metadata);
		if (
			claim.usage &&
			!(isCount(claim.usage.size) && isCount(claim.usage.inodes))
		)
			throw new DadiError(
				"INTERNAL",
				"the remote-layer plug-in claimed a layer with a malformed usage",
			);
		const record = model.newRecord(
			state,
			"committed",
			parent,
			labels,
			this.now(),
			{
				remote: metadata,
			},
		);
		await this.store.createDir(record.id, "committed");
		try {
			record.usage =
				claim.usage ?? (await diskUsage(this.store.upper(record.id)));
			await this.store.save(model.withRecord(state, ref, record));
		} catch (e) {
			await this.store.removeDir(record.id).catch(() => {});
			await this.o.remote
				?.removed(this.layer(ref, record))
				.catch((err: Error) =>
					this.o.log(
						`warning: remote-layer plug-in: removed(${ref}): ${err.message}`,
					),
				);
			throw e;
		}
		this.o.log(
			`remote layer ${ref} claimed (parent ${parent === "" ? "none" : parent})`,
		);
	}

	/** The mounts of an active or view snapshot, asking the plug-in about claimed layers below it. */
	private async mountsFor(
		key: string,
		r: model.SnapshotRecord,
		chain: readonly Ancestor[],
	): Promise<Mount[]> {
		const kind = r.kind as Exclude<Kind, "committed">;
		const target = (lowers: string[]) =>
			snapshotMounts(
				{
					kind,
					upper: this.store.upper(r.id),
					work: this.store.work(r.id),
					lowers,
				},
				this.o.overlay,
			);
		const base = target(chain.map((a) => this.store.upper(a.record.id)));
		const claimed = chain.filter((a) => a.record.remote !== undefined);
		if (claimed.length === 0) return base;
		const remote = this.o.remote;
		if (!remote)
			throw new DadiError(
				"PRECONDITION_FAILED",
				`snapshot ${JSON.stringify(key)} sits on remote layers (${claimed.map((a) => a.name).join(", ")}) but no remote-layer plug-in is loaded`,
			);
		const answer = await remote.mount({
			key,
			kind,
			layers: claimed.map((a) => this.layer(a.name, a.record)),
			mounts: base,
		});
		if (answer && "mounts" in answer) return checkMounts(answer.mounts);
		const dirs = answer?.lowerDirs ?? {};
		return target(
			chain.map((a) => {
				if (a.record.remote === undefined) return this.store.upper(a.record.id);
				const d = Object.hasOwn(dirs, a.name) ? dirs[a.name] : undefined;
				if (typeof d !== "string" || !isAbsolute(d) || /[:,\n]/.test(d))
					throw new DadiError(
						"INTERNAL",
						`the remote-layer plug-in gave no usable lower directory for ${a.name} (an absolute path without ":" "," or newlines)`,
					);
				return d;
			}),
		);
	}

	commit(name: string, key: string, labels: Labels): Promise<void> {
		return this.exclusive(async () => {
			const r = model.checkCommit(this.store.state, name, key, labels);
			const usage = await diskUsage(this.store.upper(r.id));
			await this.store.save(
				model.commit(this.store.state, name, key, labels, usage, this.now()),
			);
		});
	}

	remove(key: string): Promise<void> {
		return this.exclusive(async () => {
			const { state, removed } = model.remove(this.store.state, key);
			await this.store.save(state);
			// The removal is committed: a directory that cannot go now is Cleanup's.
			await this.store
				.removeDir(removed.id)
				.catch((e: Error) =>
					this.o.log(`warning: ${e.message} (Cleanup retries)`),
				);
			if (removed.remote !== undefined && this.o.remote)
				await this.o.remote
					.removed(this.layer(key, removed))
					.catch((e: Error) =>
						this.o.log(
							`warning: remote-layer plug-in: removed(${key}): ${e.message}`,
						),
					);
		});
	}

	update(
		name: string,
		labels: Labels,
		paths: readonly string[],
	): Promise<Info> {
		return this.exclusive(async () => {
			await this.store.save(
				model.update(this.store.state, name, labels, paths, this.now()),
			);
			return this.stat(name);
		});
	}

	/** Removes directories no snapshot owns; returns how many. */
	cleanup(): Promise<number> {
		return this.exclusive(
			async () => (await this.store.removeOrphans(this.o.log)).length,
		);
	}

	/** Lets running changes finish, refuses new ones, releases the root. Idempotent. */
	async close(): Promise<void> {
		if (this.#closed) return;
		this.#closed = true;
		await this.#queue;
		await this.store.close();
	}
}

function targetExists(ref: string): DadiError {
	return new DadiError(
		"OUTPUT_EXISTS",
		`target snapshot ${JSON.stringify(ref)} already exists`,
	);
}

function isCount(n: unknown): boolean {
	return typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
}

function checkJson(v: JsonValue): JsonValue {
	try {
		const text = JSON.stringify(v);
		if (text === undefined) throw new Error("not JSON");
		return JSON.parse(text) as JsonValue;
	} catch {
		throw new DadiError(
			"INTERNAL",
			"the remote-layer plug-in claimed a layer with metadata that is not JSON",
		);
	}
}

function checkMounts(mounts: unknown): Mount[] {
	const ok =
		Array.isArray(mounts) &&
		mounts.length > 0 &&
		mounts.every(
			(m) =>
				typeof m === "object" &&
				m !== null &&
				typeof m.type === "string" &&
				typeof m.source === "string" &&
				Array.isArray(m.options) &&
				m.options.every((x: unknown) => typeof x === "string"),
		);
	if (!ok)
		throw new DadiError(
			"INTERNAL",
			"the remote-layer plug-in answered malformed mounts",
		);
	return (mounts as Mount[]).map((m) => ({
		type: m.type,
		source: m.source,
		options: [...m.options],
	}));
}
