import { createHash } from "node:crypto";
import { DadiError } from "../errors.js";

export const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

export function sha256Digest(bytes: Buffer): string {
	return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/**
 * A JSON value from an untrusted document, for a message: strings and numbers cut short, anything
 * else by its type (String() of a parsed object can throw: {"toString":[]}).
 */
export function shown(v: unknown, max = 80): string {
	if (typeof v === "string") return JSON.stringify(v.slice(0, max));
	if (typeof v === "number" || typeof v === "boolean" || v === null)
		return String(v);
	return Array.isArray(v)
		? "an array"
		: typeof v === "object"
			? "an object"
			: typeof v;
}

export function checkDigest(d: unknown, what: string): string {
	if (typeof d !== "string" || !DIGEST_RE.test(d))
		throw new DadiError(
			"LAYOUT_INVALID",
			`${what}: ${shown(d)} is not a sha256 digest`,
		);
	return d;
}

export interface Descriptor {
	mediaType: string;
	digest: string;
	size: number;
	annotations?: Record<string, string>;
	artifactType?: string;
}
