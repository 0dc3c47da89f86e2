/** The two kinds of error applying a layer can raise, with the entry they concern in the message. */
import { getSystemErrorMap } from "node:util";
import { DadiError } from "../errors.js";

/** How messages name an entry: `layer entry "usr/bin/sh"`. */
export function entryLabel(path: string): string {
	return `layer entry ${JSON.stringify(path)}`;
}

/** The layer asks for something that cannot or must not be done (INPUT_INVALID). */
export function invalidEntry(path: string, why: string): DadiError {
	return new DadiError("INPUT_INVALID", `${entryLabel(path)}: ${why}`);
}

/**
 * The operating system refused an operation on `abs` (a path in the staging directory) while
 * applying entry `path` (IO). A DadiError passes through unchanged.
 */
export function ioError(
	path: string,
	abs: string,
	doing: string,
	e: unknown,
): DadiError {
	if (e instanceof DadiError) return e;
	const err = e as NodeJS.ErrnoException;
	const code = typeof err?.code === "string" ? err.code : undefined;
	const text =
		code && typeof err.errno === "number"
			? `${code}: ${getSystemErrorMap().get(err.errno)?.[1] ?? err.message}`
			: (err?.message ?? String(e));
	return new DadiError(
		"IO",
		`${entryLabel(path)}: cannot ${doing} ${abs}: ${text}`,
		{ cause: e },
	);
}

/** The errno name of an error thrown by node:fs or native.ts, if it has one. */
export function errnoCode(e: unknown): string | undefined {
	const code = (e as NodeJS.ErrnoException | undefined)?.code;
	return typeof code === "string" ? code : undefined;
}
