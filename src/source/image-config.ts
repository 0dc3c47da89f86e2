/** The parts of an ordinary OCI image config the sealer needs: platform and diff_ids. */
import { DadiError } from "../errors.js";
import { DIGEST_RE } from "../oci/digest.js";
import { parseJson } from "../oci/layout.js";
import type { Platform } from "./image-source.js";

export interface ImageConfigFacts {
	platform: Platform;
	diffIds: string[];
}

export function readImageConfig(bytes: Buffer, what: string): ImageConfigFacts {
	const c = parseJson(bytes, what) as Record<string, unknown>;
	if (typeof c !== "object" || c === null || Array.isArray(c))
		throw new DadiError("INPUT_INVALID", `${what}: not a JSON object`);
	const rootfs = c.rootfs as Record<string, unknown> | undefined;
	if (!rootfs || rootfs.type !== "layers" || !Array.isArray(rootfs.diff_ids))
		throw new DadiError(
			"INPUT_INVALID",
			`${what}: no rootfs.diff_ids (not an image config)`,
		);
	const diffIds = rootfs.diff_ids.map((d, i) => {
		if (typeof d !== "string" || !DIGEST_RE.test(d))
			throw new DadiError(
				"INPUT_INVALID",
				`${what}: rootfs.diff_ids[${i}] is not a sha256 digest`,
			);
		return d;
	});
	const platform: Platform = {
		os: typeof c.os === "string" ? c.os : "linux",
		architecture:
			typeof c.architecture === "string" ? c.architecture : "unknown",
	};
	if (typeof c.variant === "string") platform.variant = c.variant;
	return { platform, diffIds };
}

/**
 * The labels of an image config (`config.Labels`), for `--public-labels`: string values only; an
 * image without labels has none.
 */
export function labelsOf(bytes: Buffer): Record<string, string> {
	let c: unknown;
	try {
		c = JSON.parse(bytes.toString("utf8"));
	} catch {
		return {};
	}
	const labels = (c as { config?: { Labels?: unknown } } | null)?.config
		?.Labels;
	const out: Record<string, string> = {};
	if (typeof labels !== "object" || labels === null || Array.isArray(labels))
		return out;
	for (const [k, v] of Object.entries(labels))
		if (typeof v === "string") out[k] = v;
	return out;
}
