/**
 * Key-release policy documents: parse, validate and compile (pure; no I/O). A policy is a JSON
 * document naming the resources it covers and CEL rules that must all hold; see docs/policy.md.
 * Every field is checked strictly and every rule is compiled and type-checked once, here, so a
 * broker refuses a bad policy at start-up rather than at the first key request.
 */
import { createHash } from "node:crypto";
import { Environment } from "@marcbachmann/cel-js";
import type { Claims } from "../attest/claims.js";
import { DadiError } from "../errors.js";
import { parseResourcePattern, quoteText } from "./resource-pattern.js";

export const POLICY_API_VERSION = "dadi.dev/v1alpha1";
export const POLICY_KIND = "KeyReleasePolicy";

export const POLICY_LIMITS = {
	maxTextBytes: 256 * 1024,
	maxResources: 64,
	maxRules: 64,
	maxExprChars: 4096,
	maxDescriptionChars: 1024,
	maxAstNodes: 2000,
	maxDepth: 64,
	maxListElements: 1000,
	maxMapEntries: 1000,
	maxCallArguments: 32,
} as const;

/** Policy and rule names. */
export const NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,62}$/;

/** The variables a rule sees (built by evaluate.ts; ints as BigInt, other numbers as double). */
export interface RuleContext {
	tee: unknown;
	claims: unknown;
	resource: unknown;
	request: unknown;
	/** The policy's own reference values (its "values" member), {} when it has none. */
	values: unknown;
}

export interface CompiledRule {
	name: string;
	expr: string;
	/** Evaluates the rule; returns the CEL value (a rule holds iff it is exactly `true`); may throw. */
	run(ctx: RuleContext): unknown;
}

export interface CompiledPolicy {
	name: string;
	description: string;
	/** Resource patterns (REPO/TYPE/TAG, each segment a literal or *). */
	resources: string[];
	rules: CompiledRule[];
	/** Reference values (expected measurements, minimum TCBs, …) the rules read as `values`. */
	values: Record<string, unknown>;
	/** SHA-256 (hex) of the document text. */
	digest: string;
	/** Where the document came from (a file name), for messages. */
	source: string;
}

/**
 * The CEL type of `claims`: one entry per Claims field (the Record type makes the compiler insist
 * on exactly the fields of Claims), so a misspelt field fails at compile time, not at key release.
 */
const CLAIMS_SCHEMA: Record<keyof Claims, string> = {
	tee: "string",
	debug: "bool",
	measurement: "string",
	report_data: "string",
	init_data: "string",
	tcb: "map<string, int>",
	tcb_status: "string",
	tee_specific: "map<string, dyn>",
};

export const RULE_VARIABLES = "tee, claims, resource, request, values";

const ENV = new Environment({
	limits: {
		maxAstNodes: POLICY_LIMITS.maxAstNodes,
		maxDepth: POLICY_LIMITS.maxDepth,
		maxListElements: POLICY_LIMITS.maxListElements,
		maxMapEntries: POLICY_LIMITS.maxMapEntries,
		maxCallArguments: POLICY_LIMITS.maxCallArguments,
	},
})
	.registerVariable("tee", "string")
	.registerVariable({ name: "claims", schema: CLAIMS_SCHEMA })
	.registerVariable({
		name: "resource",
		schema: {
			path: "string",
			repository: "string",
			type: "string",
			tag: "string",
		},
	})
	.registerVariable({ name: "request", schema: { image: "string" } })
	.registerVariable("values", "map<string, dyn>");

/**
 * Functions refused at compile time. `matches` runs JavaScript's backtracking RegExp (CEL
 * specifies RE2, which is linear): a pattern such as (a+)+$ against a guest-chosen
 * request.image would take exponential time and stall the broker.
 */
const FORBIDDEN_FUNCTIONS: Record<string, string> = {
	matches:
		"matches() is not allowed: this CEL engine's regular expressions backtrack, and a guest-chosen value could make one run for hours; use startsWith, endsWith, contains, in or == instead",
};

const TOP_FIELDS = [
	"apiVersion",
	"kind",
	"name",
	"description",
	"resources",
	"values",
	"rules",
];
const RULE_FIELDS = ["name", "expr"];
const HELP = "see docs/policy.md";

function invalid(source: string, what: string): DadiError {
	return new DadiError("POLICY_INVALID", `${source}: ${what} (${HELP})`);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
	return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The first line of a CEL library error (its summary when it has one). */
export function celErrorText(e: unknown): string {
	const err = e as { summary?: unknown; message?: unknown };
	const text =
		typeof err?.summary === "string" && err.summary !== ""
			? err.summary
			: typeof err?.message === "string"
				? err.message
				: String(e);
	return text.split("\n")[0] ?? "";
}

function celErrorAt(e: unknown): string {
	const start = (e as { range?: { start?: unknown } })?.range?.start;
	return typeof start === "number" ? ` at character ${start + 1}` : "";
}

interface AstLike {
	op: string;
	args: unknown;
}

function isAst(v: unknown): v is AstLike {
	return (
		typeof v === "object" &&
		v !== null &&
		typeof (v as { op?: unknown }).op === "string" &&
		"args" in v
	);
}

/** The first forbidden function the expression calls, if any. */
function forbiddenCall(root: unknown): string | undefined {
	const stack: unknown[] = [root];
	let budget = 100_000;
	while (stack.length > 0 && budget-- > 0) {
		const v = stack.pop();
		if (Array.isArray(v)) {
			stack.push(...v);
		} else if (isAst(v)) {
			if (
				(v.op === "call" || v.op === "rcall") &&
				Array.isArray(v.args) &&
				typeof v.args[0] === "string" &&
				Object.hasOwn(FORBIDDEN_FUNCTIONS, v.args[0])
			)
				return v.args[0];
			if (v.op !== "value" && v.op !== "id") stack.push(v.args);
		}
	}
	return undefined;
}

function compileRule(
	raw: unknown,
	index: number,
	source: string,
	seen: Set<string>,
): CompiledRule {
	const where = `rules[${index}]`;
	if (!isPlainObject(raw))
		throw invalid(
			source,
			`${where} is not an object; each rule is {"name": "...", "expr": "..."}`,
		);
	const label =
		typeof raw.name === "string" ? `rule ${quoteText(raw.name)}` : where;
	for (const k of Object.keys(raw))
		if (!RULE_FIELDS.includes(k))
			throw invalid(
				source,
				`${label}: unknown field ${quoteText(k)}; a rule has only "name" and "expr"`,
			);
	if (typeof raw.name !== "string" || !NAME_PATTERN.test(raw.name))
		throw invalid(
			source,
			`${label}: "name" must be a string of 1-63 characters from a-z 0-9 . _ -, starting with a letter or digit`,
		);
	if (seen.has(raw.name))
		throw invalid(
			source,
			`${label}: the name is used by another rule of this policy; rename one`,
		);
	seen.add(raw.name);
	const expr = raw.expr;
	if (typeof expr !== "string" || expr.trim() === "")
		throw invalid(
			source,
			`${label}: "expr" must be a non-empty string holding a CEL expression, e.g. "tee == 'snp'"`,
		);
	if (expr.length > POLICY_LIMITS.maxExprChars)
		throw invalid(
			source,
			`${label}: "expr" is ${expr.length} characters, more than the ${POLICY_LIMITS.maxExprChars} allowed; split it into several rules`,
		);
	let parsed: ReturnType<typeof ENV.parse>;
	try {
		parsed = ENV.parse(expr);
	} catch (e) {
		throw invalid(
			source,
			`${label}: the expression does not parse: ${celErrorText(e)}${celErrorAt(e)}; fix the CEL syntax or simplify it`,
		);
	}
	const forbidden = forbiddenCall(parsed.ast);
	if (forbidden !== undefined)
		throw invalid(
			source,
			`${label}: ${FORBIDDEN_FUNCTIONS[forbidden] ?? `${forbidden}() is not allowed`}`,
		);
	let check: ReturnType<typeof parsed.check>;
	try {
		check = parsed.check();
	} catch (e) {
		check = { valid: false, error: e as never };
	}
	if (!check.valid)
		throw invalid(
			source,
			`${label}: the expression does not type-check: ${celErrorText(check.error)}${celErrorAt(check.error)}; rules may use the variables ${RULE_VARIABLES} and their fields`,
		);
	if (check.type !== "bool" && check.type !== "dyn")
		throw invalid(
			source,
			`${label}: the expression yields ${check.type ?? "an unknown type"}, but a rule must yield a bool; compare the value, e.g. "claims.tcb.snp >= 8"`,
		);
	return {
		name: raw.name,
		expr,
		run: (ctx: RuleContext): unknown =>
			parsed(ctx as unknown as Record<string, unknown>),
	};
}

/**
 * Parses, validates and compiles a policy document. `source` names it in errors (a file name).
 * Throws DadiError("POLICY_INVALID") naming the source, the rule and the problem.
 */
export function parsePolicy(text: string, source: string): CompiledPolicy {
	if (typeof text !== "string")
		throw invalid(source, "the policy text is not a string");
	const bytes = Buffer.byteLength(text, "utf8");
	if (bytes > POLICY_LIMITS.maxTextBytes)
		throw invalid(
			source,
			`the policy is ${bytes} bytes, more than the ${POLICY_LIMITS.maxTextBytes} allowed; split it into several policies`,
		);
	let doc: unknown;
	try {
		doc = JSON.parse(text);
	} catch (e) {
		throw invalid(
			source,
			`not valid JSON: ${(e as Error).message}; a policy is a JSON document`,
		);
	}
	if (!isPlainObject(doc))
		throw invalid(
			source,
			`a policy is a JSON object {"apiVersion": "${POLICY_API_VERSION}", "kind": "${POLICY_KIND}", "name", "resources", "rules"}`,
		);
	for (const k of Object.keys(doc))
		if (!TOP_FIELDS.includes(k))
			throw invalid(
				source,
				`unknown field ${quoteText(k)}; a policy has only ${TOP_FIELDS.join(", ")}`,
			);
	if (doc.apiVersion !== POLICY_API_VERSION)
		throw invalid(
			source,
			`"apiVersion" must be "${POLICY_API_VERSION}"${typeof doc.apiVersion === "string" ? `, not ${quoteText(doc.apiVersion)}` : ""}`,
		);
	if (doc.kind !== POLICY_KIND)
		throw invalid(source, `"kind" must be "${POLICY_KIND}"`);
	if (typeof doc.name !== "string" || !NAME_PATTERN.test(doc.name))
		throw invalid(
			source,
			`"name" must be a string of 1-63 characters from a-z 0-9 . _ -, starting with a letter or digit${typeof doc.name === "string" ? `, not ${quoteText(doc.name)}` : ""}`,
		);
	const name = doc.name;
	const at = `${source}: policy ${quoteText(name)}`;
	let description = "";
	if (doc.description !== undefined) {
		if (
			typeof doc.description !== "string" ||
			doc.description.length > POLICY_LIMITS.maxDescriptionChars
		)
			throw invalid(
				at,
				`"description" must be a string of at most ${POLICY_LIMITS.maxDescriptionChars} characters`,
			);
		description = doc.description;
	}
	const resources = doc.resources;
	if (
		!Array.isArray(resources) ||
		resources.length < 1 ||
		resources.length > POLICY_LIMITS.maxResources
	)
		throw invalid(
			at,
			`"resources" must be a list of 1 to ${POLICY_LIMITS.maxResources} resource patterns, e.g. ["default/*/*"]`,
		);
	const patterns = resources.map((r, i) => {
		if (typeof r !== "string")
			throw invalid(
				at,
				`resources[${i}] must be a string such as "default/*/*"`,
			);
		try {
			return parseResourcePattern(r, `resources[${i}]`);
		} catch (e) {
			throw invalid(at, (e as Error).message);
		}
	});
	const rules = doc.rules;
	if (
		!Array.isArray(rules) ||
		rules.length < 1 ||
		rules.length > POLICY_LIMITS.maxRules
	)
		throw invalid(
			at,
			`"rules" must be a list of 1 to ${POLICY_LIMITS.maxRules} rules {"name", "expr"}; all must hold for the policy to allow`,
		);
	let values: Record<string, unknown> = {};
	if (doc.values !== undefined) {
		if (!isPlainObject(doc.values))
			throw invalid(
				at,
				`"values" must be an object of reference values, e.g. {"measurements": ["…"], "min_snp": 8}`,
			);
		values = doc.values;
	}
	const seen = new Set<string>();
	const compiled = rules.map((r, i) => compileRule(r, i, at, seen));
	return {
		name,
		description,
		resources: patterns,
		rules: compiled,
		values,
		digest: createHash("sha256").update(text, "utf8").digest("hex"),
		source,
	};
}
