/**
 * Claims given as a JSON document (for `dadi-broker policy test --claims FILE`), checked strictly
 * against the Claims type: every field present, no others, each of its type. Pure.
 */
import { type Claims, TEE_TYPES, type TeeType } from "../attest/claims.js";
import { DadiError } from "../errors.js";
import { quoteText } from "./resource-pattern.js";

const FIELDS: readonly (keyof Claims)[] = [
	"tee",
	"debug",
	"measurement",
	"report_data",
	"init_data",
	"tcb",
	"tcb_status",
	"tee_specific",
];

const HEX = /^(?:[0-9a-f]{2})*$/;
const MAX_STRING = 4096;
const MAX_ENTRIES = 256;

/** "tcb.snp", or tcb["odd key"] when the key is not an identifier. */
function member(obj: string, key: string): string {
	return /^[A-Za-z_][A-Za-z0-9_]{0,63}$/.test(key)
		? `${obj}.${key}`
		: `${obj}[${quoteText(key)}]`;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
	return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Validates a parsed JSON value as Claims; errors (INPUT_INVALID) name `source` and the field. */
export function parseClaims(value: unknown, source: string): Claims {
	const bad = (field: string, what: string): DadiError =>
		new DadiError(
			"INPUT_INVALID",
			`${source}: claims field ${field} ${what} (the claims format is in docs/policy.md)`,
		);
	if (!isPlainObject(value))
		throw new DadiError(
			"INPUT_INVALID",
			`${source}: claims must be a JSON object with the fields ${FIELDS.join(", ")} (see docs/policy.md)`,
		);
	for (const k of Object.keys(value))
		if (!(FIELDS as readonly string[]).includes(k))
			throw bad(
				quoteText(k),
				`is unknown; the fields are ${FIELDS.join(", ")}`,
			);
	for (const k of FIELDS)
		if (!Object.hasOwn(value, k)) throw bad(k, "is missing");

	const tee = value.tee;
	if (
		typeof tee !== "string" ||
		!(TEE_TYPES as readonly string[]).includes(tee)
	)
		throw bad("tee", `must be one of ${TEE_TYPES.join(", ")}`);
	if (typeof value.debug !== "boolean")
		throw bad("debug", "must be true or false");
	const hex = (k: "measurement" | "report_data" | "init_data"): string => {
		const v = value[k];
		if (typeof v !== "string" || v.length > MAX_STRING || !HEX.test(v))
			throw bad(
				k,
				'must be lowercase hex without a prefix (an even number of 0-9 a-f), or "" when the TEE has none',
			);
		return v;
	};
	const measurement = hex("measurement");
	const reportData = hex("report_data");
	const initData = hex("init_data");

	const tcbIn = value.tcb;
	if (!isPlainObject(tcbIn) || Object.keys(tcbIn).length > MAX_ENTRIES)
		throw bad("tcb", 'must be an object of version numbers, e.g. {"snp": 8}');
	const tcb = Object.fromEntries(
		Object.entries(tcbIn).map(([k, v]) => {
			if (typeof v !== "number" || !Number.isFinite(v))
				throw bad(member("tcb", k), "must be a number");
			return [k, v];
		}),
	);

	if (
		typeof value.tcb_status !== "string" ||
		value.tcb_status.length > MAX_STRING
	)
		throw bad("tcb_status", 'must be a string ("" when the TEE has none)');

	const specIn = value.tee_specific;
	if (!isPlainObject(specIn) || Object.keys(specIn).length > MAX_ENTRIES)
		throw bad("tee_specific", "must be an object");
	const teeSpecific = Object.fromEntries(
		Object.entries(specIn).map(([k, v]) => {
			const ok =
				(typeof v === "string" && v.length <= MAX_STRING) ||
				typeof v === "boolean" ||
				(typeof v === "number" && Number.isFinite(v)) ||
				(Array.isArray(v) &&
					v.length <= MAX_ENTRIES &&
					v.every((x) => typeof x === "string" && x.length <= MAX_STRING));
			if (!ok)
				throw bad(
					member("tee_specific", k),
					"must be a string, number, boolean or list of strings",
				);
			return [k, Array.isArray(v) ? [...v] : v];
		}),
	);

	return {
		tee: tee as TeeType,
		debug: value.debug,
		measurement,
		report_data: reportData,
		init_data: initData,
		tcb,
		tcb_status: value.tcb_status,
		tee_specific: teeSpecific,
	};
}

/** Parses claims from JSON text (a claims file). */
export function parseClaimsJson(text: string, source: string): Claims {
	let value: unknown;
	try {
		value = JSON.parse(text);
	} catch (e) {
		throw new DadiError(
			"INPUT_INVALID",
			`${source}: not valid JSON: ${(e as Error).message}; a claims file is a JSON object (see docs/policy.md)`,
		);
	}
	return parseClaims(value, source);
}
