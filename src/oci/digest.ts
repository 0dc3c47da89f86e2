import { createHash } from "node:crypto";
import { DadiError } from "../errors.js";

export const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

export function sha256Digest(bytes: Buffer): string {
	return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

export function checkDigest(d: unknown, what: string): string {
	if (typeof d !== "string" || !DIGEST_RE.test(d))
		throw new DadiError(
			"LAYOUT_INVALID",
			`${what}: "${String(d).slice(0, 80)}" is not a sha256 digest`,
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
