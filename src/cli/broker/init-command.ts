/** `dadi-broker init`: a new state directory, master key and admin token. */
import { randomBytes } from "node:crypto";
import { access } from "node:fs/promises";
import type { Command } from "commander";
import {
	generateMasterKeyText,
	parseMasterKey,
	readMasterKey,
} from "../../broker/master-key.js";
import { initStateDir } from "../../broker/state-dir.js";
import { DadiError, fromSystemError } from "../../errors.js";
import { writeFileAtomic } from "../../oci/layout.js";
import { printJson, runAction } from "../common.js";

export function initCommand(program: Command): void {
	program
		.command("init")
		.description(
			"create a broker state directory (encrypted key store, audit log), its master key file and an admin token file",
		)
		.requiredOption(
			"--state <DIR>",
			"the state directory to create (must be absent or empty)",
		)
		.requiredOption(
			"--master-key <FILE>",
			"the master key file: created (mode 600) unless it exists, then used; keep it outside the state directory",
		)
		.option(
			"--admin-token <FILE>",
			"also write a new admin token to FILE (mode 600)",
		)
		.option("--json", "print the result as JSON")
		.action(
			async (opts: {
				state: string;
				masterKey: string;
				adminToken?: string;
				json?: boolean;
			}) =>
				runAction("dadi-broker init", Boolean(opts.json), async () => {
					let master: Buffer;
					let created = false;
					try {
						// an existing key file must be the owner's alone, as at serve
						master = await readMasterKey({ file: opts.masterKey });
					} catch (e) {
						const err = fromSystemError(
							e,
							opts.masterKey,
							"reading the master key",
						);
						if (err.code !== "INPUT_NOT_FOUND") throw err;
						const text = generateMasterKeyText();
						master = parseMasterKey(text, "the new master key");
						await writeFileAtomic(opts.masterKey, text, 0o600);
						created = true;
					}
					if (opts.adminToken) {
						if (await exists(opts.adminToken))
							throw new DadiError(
								"OUTPUT_EXISTS",
								`${opts.adminToken}: already exists; remove it or choose another name`,
							);
					}
					await initStateDir(opts.state, master);
					if (opts.adminToken)
						await writeFileAtomic(
							opts.adminToken,
							`${randomBytes(32).toString("base64url")}\n`,
							0o600,
						);
					const out = {
						ok: true,
						state: opts.state,
						masterKey: opts.masterKey,
						masterKeyCreated: created,
						adminToken: opts.adminToken ?? null,
					};
					if (opts.json) printJson(out);
					else
						process.stdout.write(
							`initialized ${opts.state}\n  master key  ${opts.masterKey}${created ? " (new)" : ""}\n${opts.adminToken ? `  admin token ${opts.adminToken} (new)\n` : ""}`,
						);
				}),
		);
}

async function exists(p: string): Promise<boolean> {
	try {
		await access(p);
		return true;
	} catch {
		return false;
	}
}
