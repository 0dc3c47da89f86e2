/** `dadi-guest read`: a byte range of the decrypted disk, fetching only the chunks it needs. */
import { createHash } from "node:crypto";
import type { Command } from "commander";
import { DadiError } from "../errors.js";
import { writeFileAtomic } from "../oci/layout.js";
import { parseSize, printJson, runAction } from "./common.js";
import { addKeyOptions, type KeyFlags } from "./key-options.js";
import { openForReading } from "./open-for-reading.js";
import { addLazyOptions, type LazyFlags } from "./registry-options.js";

export function readCommand(program: Command, prog: string): void {
	const c = program
		.command("read")
		.description(
			"authenticate, decrypt and print a byte range of a sealed image's disk (only the chunks it covers are fetched)",
		)
		.argument("<REF>", "oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]")
		.requiredOption("--offset <BYTES>", "where to start (e.g. 0, 4k, 100M)")
		.requiredOption("--length <BYTES>", "how much to read (at most 1G)")
		.option(
			"--out <FILE>",
			"write the bytes here (atomically) instead of stdout",
		)
		.option(
			"--json",
			"print a JSON summary (length, sha256) instead of the bytes",
		);
	addLazyOptions(addKeyOptions(c)).action(
		async (
			refText: string,
			opts: LazyFlags &
				KeyFlags & {
					offset: string;
					length: string;
					out?: string;
					json?: boolean;
				},
		) =>
			runAction(`${prog} read`, Boolean(opts.json), async () => {
				const offset = parseSize(opts.offset, "--offset");
				const length = parseSize(opts.length, "--length");
				if (length > 1 << 30)
					throw new DadiError("USAGE", "--length: at most 1G per read");
				const opened = await openForReading(refText, opts, opts);
				try {
					const bytes = await opened.image.disk.read(offset, length);
					if (opts.out) await writeFileAtomic(opts.out, bytes, 0o600);
					if (opts.json)
						printJson({
							ok: true,
							image: opened.name,
							offset,
							length,
							sha256: createHash("sha256").update(bytes).digest("hex"),
							...(opts.out ? { out: opts.out } : {}),
							...(opened.stats ? { fetched: opened.stats.toJSON() } : {}),
						});
					else if (!opts.out)
						await new Promise<void>((resolve, reject) =>
							process.stdout.write(bytes, (e) => (e ? reject(e) : resolve())),
						);
				} finally {
					await opened.finish();
				}
			}),
	);
}
