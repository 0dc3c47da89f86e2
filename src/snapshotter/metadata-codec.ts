/**
 * metadata.json, the snapshotter's whole metadata store as one JSON document (docs/snapshotter.md):
 *
 *   { "format": "dadi-snapshotter-metadata", "version": 1, "nextId": N,
 *     "snapshots": [ { "key", "id", "kind", "parent", "labels", "created", "updated",
 *                      "usage"?: { "size", "inodes" }, "remote"?: <plug-in JSON> } … ] }
 *
 * Decoding is strict — the file is only ever written by us, so anything unexpected means damage or
 * another program's file, and the snapshotter refuses to start (FORMAT_INVALID) rather than guess
 * and lose snapshots. Pure: bytes in, state out.
 */
import { DadiError } from "../errors.js";
import { copyLabels, validateKey } from "./labels.js";
import type { SnapshotRecord, State } from "./model.js";
import type { JsonValue, Kind } from "./types.js";

export const METADATA_FORMAT = "dadi-snapshotter-metadata";
export const METADATA_VERSION = 1;

export function encodeMetadata(state: State): Buffer {
	const snapshots = [...state.snapshots.entries()]
		.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
		.map(([key, r]) => ({
			key,
			id: r.id,
			kind: r.kind,
			parent: r.parent,
			labels: { ...r.labels },
			created: r.created.toISOString(),
			updated: r.updated.toISOString(),
			...(r.usage ? { usage: r.usage } : {}),
			...(r.remote !== undefined ? { remote: r.remote } : {}),
		}));
	return Buffer.from(
		`${JSON.stringify({ format: METADATA_FORMAT, version: METADATA_VERSION, nextId: state.nextId, snapshots })}\n`,
	);
}

const KINDS: readonly Kind[] = ["view", "active", "committed"];
const MAX_ID = Number.MAX_SAFE_INTEGER;

function bad(file: string, what: string): DadiError {
	return new DadiError(
		"FORMAT_INVALID",
		`${file}: not a valid snapshotter metadata file (${what}); it was damaged or written by another program — move it aside only if the snapshots under this root may be lost`,
	);
}

function isObject(v: unknown): v is Record<string, unknown> {
	return typeof v === "object" && v !== null && !Array.isArray(v);
}

function date(v: unknown, file: string, what: string): Date {
	if (typeof v !== "string") throw bad(file, `${what} is not a time`);
	const d = new Date(v);
	if (Number.isNaN(d.getTime()) || d.toISOString() !== v)
		throw bad(file, `${what} is not a time`);
	return d;
}

function count(v: unknown, file: string, what: string): number {
	if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0)
		throw bad(file, `${what} is not a count`);
	return v;
}

export function decodeMetadata(bytes: Buffer, file: string): State {
	let doc: unknown;
	try {
		doc = JSON.parse(bytes.toString("utf8"));
	} catch {
		throw bad(file, "not JSON");
	}
	if (!isObject(doc) || doc.format !== METADATA_FORMAT)
		throw bad(file, `no "format": "${METADATA_FORMAT}"`);
	if (doc.version !== METADATA_VERSION)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`${file}: metadata version ${JSON.stringify(doc.version)} is not supported (this snapshotter reads version ${METADATA_VERSION})`,
		);
	const nextId = count(doc.nextId, file, "nextId");
	if (nextId < 1 || nextId > MAX_ID) throw bad(file, "nextId out of range");
	if (!Array.isArray(doc.snapshots)) throw bad(file, "no snapshots list");
	const snapshots = new Map<string, SnapshotRecord>();
	const ids = new Set<string>();
	for (const s of doc.snapshots as unknown[]) {
		if (!isObject(s)) throw bad(file, "a snapshot is not an object");
		const key = s.key;
		if (typeof key !== "string") throw bad(file, "a snapshot has no key");
		try {
			validateKey(key, "key");
		} catch {
			throw bad(file, "a snapshot key is empty or too long");
		}
		if (snapshots.has(key)) throw bad(file, `key ${JSON.stringify(key)} twice`);
		const id = s.id;
		if (
			typeof id !== "string" ||
			!/^[1-9]\d{0,15}$/.test(id) ||
			Number(id) >= nextId
		)
			throw bad(file, `snapshot ${JSON.stringify(key)} has a bad id`);
		if (ids.has(id)) throw bad(file, `id ${id} twice`);
		ids.add(id);
		if (!KINDS.includes(s.kind as Kind))
			throw bad(file, `snapshot ${JSON.stringify(key)} has a bad kind`);
		if (typeof s.parent !== "string")
			throw bad(file, `snapshot ${JSON.stringify(key)} has a bad parent`);
		if (
			!isObject(s.labels) ||
			Object.values(s.labels).some((v) => typeof v !== "string")
		)
			throw bad(file, `snapshot ${JSON.stringify(key)} has bad labels`);
		const r: SnapshotRecord = {
			id,
			kind: s.kind as Kind,
			parent: s.parent,
			labels: copyLabels(s.labels as Record<string, string>),
			created: date(s.created, file, "created"),
			updated: date(s.updated, file, "updated"),
		};
		if (s.usage !== undefined) {
			if (!isObject(s.usage)) throw bad(file, "bad usage");
			r.usage = {
				size: count(s.usage.size, file, "usage.size"),
				inodes: count(s.usage.inodes, file, "usage.inodes"),
			};
		}
		if (s.remote !== undefined) r.remote = s.remote as JsonValue;
		snapshots.set(key, r);
	}
	// Parents must exist and be committed, and ancestry must end: what every operation assumes.
	for (const [key, r] of snapshots) {
		if (r.parent === "") continue;
		const p = snapshots.get(r.parent);
		if (p?.kind !== "committed")
			throw bad(
				file,
				`snapshot ${JSON.stringify(key)} has a missing or uncommitted parent`,
			);
	}
	for (const key of snapshots.keys()) {
		let steps = 0;
		for (
			let p = snapshots.get(key)?.parent ?? "";
			p !== "";
			p = snapshots.get(p)?.parent ?? ""
		)
			if (++steps > snapshots.size) throw bad(file, "parents form a loop");
	}
	return { nextId, snapshots };
}
