import type { Command } from "commander";
import { verifyImage } from "../../image/verify.js";
import { formatBytes, printJson, runAction } from "../common.js";
import { openForReading } from "../open-for-reading.js";
import { Progress } from "../progress.js";
import { addLazyOptions, type LazyFlags } from "../registry-options.js";

export function verifyCommand(program: Command): void {
	const c = program
		.command("verify")
		.description(
			"check every blob's digest and authenticate every chunk of every layer",
		)
		.argument("<REF>", "oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]")
		.requiredOption("--key <KEYFILE>", "the image key")
		.option("--json", "print the result as JSON")
		.option("--quiet", "no progress on stderr");
	addLazyOptions(c).action(
		async (
			refText: string,
			opts: LazyFlags & { key: string; json?: boolean; quiet?: boolean },
		) =>
			runAction("dadi-seal verify", Boolean(opts.json), async () => {
				const opened = await openForReading(
					refText,
					{ key: opts.key },
					opts,
					true,
				);
				const image = opened.image;
				try {
					const progress = new Progress(!opts.quiet, Boolean(opts.json));
					const r = await verifyImage(image, (d, t) =>
						progress.update("verifying", d, t),
					);
					progress.done();
					if (opts.json)
						printJson({
							ok: true,
							manifest: image.manifestDesc.digest,
							...r,
						});
					else
						process.stdout.write(
							`verified ${refText}: ${r.layers} layer(s), ${r.chunks} chunks, ${formatBytes(r.bytes)} authentic\n`,
						);
				} finally {
					await opened.finish();
				}
			}),
	);
}
