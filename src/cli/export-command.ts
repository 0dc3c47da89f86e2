/** `export`, shared by dadi-seal and dadi-guest: write the merged plaintext disk to a file. */
import type { Command } from "commander";
import { exportDisk } from "../image/export.js";
import { formatBytes, printJson, runAction } from "./common.js";
import { addKeyOptions, type KeyFlags } from "./key-options.js";
import { openForReading } from "./open-for-reading.js";
import { Progress } from "./progress.js";
import { addLazyOptions, type LazyFlags } from "./registry-options.js";

export function exportCommand(program: Command, prog: string): void {
	const c = program
		.command("export")
		.description(
			"authenticate and decrypt a sealed image and write its merged disk to a file (sparse where zero)",
		)
		.argument("<REF>", "oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]")
		.requiredOption(
			"--out <DISK>",
			"the disk image to write (written under a temporary name, renamed when complete)",
		)
		.option("--force", "replace an existing output file")
		.option("--json", "print the result as JSON")
		.option("--quiet", "no progress on stderr");
	addLazyOptions(addKeyOptions(c)).action(
		async (
			refText: string,
			opts: LazyFlags &
				KeyFlags & {
					out: string;
					force?: boolean;
					json?: boolean;
					quiet?: boolean;
				},
		) =>
			runAction(`${prog} export`, Boolean(opts.json), async () => {
				const opened = await openForReading(refText, opts, opts, true);
				const image = opened.image;
				try {
					const progress = new Progress(!opts.quiet, Boolean(opts.json));
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
							...(opened.stats ? { fetched: opened.stats.toJSON() } : {}),
						});
					else
						process.stdout.write(
							`exported ${refText} to ${opts.out}: ${formatBytes(r.bytes)}, ${r.dataChunks} data chunks, ${r.zeroChunks} zero, ${r.shadowedChunks} shadowed chunks checked, ${seconds.toFixed(2)} s\n`,
						);
				} finally {
					await opened.finish();
				}
			}),
	);
}
