/**
 * A small TOML writer for configuration files people read: tables in the order given, a comment
 * above any table or key, keys quoted only when they must be. It writes the few value types
 * containerd's configuration needs (strings, booleans, integers, arrays of strings, inline tables of
 * strings). Written here because the TOML libraries' stringify functions drop comments, which are
 * half the value of a generated configuration. Tests parse every output with smol-toml.
 */
import { DadiError } from "../errors.js";

export type TomlValue =
	| string
	| boolean
	| number
	| readonly string[]
	| { readonly [key: string]: string };

export interface TomlEntry {
	key: string;
	value: TomlValue;
	comment?: string;
}

export interface TomlTable {
	/** The table's key path, e.g. ["plugins", "io.containerd.grpc.v1.cri", "containerd"]; [] is the root. */
	path: readonly string[];
	comment?: string;
	entries: readonly TomlEntry[];
}

const BARE_KEY = /^[A-Za-z0-9_-]+$/;

export function tomlKey(key: string): string {
	return BARE_KEY.test(key) ? key : tomlString(key);
}

/** A TOML basic string: quotes, backslashes and control characters escaped. */
export function tomlString(s: string): string {
	let out = '"';
	for (const ch of s) {
		const c = ch.codePointAt(0) as number;
		if (ch === '"') out += '\\"';
		else if (ch === "\\") out += "\\\\";
		else if (ch === "\n") out += "\\n";
		else if (ch === "\t") out += "\\t";
		else if (ch === "\r") out += "\\r";
		else if (c < 0x20 || c === 0x7f)
			out += `\\u${c.toString(16).padStart(4, "0")}`;
		else out += ch;
	}
	return `${out}"`;
}

function tomlValue(v: TomlValue, where: string): string {
	if (typeof v === "string") return tomlString(v);
	if (typeof v === "boolean") return v ? "true" : "false";
	if (typeof v === "number") {
		if (!Number.isSafeInteger(v))
			throw new DadiError("INTERNAL", `${where}: ${v} is not a safe integer`);
		return String(v);
	}
	if (Array.isArray(v))
		return `[${(v as readonly string[]).map(tomlString).join(", ")}]`;
	const pairs = Object.entries(v as Record<string, string>).map(
		([k, s]) => `${tomlKey(k)} = ${tomlString(s)}`,
	);
	return pairs.length === 0 ? "{}" : `{ ${pairs.join(", ")} }`;
}

function commentLines(comment: string | undefined, indent: string): string {
	if (comment === undefined) return "";
	return comment
		.split("\n")
		.map((l) => (l === "" ? `${indent}#\n` : `${indent}# ${l}\n`))
		.join("");
}

/**
 * Writes a document: an optional header comment, then each table. A table path may repeat neither
 * itself nor a key within it (TOML forbids defining a table or key twice): that is a bug here.
 */
export function writeToml(
	tables: readonly TomlTable[],
	header?: string,
): string {
	const seen = new Set<string>();
	let out = commentLines(header, "");
	for (const t of tables) {
		const id = JSON.stringify(t.path);
		if (seen.has(id))
			throw new DadiError("INTERNAL", `TOML table ${id} written twice`);
		seen.add(id);
		const keys = new Set<string>();
		if (out !== "") out += "\n";
		out += commentLines(t.comment, "");
		if (t.path.length > 0) out += `[${t.path.map(tomlKey).join(".")}]\n`;
		const indent = t.path.length > 0 ? "  " : "";
		for (const e of t.entries) {
			if (keys.has(e.key))
				throw new DadiError(
					"INTERNAL",
					`TOML key ${e.key} written twice in ${id}`,
				);
			keys.add(e.key);
			out += commentLines(e.comment, indent);
			out += `${indent}${tomlKey(e.key)} = ${tomlValue(e.value, `${id}.${e.key}`)}\n`;
		}
	}
	return out;
}
