/**
 * The audit log's records (pure): what a record holds, its one canonical line, and the hash chain.
 *
 *   {"seq":n,"time":ISO,"prev":hex,"hash":hex,"event":...,"client":...,...}
 *
 * hash = sha256hex(prev + "\n" + JSON of the record with seq and time, in a fixed key order); the
 * first record's prev is 64 zeros. A record is exactly the bytes `serialize` writes: no reordered
 * keys, spacing or escapes are accepted back.
 */
import { createHash } from "node:crypto";
import { DadiError } from "../errors.js";

export type AuditEvent = "auth" | "attest" | "release" | "deny" | "admin";

export interface AuditRecord {
	event: AuditEvent;
	client: string;
	tee?: string;
	evidenceDigest?: string;
	resource?: string;
	decision?: "allow" | "deny";
	policy?: string;
	reasons?: string[];
	status?: number;
	detail?: string;
	/**
	 * How many denials this record stands for, when more than one: a summary of denials from one
	 * client that were counted rather than written one by one (denial-coalescer.ts).
	 */
	count?: number;
}

export interface StoredRecord extends AuditRecord {
	seq: number;
	time: string;
	prev: string;
	hash: string;
}

export interface AuditQuery {
	/** only records with seq > sinceSeq; then the FIRST `limit` matches are returned (to page forward) */
	sinceSeq?: number;
	/** only records with time >= since (an ISO 8601 time) */
	since?: string;
	resource?: string;
	event?: string;
	decision?: string;
	/** 1..10000, default 100; without sinceSeq the NEWEST `limit` matches are returned */
	limit?: number;
}

export const MAX_AUDIT_STRING = 1024;
export const MAX_AUDIT_REASONS = 32;
export const MAX_QUERY_LIMIT = 10000;
export const DEFAULT_QUERY_LIMIT = 100;
export const ZERO_HASH = "0".repeat(64);
const HEX64 = /^[0-9a-f]{64}$/;
/** Far above the largest line `append` can produce (about 250 KB with every field at its cap). */
export const MAX_LINE_BYTES = 1 << 20;
const EVENTS = new Set(["auth", "attest", "release", "deny", "admin"]);
const DECISIONS = new Set(["allow", "deny"]);
const STRING_FIELDS = [
	"client",
	"tee",
	"evidenceDigest",
	"resource",
	"policy",
	"detail",
] as const;
/** The fixed key order of the hashed body. */
const BODY_ORDER = [
	"seq",
	"time",
	"event",
	"client",
	"tee",
	"evidenceDigest",
	"resource",
	"decision",
	"policy",
	"reasons",
	"status",
	"detail",
	"count",
] as const;
const STORED_KEYS = new Set<string>([...BODY_ORDER, "prev", "hash"]);

export type Body = Omit<StoredRecord, "prev" | "hash">;

/** Caps a string at MAX_AUDIT_STRING code units without splitting a surrogate pair. */
function cap(v: unknown): string {
	const s = typeof v === "string" ? v : String(v);
	if (s.length <= MAX_AUDIT_STRING) return s;
	let end = MAX_AUDIT_STRING;
	const c = s.charCodeAt(end - 1);
	if (c >= 0xd800 && c <= 0xdbff) end--;
	return s.slice(0, end);
}

/** The record as stored: known fields only, strings and lists capped so no client bloats the log. */
export function sanitize(r: AuditRecord): Omit<Body, "seq" | "time"> {
	if (typeof r !== "object" || r === null || !EVENTS.has(r.event))
		throw new DadiError(
			"INTERNAL",
			`audit record with an unknown event ${JSON.stringify(cap(String(r?.event)).slice(0, 40))}`,
		);
	const out: Record<string, unknown> = { event: r.event };
	for (const k of STRING_FIELDS) {
		const v = r[k];
		if (v !== undefined && v !== null) out[k] = cap(v);
		else if (k === "client") out[k] = "";
	}
	if (r.decision !== undefined && r.decision !== null) {
		if (!DECISIONS.has(r.decision))
			throw new DadiError(
				"INTERNAL",
				"audit record with a decision other than allow or deny",
			);
		out.decision = r.decision;
	}
	if (Array.isArray(r.reasons))
		out.reasons = r.reasons.slice(0, MAX_AUDIT_REASONS).map(cap);
	if (Number.isSafeInteger(r.status)) out.status = r.status;
	if (Number.isSafeInteger(r.count) && (r.count as number) > 1)
		out.count = r.count;
	return out as Omit<Body, "seq" | "time">;
}

export function bodyJson(r: Body): string {
	const o: Record<string, unknown> = {};
	for (const k of BODY_ORDER) if (r[k] !== undefined) o[k] = r[k];
	return JSON.stringify(o);
}

export function chainHash(prev: string, body: string): string {
	return createHash("sha256").update(`${prev}\n${body}`, "utf8").digest("hex");
}

/** The one canonical line (without "\n") of a stored record. */
export function serialize(r: StoredRecord): string {
	const o: Record<string, unknown> = {
		seq: r.seq,
		time: r.time,
		prev: r.prev,
		hash: r.hash,
	};
	for (const k of BODY_ORDER) if (r[k] !== undefined) o[k] = r[k];
	return JSON.stringify(o);
}

function validString(v: unknown): v is string {
	return typeof v === "string" && v.length <= MAX_AUDIT_STRING;
}

/** A line that is exactly a canonical stored record, else undefined. Does not check the hash. */
export function parseLine(line: Buffer): StoredRecord | undefined {
	let o: unknown;
	try {
		o = JSON.parse(line.toString("utf8"));
	} catch {
		return undefined;
	}
	if (typeof o !== "object" || o === null || Array.isArray(o)) return undefined;
	const r = o as Record<string, unknown>;
	for (const k of Object.keys(r)) if (!STORED_KEYS.has(k)) return undefined;
	if (
		!Number.isSafeInteger(r.seq) ||
		(r.seq as number) < 1 ||
		typeof r.time !== "string" ||
		r.time.length > 64 ||
		Number.isNaN(Date.parse(r.time)) ||
		typeof r.prev !== "string" ||
		!HEX64.test(r.prev) ||
		typeof r.hash !== "string" ||
		!HEX64.test(r.hash) ||
		typeof r.event !== "string" ||
		!EVENTS.has(r.event) ||
		!validString(r.client)
	)
		return undefined;
	for (const k of STRING_FIELDS)
		if (r[k] !== undefined && !validString(r[k])) return undefined;
	if (
		r.decision !== undefined &&
		!(typeof r.decision === "string" && DECISIONS.has(r.decision))
	)
		return undefined;
	if (
		r.reasons !== undefined &&
		!(
			Array.isArray(r.reasons) &&
			r.reasons.length <= MAX_AUDIT_REASONS &&
			r.reasons.every(validString)
		)
	)
		return undefined;
	if (r.status !== undefined && !Number.isSafeInteger(r.status))
		return undefined;
	if (
		r.count !== undefined &&
		!(Number.isSafeInteger(r.count) && (r.count as number) > 1)
	)
		return undefined;
	const rec = r as unknown as StoredRecord;
	// Only the exact bytes we write are a record: no reordered keys, spacing or escapes.
	if (serialize(rec) !== line.toString("utf8")) return undefined;
	return rec;
}

export function selfConsistent(r: StoredRecord): boolean {
	return chainHash(r.prev, bodyJson(r)) === r.hash;
}
