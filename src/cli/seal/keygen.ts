import { stat } from "node:fs/promises";
import type { Command } from "commander";
import { generateImageKey, toJwk } from "../../crypto/image-key.js";
import { DadiError } from "../../errors.js";
import { writeFileAtomic } from "../../oci/layout.js";
import { printJson, runAction } from "../common.js";

export function keygenCommand(program: Command): void {
	program
		.command("keygen")
		.description(
			"create a new random 256-bit image key as a JWK file (mode 0600)",
		)
		.requiredOption("--out <KEYFILE>", "where to write the key")
		.option("--force", "overwrite an existing key file (the old key is lost)")
		.option("--json", "print {kid, path} as JSON")
		.action(async (opts: { out: string; force?: boolean; json?: boolean }) =>
			runAction("dadi-seal keygen", Boolean(opts.json), async () => {
				if (
					!opts.force &&
					(await stat(opts.out).then(
						() => true,
						() => false,
					))
				)
					throw new DadiError(
						"OUTPUT_EXISTS",
						`${opts.out}: already exists; refusing to overwrite a key (use --force if you mean it)`,
					);
				const key = generateImageKey();
				await writeFileAtomic(
					opts.out,
					`${JSON.stringify(toJwk(key), null, 2)}\n`,
					0o600,
				);
				if (opts.json) printJson({ ok: true, kid: key.kid, path: opts.out });
				else
					process.stdout.write(`wrote image key ${key.kid} to ${opts.out}\n`);
			}),
		);
}
