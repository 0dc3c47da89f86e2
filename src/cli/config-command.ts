/**
 * `dadi-guest config`: the original OCI image config of a sealed image, decrypted (entrypoint,
 * command, env, working directory, user, labels). The public config of a sealed image holds only a
 * sentinel entrypoint; a runtime inside the sandbox reads the real process from here.
 */
import type { Command } from "commander";
import { parseDecryptedImageConfig } from "../image/image-config.js";
import { printJson, runAction } from "./common.js";
import { addKeyOptions, type KeyFlags } from "./key-options.js";
import { readOriginalConfig } from "./open-for-reading.js";
import { addRegistryOptions, type RegistryFlags } from "./registry-options.js";

export function configCommand(program: Command, prog: string): void {
	const c = program
		.command("config")
		.description(
			"authenticate and decrypt a sealed image's original OCI image config and print it (null for a raw disk); no layer is read",
		)
		.argument("<REF>", "oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]")
		.option(
			"--json",
			'print {"ok":true,"image":<the reference pinned to its manifest digest>,"config":<the config>}',
		);
	addRegistryOptions(addKeyOptions(c)).action(
		async (
			refText: string,
			opts: RegistryFlags & KeyFlags & { json?: boolean },
		) =>
			runAction(`${prog} config`, Boolean(opts.json), async () => {
				const r = await readOriginalConfig(refText, opts, opts);
				if (opts.json) {
					printJson({
						ok: true,
						image: r.pinned,
						config:
							r.bytes === null ? null : parseDecryptedImageConfig(r.bytes),
					});
					return;
				}
				const text = r.bytes === null ? "null" : r.bytes.toString("utf8");
				process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
			}),
	);
}
