/**
 * Names in tar archives: decoding, quoting for messages, and the normalisation that keeps every
 * member inside the image root (rootfs/tar-entry.ts describes the normal form).
 */
import { DadiError } from "../errors.js";

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** A name as it appears in messages: JSON-quoted (control bytes escaped) and shortened. */
export function quote(name: string): string {
	return JSON.stringify(
		name.length > 200 ? `${name.slice(0, 200)}...(${name.length} chars)` : name,
	);
}

/** The INPUT_INVALID error for a problem with the entry whose (raw) name is `name`. */
export function entryError(name: string, problem: string): DadiError {
	return new DadiError("INPUT_INVALID", `tar entry ${quote(name)}: ${problem}`);
}

/** Strict UTF-8 (a leading BOM is kept as a character); undefined if the bytes are not UTF-8. */
export function decodeUtf8(bytes: Buffer): string | undefined {
	try {
		return utf8.decode(bytes);
	} catch {
		return undefined;
	}
}

/** For messages only: never fails, replaces what is not UTF-8. */
export function displayName(bytes: Buffer): string {
	return bytes.toString("utf8");
}

/**
 * The normal form of a member path, or the reason it is refused: empty, NUL bytes, absolute, or
 * with a ".." component anywhere. "./" prefixes, "." components, repeated and trailing slashes
 * are dropped; the root itself is ".".
 */
export function normalizePath(raw: string): string | { problem: string } {
	if (raw === "") return { problem: "empty name" };
	if (raw.includes("\0")) return { problem: "NUL byte in name" };
	if (raw.startsWith("/")) return { problem: "absolute path" };
	const parts: string[] = [];
	for (const part of raw.split("/")) {
		if (part === "" || part === ".") continue;
		if (part === "..") return { problem: '".." escapes the root' };
		parts.push(part);
	}
	return parts.length === 0 ? "." : parts.join("/");
}

/**
 * Resolves `target` (a symlink's target) lexically against the directory of `from`, both inside
 * a root: absolute targets start at the root and ".." stops at it. Returns the normal form.
 */
export function resolveInside(from: string, target: string): string {
	const parts =
		target.startsWith("/") || from === "." ? [] : from.split("/").slice(0, -1);
	for (const part of target.split("/")) {
		if (part === "" || part === ".") continue;
		if (part === "..") parts.pop();
		else parts.push(part);
	}
	return parts.length === 0 ? "." : parts.join("/");
}
