/** Reading policy files and directories (the I/O edge of the policy engine). */
import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { DadiError, fromSystemError } from "../errors.js";
import { type CompiledPolicy, POLICY_LIMITS, parsePolicy } from "./document.js";

/** Reads and compiles one policy file. */
export async function loadPolicyFile(path: string): Promise<CompiledPolicy> {
	let bytes: Buffer;
	try {
		const st = await stat(path);
		if (st.isDirectory())
			throw new DadiError(
				"INPUT_INVALID",
				`${path}: is a directory; name a policy file, or use --policies DIR for a directory of *.json policies`,
			);
		if (st.size > POLICY_LIMITS.maxTextBytes)
			throw new DadiError(
				"POLICY_INVALID",
				`${path}: the policy is ${st.size} bytes, more than the ${POLICY_LIMITS.maxTextBytes} allowed; split it into several policies (see docs/policy.md)`,
			);
		bytes = await readFile(path);
	} catch (e) {
		throw fromSystemError(e, path, "reading the policy");
	}
	let text: string;
	try {
		text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
	} catch {
		throw new DadiError(
			"POLICY_INVALID",
			`${path}: not UTF-8 text; a policy is a JSON document (see docs/policy.md)`,
		);
	}
	return parsePolicy(text, path);
}

/** Policies must have distinct names across files: the name identifies the deciding policy. */
function checkDistinct(policies: readonly CompiledPolicy[]): void {
	const byName = new Map<string, string>();
	for (const p of policies) {
		const other = byName.get(p.name);
		if (other !== undefined)
			throw new DadiError(
				"POLICY_INVALID",
				`${p.source}: policy name "${p.name}" is also used by ${other}; give each policy a distinct name`,
			);
		byName.set(p.name, p.source);
	}
}

/** Reads and compiles several policy files; their names must be distinct. */
export async function loadPolicyFiles(
	paths: readonly string[],
): Promise<CompiledPolicy[]> {
	const out: CompiledPolicy[] = [];
	for (const p of paths) {
		out.push(await loadPolicyFile(p));
		checkDistinct(out);
	}
	return out;
}

/**
 * Reads and compiles every `*.json` file of a directory (not its subdirectories; names starting
 * with "." are skipped), in file-name order. Other files (a README) are ignored.
 */
export async function loadPolicyDir(dir: string): Promise<CompiledPolicy[]> {
	let names: string[];
	try {
		const st = await stat(dir);
		if (!st.isDirectory())
			throw new DadiError(
				"INPUT_INVALID",
				`${dir}: not a directory; name a directory of *.json policies, or use --policy FILE`,
			);
		names = await readdir(dir);
	} catch (e) {
		const err = fromSystemError(e, dir, "reading the policy directory");
		if (err.code === "INPUT_NOT_FOUND")
			throw new DadiError(
				"INPUT_NOT_FOUND",
				`${dir}: policy directory not found; create it and put *.json policies in it (see docs/policy.md)`,
			);
		throw err;
	}
	const files = names
		.filter((n) => n.endsWith(".json") && !n.startsWith("."))
		.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
	const paths: string[] = [];
	for (const n of files) {
		const p = join(dir, n);
		const st = await stat(p).catch((e) => {
			throw fromSystemError(e, p, "reading the policy directory");
		});
		if (st.isFile()) paths.push(p);
	}
	return loadPolicyFiles(paths);
}
