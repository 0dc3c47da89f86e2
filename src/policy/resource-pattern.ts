/**
 * KBS resource paths ("REPO/TYPE/TAG", as in `kbs:///REPO/TYPE/TAG` and
 * `GET /kbs/v0/resource/REPO/TYPE/TAG`) and the patterns policies use to name them: the same
 * three segments, each a literal or `*` standing for one whole segment. Pure; nothing here throws
 * except the parse functions, which throw DadiError.
 */
import { DadiError } from "../errors.js";

export interface ResourcePath {
	repository: string;
	type: string;
	tag: string;
	/** The canonical "REPO/TYPE/TAG". */
	path: string;
}

const SEGMENT = /^[A-Za-z0-9._-]{1,128}$/;

export const RESOURCE_PATH_HELP =
	'REPO/TYPE/TAG: three segments of 1-128 characters from A-Z a-z 0-9 . _ -, none "." or "..", e.g. default/my-image/key';

/** Shows untrusted text in a message: quoted, escaped, at most 100 characters. */
export function quoteText(text: string): string {
	return JSON.stringify(text.length > 100 ? `${text.slice(0, 100)}…` : text);
}

export function isResourceSegment(s: string): boolean {
	return SEGMENT.test(s) && s !== "." && s !== "..";
}

function segments(text: unknown): string[] | undefined {
	if (typeof text !== "string" || text.length > 3 * 128 + 2) return undefined;
	const parts = text.split("/");
	return parts.length === 3 ? parts : undefined;
}

/** The path's parts, or undefined when `text` is not a valid resource path. */
export function resourcePathOf(text: unknown): ResourcePath | undefined {
	const parts = segments(text);
	if (!parts?.every(isResourceSegment)) return undefined;
	const [repository, type, tag] = parts as [string, string, string];
	return { repository, type, tag, path: `${repository}/${type}/${tag}` };
}

/**
 * Parses "REPO/TYPE/TAG". `what` names the input in the error (e.g. "--resource"); `code` is
 * USAGE for command-line arguments, INPUT_INVALID for values read from files or requests.
 */
export function parseResourcePath(
	text: string,
	what: string,
	code: "USAGE" | "INPUT_INVALID" = "USAGE",
): ResourcePath {
	const r = resourcePathOf(text);
	if (!r)
		throw new DadiError(
			code,
			`${what}: ${quoteText(String(text))} is not a resource path; expected ${RESOURCE_PATH_HELP}`,
		);
	return r;
}

function isPatternSegment(s: string): boolean {
	return s === "*" || isResourceSegment(s);
}

export function isResourcePattern(text: unknown): boolean {
	const parts = segments(text);
	return parts?.every(isPatternSegment) === true;
}

/** Checks a resource pattern; `what` names it in the POLICY_INVALID error. */
export function parseResourcePattern(text: string, what: string): string {
	if (!isResourcePattern(text))
		throw new DadiError(
			"POLICY_INVALID",
			`${what}: ${quoteText(String(text))} is not a resource pattern; expected REPO/TYPE/TAG where each segment is a literal (1-128 of A-Z a-z 0-9 . _ -, not "." or "..") or * for any one segment, e.g. default/*/*`,
		);
	return text;
}

/**
 * True when `path` is a valid resource path and `pattern` a valid pattern that matches it; false
 * for anything else (never throws).
 */
export function matchesResource(pattern: string, path: string): boolean {
	const pat = segments(pattern);
	const res = resourcePathOf(path);
	if (!pat || !res || !pat.every(isPatternSegment)) return false;
	const parts = [res.repository, res.type, res.tag];
	return pat.every((p, i) => p === "*" || p === parts[i]);
}
