/** `dadi-broker policy test|check`: try key-release policies offline and explain each decision. */
import { readFile, stat } from "node:fs/promises";
import type { Command } from "commander";
import { DadiError, fromSystemError } from "../../errors.js";
import { parseClaimsJson } from "../../policy/claims-input.js";
import type { CompiledPolicy } from "../../policy/document.js";
import { type Decision, decide } from "../../policy/evaluate.js";
import {
	loadPolicyDir,
	loadPolicyFile,
	loadPolicyFiles,
} from "../../policy/load.js";
import { parseResourcePath } from "../../policy/resource-pattern.js";
import { EXIT, printJson, runAction } from "../common.js";

const MAX_CLAIMS_BYTES = 1024 * 1024;

interface TestFlags {
	policy?: string[];
	policies?: string;
	claims: string;
	resource: string;
	image?: string;
	insecureDev?: boolean;
	json?: boolean;
}

async function readClaimsFile(path: string) {
	let text: string;
	try {
		const st = await stat(path);
		if (st.isFile() && st.size > MAX_CLAIMS_BYTES)
			throw new DadiError(
				"INPUT_INVALID",
				`${path}: ${st.size} bytes is too large for a claims file (at most ${MAX_CLAIMS_BYTES})`,
			);
		text = await readFile(path, "utf8");
	} catch (e) {
		throw fromSystemError(e, path, "reading the claims");
	}
	return parseClaimsJson(text, path);
}

async function loadPolicies(opts: TestFlags): Promise<CompiledPolicy[]> {
	const files = opts.policy ?? [];
	if (files.length > 0 && opts.policies !== undefined)
		throw new DadiError(
			"USAGE",
			"give either --policy FILE... or --policies DIR, not both",
		);
	if (opts.policies !== undefined) return loadPolicyDir(opts.policies);
	if (files.length === 0)
		throw new DadiError(
			"USAGE",
			"no policies: give --policy FILE... or --policies DIR (e.g. --policies policies)",
		);
	return loadPolicyFiles(files);
}

function printDecision(
	d: Decision,
	resource: string,
	policies: readonly CompiledPolicy[],
): void {
	const lines = [
		d.allow ? `ALLOW ${resource} (policy ${d.policy})` : `DENY  ${resource}`,
	];
	if (d.results.length === 0) lines.push(...d.reasons.map((r) => `  ${r}`));
	for (const r of d.results) {
		const p = policies.find((x) => x.name === r.policy);
		lines.push(
			`  policy ${r.policy}: ${r.allow ? "allows" : "denies"}${p ? ` (${p.source})` : ""}`,
		);
		for (const rule of r.rules) {
			const expr = (
				p?.rules.find((x) => x.name === rule.rule)?.expr ?? ""
			).replace(/\s+/g, " ");
			lines.push(
				`    ${rule.ok ? "✓" : "✗"} ${rule.rule}: ${expr}${rule.error !== undefined ? `  — error: ${rule.error}` : ""}`,
			);
		}
	}
	process.stdout.write(`${lines.join("\n")}\n`);
}

function testCommand(policy: Command): void {
	policy
		.command("test")
		.description(
			"decide whether the given claims may have a resource under the policies, and explain why (exit 0 allow, 9 deny)",
		)
		.option("--policy <FILE...>", "policy file(s)")
		.option("--policies <DIR>", "a directory of *.json policies")
		.requiredOption(
			"--claims <FILE>",
			"normalized attestation claims as JSON (see docs/policy.md)",
		)
		.requiredOption(
			"--resource <PATH>",
			"the requested resource, REPO/TYPE/TAG (e.g. default/my-image/key)",
		)
		.option(
			"--image <DIGEST>",
			"the image the guest names in its request (request.image; default: none)",
		)
		.option(
			"--insecure-dev",
			"decide as a broker running with --insecure-dev (lets policies allow the sample TEE)",
		)
		.option("--json", "print the decision as JSON")
		.action(async (opts: TestFlags) =>
			runAction("dadi-broker policy test", Boolean(opts.json), async () => {
				const resource = parseResourcePath(opts.resource, "--resource");
				const policies = await loadPolicies(opts);
				const claims = await readClaimsFile(opts.claims);
				const d = decide(
					policies,
					{
						claims,
						resource: resource.path,
						request: { image: opts.image ?? "" },
					},
					{ insecureDev: Boolean(opts.insecureDev) },
				);
				if (opts.json)
					printJson({
						ok: true,
						allow: d.allow,
						policy: d.policy ?? null,
						reasons: d.reasons,
						results: d.results,
					});
				else printDecision(d, resource.path, policies);
				if (!d.allow) process.exitCode = EXIT.denied;
			}),
		);
}

function checkCommand(policy: Command): void {
	policy
		.command("check")
		.description(
			"parse and compile policy files; exit 3 at the first invalid one",
		)
		.argument("<FILE...>", "policy files")
		.option("--json", "print the result as JSON")
		.action(async (files: string[], opts: { json?: boolean }) =>
			runAction("dadi-broker policy check", Boolean(opts.json), async () => {
				const checked: CompiledPolicy[] = [];
				for (const f of files) {
					const p = await loadPolicyFile(f);
					const other = checked.find((x) => x.name === p.name);
					if (other)
						throw new DadiError(
							"POLICY_INVALID",
							`${f}: policy name "${p.name}" is also used by ${other.source}; give each policy a distinct name`,
						);
					checked.push(p);
					if (!opts.json)
						process.stdout.write(
							`${f}: ok (${p.name}, ${p.rules.length} rule${p.rules.length === 1 ? "" : "s"}, resources ${p.resources.join(" ")})\n`,
						);
				}
				if (opts.json)
					printJson({
						ok: true,
						policies: checked.map((p) => ({
							file: p.source,
							name: p.name,
							rules: p.rules.map((r) => r.name),
							resources: p.resources,
							digest: p.digest,
						})),
					});
			}),
		);
}

export function policyCommand(program: Command): void {
	const policy = program
		.command("policy")
		.description(
			"key-release policies: check them and test decisions offline (see docs/policy.md)",
		);
	testCommand(policy);
	checkCommand(policy);
}
