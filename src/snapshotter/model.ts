/**
 * The snapshot store as data, and every operation on it as a pure function: checks in the order
 * containerd's metastore and overlay snapshotter make them (so the same request gets the same gRPC
 * code), then a new record. No I/O and no clock of its own: the service (snapshotter.ts) supplies
 * the time, the usage it measured and the directories, and persists what these return.
 *
 * Codes (gRPC via grpc-status.ts): INPUT_NOT_FOUND → NotFound, OUTPUT_EXISTS → AlreadyExists,
 * INPUT_INVALID → InvalidArgument, PRECONDITION_FAILED → FailedPrecondition.
 */
import { DadiError } from "../errors.js";
import { parseFilters } from "./filters.js";
import { copyLabels, validateKey, validateLabels } from "./labels.js";
import type { Info, JsonValue, Kind, Labels, Usage } from "./types.js";

export interface SnapshotRecord {
	/** Decimal id, never reused within a store; the directory snapshots/<id>. */
	id: string;
	kind: Kind;
	/** The parent's name, "" for none. */
	parent: string;
	labels: Record<string, string>;
	created: Date;
	updated: Date;
	/** Committed snapshots: measured at commit (or given by a remote-layer claim). */
	usage?: Usage;
	/** A remote layer: what the plug-in that claimed it stored beside it (remote.ts). */
	remote?: JsonValue;
}

export interface State {
	/** The next id to hand out. */
	nextId: number;
	/** By key (active, view) or name (committed). */
	snapshots: Map<string, SnapshotRecord>;
}

export function emptyState(): State {
	return { nextId: 1, snapshots: new Map() };
}

function notFound(key: string): DadiError {
	return new DadiError(
		"INPUT_NOT_FOUND",
		`snapshot ${JSON.stringify(key)} does not exist`,
	);
}

export function get(state: State, key: string): SnapshotRecord {
	const r = state.snapshots.get(key);
	if (!r) throw notFound(key);
	return r;
}

export function infoOf(name: string, r: SnapshotRecord): Info {
	return {
		name,
		parent: r.parent,
		kind: r.kind,
		created: r.created,
		updated: r.updated,
		labels: { ...r.labels },
	};
}

/** The ancestry of a snapshot's parent, nearest first: [parent, grandparent, …]. */
export function ancestry(
	state: State,
	parent: string,
): { name: string; record: SnapshotRecord }[] {
	const out: { name: string; record: SnapshotRecord }[] = [];
	const seen = new Set<string>();
	let p = parent;
	while (p !== "") {
		if (seen.has(p))
			throw new DadiError("INTERNAL", `snapshot ancestry loops at ${p}`);
		seen.add(p);
		const r = state.snapshots.get(p);
		if (!r)
			throw new DadiError(
				"INPUT_NOT_FOUND",
				`missing parent ${JSON.stringify(p)}`,
			);
		out.push({ name: p, record: r });
		p = r.parent;
	}
	return out;
}

export function hasChildren(state: State, name: string): boolean {
	for (const r of state.snapshots.values()) if (r.parent === name) return true;
	return false;
}

/**
 * Prepare (active) or View: the parent must exist (NotFound) and be committed (InvalidArgument),
 * then the key must be new (AlreadyExists) — containerd's CreateSnapshot order.
 */
export function checkCreate(
	state: State,
	key: string,
	parent: string,
	labels: Labels,
): void {
	validateKey(key, "key");
	validateKey(parent, "parent", true);
	validateLabels(labels);
	if (parent !== "") {
		const p = state.snapshots.get(parent);
		if (!p)
			throw new DadiError(
				"INPUT_NOT_FOUND",
				`missing parent ${JSON.stringify(parent)}`,
			);
		if (p.kind !== "committed")
			throw new DadiError(
				"INPUT_INVALID",
				`parent ${JSON.stringify(parent)} is not a committed snapshot`,
			);
	}
	if (state.snapshots.has(key))
		throw new DadiError(
			"OUTPUT_EXISTS",
			`snapshot ${JSON.stringify(key)} already exists`,
		);
}

export function newRecord(
	state: State,
	kind: Kind,
	parent: string,
	labels: Labels,
	now: Date,
	extra: { usage?: Usage; remote?: JsonValue } = {},
): SnapshotRecord {
	return {
		id: String(state.nextId),
		kind,
		parent,
		labels: copyLabels(labels),
		created: now,
		updated: now,
		...(extra.usage ? { usage: extra.usage } : {}),
		...(extra.remote !== undefined ? { remote: extra.remote } : {}),
	};
}

/** A new state with `record` stored under `key` (and the id counter moved past it). */
export function withRecord(
	state: State,
	key: string,
	record: SnapshotRecord,
): State {
	const snapshots = new Map(state.snapshots);
	snapshots.set(key, record);
	return {
		nextId: Math.max(state.nextId, Number(record.id) + 1),
		snapshots,
	};
}

/**
 * Commit as containerd's overlay snapshotter orders its checks: the key must exist (NotFound),
 * the name must be new (AlreadyExists), the key must be active (FailedPrecondition). So a repeated
 * Commit of the same key is NotFound; committing onto a taken name is AlreadyExists.
 */
export function checkCommit(
	state: State,
	name: string,
	key: string,
	labels: Labels,
): SnapshotRecord {
	validateKey(name, "name");
	validateKey(key, "key");
	validateLabels(labels);
	const r = get(state, key);
	if (state.snapshots.has(name))
		throw new DadiError(
			"OUTPUT_EXISTS",
			`committed snapshot ${JSON.stringify(name)} already exists`,
		);
	if (r.kind !== "active")
		throw new DadiError(
			"PRECONDITION_FAILED",
			`snapshot ${JSON.stringify(key)} is not active (it is a ${r.kind} snapshot)`,
		);
	return r;
}

/** The committed record replaces the active one: same id and parent, new labels (not inherited). */
export function commit(
	state: State,
	name: string,
	key: string,
	labels: Labels,
	usage: Usage,
	now: Date,
): State {
	const r = checkCommit(state, name, key, labels);
	const snapshots = new Map(state.snapshots);
	snapshots.delete(key);
	snapshots.set(name, {
		id: r.id,
		kind: "committed",
		parent: r.parent,
		labels: copyLabels(labels),
		created: now,
		updated: now,
		usage,
	});
	return { nextId: state.nextId, snapshots };
}

/** Remove: NotFound, or FailedPrecondition while any snapshot names it as parent. */
export function remove(
	state: State,
	key: string,
): { state: State; removed: SnapshotRecord } {
	const r = get(state, key);
	if (hasChildren(state, key))
		throw new DadiError(
			"PRECONDITION_FAILED",
			`cannot remove snapshot ${JSON.stringify(key)} with child`,
		);
	const snapshots = new Map(state.snapshots);
	snapshots.delete(key);
	return { state: { nextId: state.nextId, snapshots }, removed: r };
}

/**
 * Update: only labels are mutable. Paths: none (replace all labels), "labels" (replace all),
 * "labels.KEY" (set KEY to the given value; an absent or empty value removes it); anything else
 * is InvalidArgument, as containerd's UpdateInfo.
 */
export function update(
	state: State,
	name: string,
	labels: Labels,
	paths: readonly string[],
	now: Date,
): State {
	validateKey(name, "info.name");
	const r = get(state, name);
	let next = copyLabels(r.labels);
	if (paths.length === 0) next = copyLabels(labels);
	for (const path of paths) {
		if (path.startsWith("labels.")) {
			const k = path.slice("labels.".length);
			const v = Object.hasOwn(labels, k) ? labels[k] : undefined;
			if (v === undefined || v === "") delete next[k];
			else next[k] = v;
		} else if (path === "labels") next = copyLabels(labels);
		else
			throw new DadiError(
				"INPUT_INVALID",
				`cannot update ${JSON.stringify(path)} field on snapshot ${JSON.stringify(name)}`,
			);
	}
	validateLabels(next);
	const snapshots = new Map(state.snapshots);
	snapshots.set(name, { ...r, labels: next, updated: now });
	return { nextId: state.nextId, snapshots };
}

/** The fields containerd's filters see on a snapshot: kind, name, parent, labels.KEY. */
export function lookupField(
	info: Info,
	path: readonly string[],
): string | undefined {
	switch (path[0]) {
		case "kind":
			return info.kind;
		case "name":
			return info.name;
		case "parent":
			return info.parent;
		case "labels": {
			const k = path.slice(1).join(".");
			return Object.hasOwn(info.labels, k) ? info.labels[k] : undefined;
		}
		default:
			return undefined;
	}
}

/** List: every snapshot matching any of the filters (none: all), in key order. */
export function list(state: State, filters: readonly string[]): Info[] {
	const f = parseFilters(filters);
	return [...state.snapshots.entries()]
		.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
		.map(([name, r]) => infoOf(name, r))
		.filter((info) => f.match((path) => lookupField(info, path)));
}

/** Directory ids the store owns (everything else under snapshots/ is an orphan). */
export function ownedIds(state: State): Set<string> {
	return new Set([...state.snapshots.values()].map((r) => r.id));
}
