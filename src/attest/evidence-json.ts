/** The shape every TEE's evidence shares: a JSON object (or its text) with a closed set of members. */
import type { DadiError } from "../errors.js";

export function evidenceObject(
	evidence: unknown,
	o: {
		maxChars: number;
		members: readonly string[];
		invalid: (detail: string) => DadiError;
	},
): Record<string, unknown> {
	let e = evidence;
	if (typeof e === "string") {
		if (e.length > o.maxChars)
			throw o.invalid(`longer than ${o.maxChars} characters`);
		try {
			e = JSON.parse(e);
		} catch {
			throw o.invalid("not JSON");
		}
	}
	if (typeof e !== "object" || e === null || Array.isArray(e))
		throw o.invalid("expected a JSON object");
	const obj = e as Record<string, unknown>;
	for (const k of Object.keys(obj))
		if (!o.members.includes(k))
			throw o.invalid(`unknown member "${k.slice(0, 64)}"`);
	return obj;
}
