/**
 * Policies the broker enforces: read-only ones from --policies DIR, plus ones uploaded through
 * the admin API, kept as files under STATE/policies (written atomically, so a restart finds
 * exactly the policies that were acknowledged). A name belongs to one origin only.
 */
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { DadiError, fromSystemError } from "../errors.js";
import { writeFileAtomic } from "../oci/layout.js";
import { type CompiledPolicy, parsePolicy } from "../policy/document.js";
import { loadPolicyDir } from "../policy/load.js";

export interface StoredPolicy {
	policy: CompiledPolicy;
	origin: "file" | "state";
	text: string;
}

export class PolicyStore {
	readonly #byName = new Map<string, StoredPolicy>();

	private constructor(private readonly dir: string) {}

	static async open(stateDir: string, fileDir?: string): Promise<PolicyStore> {
		const dir = join(stateDir, "policies");
		await mkdir(dir, { recursive: true, mode: 0o700 }).catch((e) => {
			throw fromSystemError(e, dir, "creating the policy directory");
		});
		const store = new PolicyStore(dir);
		const fromFiles = fileDir ? await loadPolicyDir(fileDir) : [];
		for (const p of fromFiles)
			store.#byName.set(p.name, { policy: p, origin: "file", text: "" });
		for (const p of await loadPolicyDir(dir)) {
			if (store.#byName.has(p.name))
				throw new DadiError(
					"POLICY_INVALID",
					`policy "${p.name}" is both in ${fileDir} and uploaded (in ${dir}); remove one`,
				);
			store.#byName.set(p.name, { policy: p, origin: "state", text: "" });
		}
		return store;
	}

	all(): CompiledPolicy[] {
		return [...this.#byName.values()].map((s) => s.policy);
	}

	list(): {
		name: string;
		origin: string;
		digest: string;
		resources: string[];
		rules: number;
	}[] {
		return [...this.#byName.values()]
			.map((s) => ({
				name: s.policy.name,
				origin: s.origin,
				digest: s.policy.digest,
				resources: s.policy.resources,
				rules: s.policy.rules.length,
			}))
			.sort((a, b) => (a.name < b.name ? -1 : 1));
	}

	get(name: string): CompiledPolicy | undefined {
		return this.#byName.get(name)?.policy;
	}

	/** Stores an uploaded policy (its document's name must be `name`). */
	async put(name: string, text: string): Promise<{ created: boolean }> {
		const p = parsePolicy(text, `uploaded policy "${name.slice(0, 64)}"`);
		if (p.name !== name)
			throw new DadiError(
				"POLICY_INVALID",
				`the policy document is named "${p.name}" but was uploaded as "${name.slice(0, 64)}"`,
			);
		const existing = this.#byName.get(name);
		if (existing?.origin === "file")
			throw new DadiError(
				"OUTPUT_EXISTS",
				`policy "${name}" comes from the broker's --policies directory and cannot be replaced through the API`,
			);
		await writeFileAtomic(join(this.dir, `${name}.json`), text, 0o600);
		this.#byName.set(name, { policy: p, origin: "state", text });
		return { created: existing === undefined };
	}

	async delete(name: string): Promise<boolean> {
		const existing = this.#byName.get(name);
		if (!existing) return false;
		if (existing.origin === "file")
			throw new DadiError(
				"OUTPUT_EXISTS",
				`policy "${name}" comes from the broker's --policies directory; remove the file there`,
			);
		await rm(join(this.dir, `${name}.json`), { force: true });
		this.#byName.delete(name);
		return true;
	}
}
