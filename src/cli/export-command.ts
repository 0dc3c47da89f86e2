/** `export`, shared by dadi-seal and dadi-guest: write the merged plaintext disk to a file. */
import type { Command } from "commander";
import { DadiError } from "../errors.js";
import { exportDisk } from "../image/export.js";
import { openSealedImage } from "../image/open-image.js";
import { parseReference } from "../oci/reference.js";
import {
	formatBytes,
	Progress,
	printJson,
	readKeyFile,
	runAction,
} from "./common.js";

export function exportCommand(program: Command, prog: string): void {
	program
		.command("export")
		.description(
			"authenticate and decrypt a sealed image and write its merged disk to a file (sparse where zero)",
		)
		.argument("<REF>", "oci:DIR[:TAG]")
		.requiredOption("--key <KEYFILE>", "the image key")
		.requiredOption(
			"--out <DISK>",
			"the disk image to write (written under a temporary name, renamed when complete)",
		)
		.option("--force", "replace an existing output file")
		.option("--json", "print the result as JSON")
		.option("--quiet", "no progress on stderr")
		.action(
			async (
				refText: string,
				opts: {
					key: string;
					out: string;
					force?: boolean;
					json?: boolean;
					quiet?: boolean;
				},
			) =>
				runAction(`${prog} export`, Boolean(opts.json), async () => {
					const ref = parseReference(refText);
					if (ref.transport !== "oci")
						throw new DadiError(
							"USAGE",
							`"${refText}": export reads oci:DIR[:TAG]`,
						);
					const key = await readKeyFile(opts.key);
					const image = await openSealedImage(ref, key);
					try {
						const progress = new Progress(!opts.quiet);
						const started = performance.now();
						const r = await exportDisk(image.disk, opts.out, {
							force: opts.force,
							onProgress: (d, t) => progress.update("exporting", d, t),
						});
						progress.done();
						const seconds = (performance.now() - started) / 1000;
						if (opts.json)
							printJson({
								ok: true,
								out: opts.out,
								manifest: image.manifestDesc.digest,
								...r,
								seconds,
							});
						else
							process.stdout.write(
								`exported ${refText} to ${opts.out}: ${formatBytes(r.bytes)}, ${r.dataChunks} data chunks, ${r.zeroChunks} zero, ${r.shadowedChunks} shadowed chunks checked, ${seconds.toFixed(2)} s\n`,
							);
					} finally {
						await image.close();
					}
				}),
		);
}
