/**
 * RFC 8785 JSON Canonicalization Scheme (JCS) for JSON values: object members sorted by their
 * names compared as UTF-16 code units, no whitespace, strings escaped exactly as JSON.stringify
 * escapes them, numbers in ECMAScript Number serialization (so -0 is "0" and 1e21 is "1e+21").
 *
 * Only JSON values are accepted: null, booleans, finite numbers, strings, arrays and plain
 * objects. Anything else (undefined, functions, symbols, bigint, NaN, Infinity, class instances
 * such as Date or Map, sparse arrays, cycles, absurd nesting) is an INPUT_INVALID error rather
 * than something silently dropped or converted: a digest over a value that JSON cannot carry
 * would never match the peer's.
 */
import { DadiError } from "../errors.js";

/** Deeper than any JSON a peer has a reason to send; stops stack exhaustion on hostile input. */
const MAX_DEPTH = 256;

function invalid(path: string, why: string): DadiError {
	return new DadiError(
		"INPUT_INVALID",
		`canonical JSON: ${path} ${why}; only JSON values can be canonicalized`,
	);
}

/** Compares by UTF-16 code units, which is what RFC 8785 §3.2.3 requires. */
function byCodeUnits(a: string, b: string): number {
	return a < b ? -1 : a > b ? 1 : 0;
}

function isPlainObject(value: object): boolean {
	const proto = Object.getPrototypeOf(value);
	return proto === Object.prototype || proto === null;
}

function serialize(
	value: unknown,
	path: string,
	depth: number,
	active: Set<object>,
): string {
	switch (typeof value) {
		case "string":
			return JSON.stringify(value);
		case "number":
			if (!Number.isFinite(value))
				throw invalid(path, `is ${String(value)}, which JSON cannot represent`);
			// ECMAScript Number::toString; String(-0) is already "0".
			return String(value);
		case "boolean":
			return value ? "true" : "false";
		case "undefined":
			throw invalid(path, "is undefined");
		case "bigint":
			throw invalid(path, "is a bigint");
		case "function":
			throw invalid(path, "is a function");
		case "symbol":
			throw invalid(path, "is a symbol");
	}
	if (value === null) return "null";
	const obj = value as object;
	if (depth >= MAX_DEPTH)
		throw invalid(path, `nests deeper than ${MAX_DEPTH} levels`);
	if (active.has(obj)) throw invalid(path, "refers back to itself (a cycle)");
	active.add(obj);
	try {
		if (Array.isArray(obj)) {
			const parts: string[] = new Array(obj.length);
			for (let i = 0; i < obj.length; i++) {
				if (!Object.hasOwn(obj, i))
					throw invalid(`${path}[${i}]`, "is a hole in a sparse array");
				parts[i] = serialize(obj[i], `${path}[${i}]`, depth + 1, active);
			}
			return `[${parts.join(",")}]`;
		}
		if (!isPlainObject(obj))
			throw invalid(
				path,
				`is an instance of ${obj.constructor?.name ?? "a class"}, not a plain object`,
			);
		const record = obj as Record<string, unknown>;
		const keys = Object.keys(record).sort(byCodeUnits);
		const parts: string[] = new Array(keys.length);
		for (let i = 0; i < keys.length; i++) {
			const k = keys[i] as string;
			parts[i] =
				`${JSON.stringify(k)}:${serialize(record[k], `${path}.${k}`, depth + 1, active)}`;
		}
		return `{${parts.join(",")}}`;
	} finally {
		active.delete(obj);
	}
}

/** RFC 8785 canonical form of a JSON value. Throws DadiError INPUT_INVALID for non-JSON values. */
export function canonicalJson(value: unknown): string {
	return serialize(value, "$", 0, new Set());
}
