import type { Command } from "commander";
import { DadiError } from "../../errors.js";
import { openSealedImage } from "../../image/open-image.js";
import { verifyImage } from "../../image/verify.js";
import { parseReference } from "../../oci/reference.js";
import {
	formatBytes,
	Progress,
	printJson,
	readKeyFile,
	runAction,
} from "../common.js";

export function verifyCommand(program: Command): void {
	program
		.command("verify")
		.description(
			"check every blob's digest and authenticate every chunk of every layer",
		)
		.argument("<REF>", "oci:DIR[:TAG]")
		.requiredOption("--key <KEYFILE>", "the image key")
		.option("--json", "print the result as JSON")
		.option("--quiet", "no progress on stderr")
		.action(
			async (
				refText: string,
				opts: { key: string; json?: boolean; quiet?: boolean },
			) =>
				runAction("dadi-seal verify", Boolean(opts.json), async () => {
					const ref = parseReference(refText);
					if (ref.transport !== "oci")
						throw new DadiError(
							"USAGE",
							`"${refText}": verify reads oci:DIR[:TAG]`,
						);
					const key = await readKeyFile(opts.key);
					const image = await openSealedImage(ref, key);
					try {
						const progress = new Progress(!opts.quiet);
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
						await image.close();
					}
				}),
		);
}
