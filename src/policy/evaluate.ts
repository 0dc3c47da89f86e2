/**
 * The key-release decision (pure, synchronous, never throws). Order:
 *   1. sample-TEE gate: claims from the insecure sample TEE are refused unless the broker runs
 *      with --insecure-dev; no policy can override this;
 *   2. the policies whose resource patterns match the path are evaluated, in name order; a policy
 *      allows iff every one of its rules yields exactly `true` (an error or a non-bool is false);
 *   3. allow iff at least one matching policy allows;
 *   4. default deny: no matching policy (or an invalid resource path) denies.
 */
import type { Claims } from "../attest/claims.js";
import type { CompiledPolicy, RuleContext } from "./document.js";
import { celErrorText } from "./document.js";
import {
	matchesResource,
	quoteText,
	RESOURCE_PATH_HELP,
	resourcePathOf,
} from "./resource-pattern.js";

export interface PolicyInput {
	claims: Claims;
	/** REPO/TYPE/TAG */
	resource: string;
	/** What the guest asked for; image is "" when the guest named none. */
	request: { image: string };
}

export interface RuleResult {
	rule: string;
	ok: boolean;
	error?: string;
}

export interface PolicyResult {
	policy: string;
	allow: boolean;
	rules: RuleResult[];
}

export interface Decision {
	allow: boolean;
	/** The allowing policy (the first by name when several allow). */
	policy?: string;
	/** Lines for people: why it was allowed, or every reason it was denied. */
	reasons: string[];
	/** Every evaluated policy and rule, in evaluation order. */
	results: PolicyResult[];
}

export const SAMPLE_TEE_REFUSED =
	"the sample TEE is for development only and this broker runs without --insecure-dev";

/** Nesting deeper than this in claims is cut off (claims from verifiers are shallow). */
const MAX_DEPTH = 32;

/**
 * A JSON-like value as CEL sees it: integral numbers become BigInt (CEL int), other numbers stay
 * doubles; objects are copied with defineProperty semantics (Object.fromEntries), so a
 * "__proto__" key stays an ordinary key; anything that is not JSON-like becomes null.
 */
export function toCelValue(v: unknown, depth = 0): unknown {
	switch (typeof v) {
		case "string":
		case "boolean":
		case "bigint":
			return v;
		case "number":
			return Number.isInteger(v) ? BigInt(v) : v;
		case "object": {
			if (v === null || depth >= MAX_DEPTH) return null;
			if (Array.isArray(v)) return v.map((x) => toCelValue(x, depth + 1));
			const proto = Object.getPrototypeOf(v);
			if (proto !== Object.prototype && proto !== null) return null;
			return Object.fromEntries(
				Object.entries(v)
					.filter(([, x]) => x !== undefined)
					.map(([k, x]) => [k, toCelValue(x, depth + 1)]),
			);
		}
		default:
			return null;
	}
}

const celValues = new WeakMap<CompiledPolicy, unknown>();

/** A policy's reference values as CEL values, converted once per compiled policy. */
function celValuesOf(p: CompiledPolicy): unknown {
	let v = celValues.get(p);
	if (v === undefined) {
		v = toCelValue(p.values ?? {});
		celValues.set(p, v);
	}
	return v;
}

function teeOf(claims: unknown): unknown {
	return typeof claims === "object" && claims !== null
		? (claims as { tee?: unknown }).tee
		: undefined;
}

function errorText(e: unknown): string {
	return celErrorText(e).slice(0, 300);
}

function describeValue(v: unknown): string {
	if (typeof v === "bigint") return `int ${v}`;
	if (typeof v === "number") return `double ${v}`;
	if (typeof v === "string") return `string ${quoteText(v)}`;
	if (v === null) return "null";
	if (Array.isArray(v)) return "a list";
	if (v instanceof Promise) return "a promise";
	return typeof v === "object" ? "a map or object" : typeof v;
}

function shortExpr(expr: string): string {
	const one = expr.replace(/\s+/g, " ").trim();
	return one.length > 160 ? `${one.slice(0, 160)}…` : one;
}

function deny(reasons: string[], results: PolicyResult[] = []): Decision {
	return { allow: false, reasons, results };
}

function runRule(
	run: (ctx: RuleContext) => unknown,
	ctx: RuleContext,
): { ok: boolean; error?: string } {
	try {
		const v = run(ctx);
		if (v === true) return { ok: true };
		if (v === false) return { ok: false };
		if (v instanceof Promise) v.catch(() => {});
		return {
			ok: false,
			error: `yielded ${describeValue(v)}, not a bool`,
		};
	} catch (e) {
		return { ok: false, error: errorText(e) };
	}
}

function decideUnsafe(
	policies: readonly CompiledPolicy[],
	input: PolicyInput,
	opts: { insecureDev: boolean },
): Decision {
	const claims = (input as { claims?: unknown } | undefined)?.claims;
	if (teeOf(claims) === "sample" && opts?.insecureDev !== true)
		return deny([SAMPLE_TEE_REFUSED]);
	const rawResource = (input as { resource?: unknown } | undefined)?.resource;
	const resource = resourcePathOf(rawResource);
	if (!resource)
		return deny([
			`resource ${quoteText(String(rawResource))} is not a resource path (${RESOURCE_PATH_HELP}) (default: deny)`,
		]);
	const matching = policies
		.filter((p) => p.resources.some((r) => matchesResource(r, resource.path)))
		.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
	if (matching.length === 0)
		return deny([`no policy covers resource ${resource.path} (default: deny)`]);

	const request = (input as { request?: unknown }).request;
	const image =
		typeof request === "object" && request !== null
			? (request as { image?: unknown }).image
			: undefined;
	const ctx: RuleContext = {
		tee: toCelValue(teeOf(claims)),
		claims: toCelValue(claims),
		resource: { ...resource },
		request: { image: image === undefined ? "" : toCelValue(image) },
		values: {},
	};
	const results: PolicyResult[] = [];
	const failures: string[] = [];
	let allowedBy: CompiledPolicy | undefined;
	for (const p of matching) {
		const withValues = { ...ctx, values: celValuesOf(p) };
		const rules = p.rules.map((r) => {
			const res = runRule(r.run, withValues);
			if (!res.ok)
				failures.push(
					`${p.name}/${r.name}: ${res.error === undefined ? "failed" : `error: ${res.error}`} (${shortExpr(r.expr)})`,
				);
			return res.error === undefined
				? { rule: r.name, ok: res.ok }
				: { rule: r.name, ok: res.ok, error: res.error };
		});
		const allow = rules.every((r) => r.ok);
		if (allow && !allowedBy) allowedBy = p;
		results.push({ policy: p.name, allow, rules });
	}
	if (allowedBy)
		return {
			allow: true,
			policy: allowedBy.name,
			reasons: [
				`allowed by policy ${allowedBy.name}: all ${allowedBy.rules.length} rule(s) hold for ${resource.path}`,
			],
			results,
		};
	return deny(failures, results);
}

/**
 * Decides whether `input` may have its resource under `policies`. Pure and synchronous; never
 * throws, whatever the claims or resource: anything unexpected denies.
 */
export function decide(
	policies: readonly CompiledPolicy[],
	input: PolicyInput,
	opts: { insecureDev: boolean },
): Decision {
	try {
		return decideUnsafe(policies, input, opts);
	} catch (e) {
		return deny([
			`the policy evaluation failed (default: deny): ${errorText(e)}`,
		]);
	}
}
