/**
 * Snapshot labels as containerd limits them (labels/validate.go): a label's key and value together
 * may be at most 4096 bytes (UTF-8). Anything larger is INPUT_INVALID (gRPC InvalidArgument).
 */
import { DadiError } from "../errors.js";
import type { Labels } from "./types.js";

export const MAX_LABEL_BYTES = 4096;

/** containerd sets it on every layer it unpacks: the layer's chain ID (the snapshot's future name). */
export const LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref";

/** Labels with this prefix (layer-descriptor annotations) are passed on to snapshotters. */
export const INHERITED_LABEL_PREFIX = "containerd.io/snapshot/";

/** Keys and names: non-empty and at most this many bytes (dadi's bound; containerd's are < 300). */
export const MAX_KEY_BYTES = 4096;

export function validateLabels(labels: Labels, where = "labels"): void {
	for (const [k, v] of Object.entries(labels)) {
		if (typeof v !== "string")
			throw new DadiError(
				"INPUT_INVALID",
				`${where}: label ${k} has no string value`,
			);
		if (Buffer.byteLength(k) + Buffer.byteLength(v) > MAX_LABEL_BYTES)
			throw new DadiError(
				"INPUT_INVALID",
				`${where}: label key and value greater than maximum size (${MAX_LABEL_BYTES} bytes), key: ${JSON.stringify(k.slice(0, 10))}`,
			);
	}
}

/** A key, name or parent given by a client: non-empty (unless `optional`), bounded. */
export function validateKey(key: string, what: string, optional = false): void {
	if (typeof key !== "string" || (!optional && key === ""))
		throw new DadiError("INPUT_INVALID", `${what} must not be empty`);
	if (Buffer.byteLength(key) > MAX_KEY_BYTES)
		throw new DadiError(
			"INPUT_INVALID",
			`${what} is longer than ${MAX_KEY_BYTES} bytes`,
		);
}

/**
 * A copy with no prototype (a label called "__proto__" is just a label) and without empty values,
 * which containerd never stores either (an empty value removes a label).
 */
export function copyLabels(labels: Labels | undefined): Record<string, string> {
	const out: Record<string, string> = Object.create(null);
	if (labels)
		for (const [k, v] of Object.entries(labels)) if (v !== "") out[k] = v;
	return out;
}
