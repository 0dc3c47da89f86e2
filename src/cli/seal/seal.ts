import type { Command } from "commander";
import { DadiError } from "../../errors.js";
import {
	type CompressionName,
	isPowerOfTwoChunkSize,
} from "../../format/constants.js";
import { parseReference } from "../../oci/reference.js";
import { KEY_REF_RE } from "../../oci/sealed-config.js";
import { parseSealId } from "../../seal/keys.js";
import { sealDisk } from "../../seal/seal-disk.js";
import {
	formatBytes,
	Progress,
	parseSize,
	printJson,
	readKeyFile,
	runAction,
} from "../common.js";

interface SealOpts {
	key: string;
	chunkSize?: string;
	compress: string;
	base?: string;
	baseKey?: string;
	keyRef?: string;
	sealId?: string;
	json?: boolean;
	quiet?: boolean;
}

export function sealCommand(program: Command): void {
	program
		.command("seal")
		.description(
			"seal a disk image into an encrypted, lazily readable OCI image",
		)
		.argument("<SRC>", "raw:DISK.img — the disk image to seal")
		.argument(
			"<DEST>",
			"oci:DIR[:TAG] — the OCI image layout to write (created if missing; tag defaults to latest)",
		)
		.requiredOption(
			"--key <KEYFILE>",
			"image key (JWK from 'dadi-seal keygen')",
		)
		.option(
			"--chunk-size <N>",
			"chunk size, a power of two from 4k to 1M (default 64k, or the base image's)",
		)
		.option("--compress <ALG>", "per-chunk compression: zstd or none", "zstd")
		.option(
			"--base <REF>",
			"oci:DIR[:TAG] — add the disk as a new layer over this sealed image, storing only changed chunks",
		)
		.option(
			"--base-key <KEYFILE>",
			"key of the base image, when it differs from --key",
		)
		.option(
			"--key-ref <URI>",
			"key broker resource for the image key, kbs:///REPO/TYPE/TAG (default kbs:///default/image-key/<kid>)",
		)
		.option(
			"--seal-id <HEX>",
			"32 hex digits: reproducible output (same input, key and seal id give identical blobs)",
		)
		.option("--json", "print the result as JSON")
		.option("--quiet", "no progress on stderr")
		.action(async (srcText: string, destText: string, opts: SealOpts) =>
			runAction("dadi-seal seal", Boolean(opts.json), async () => {
				const src = parseReference(srcText);
				if (src.transport !== "raw")
					throw new DadiError(
						"USAGE",
						`source "${srcText}": this build seals raw:FILE disk images`,
					);
				const dest = parseReference(destText);
				if (dest.transport !== "oci")
					throw new DadiError(
						"USAGE",
						`destination "${destText}": must be oci:DIR[:TAG]`,
					);
				if (opts.compress !== "zstd" && opts.compress !== "none")
					throw new DadiError(
						"USAGE",
						`--compress "${opts.compress}": use zstd or none`,
					);
				if (opts.keyRef !== undefined && !KEY_REF_RE.test(opts.keyRef))
					throw new DadiError(
						"USAGE",
						`--key-ref "${opts.keyRef}": expected kbs:///REPO/TYPE/TAG`,
					);
				if (opts.baseKey && !opts.base)
					throw new DadiError("USAGE", "--base-key needs --base");
				const chunkSize =
					opts.chunkSize === undefined
						? undefined
						: parseSize(opts.chunkSize, "--chunk-size");
				if (chunkSize !== undefined && !isPowerOfTwoChunkSize(chunkSize))
					throw new DadiError(
						"USAGE",
						`--chunk-size ${chunkSize}: must be a power of two from 4k to 1M`,
					);
				const sealId = opts.sealId ? parseSealId(opts.sealId) : undefined;
				const baseRef = opts.base ? parseReference(opts.base) : undefined;
				if (baseRef && baseRef.transport !== "oci")
					throw new DadiError(
						"USAGE",
						`--base "${opts.base}": must be oci:DIR[:TAG]`,
					);
				const key = await readKeyFile(opts.key);
				const base = baseRef
					? {
							ref: baseRef,
							key: opts.baseKey ? await readKeyFile(opts.baseKey) : key,
						}
					: undefined;
				const progress = new Progress(!opts.quiet);
				const started = performance.now();
				const r = await sealDisk({
					disk: src.path,
					dest,
					key,
					keyRef: opts.keyRef,
					chunkSize,
					compression: opts.compress as CompressionName,
					base,
					sealId,
					onProgress: (phase, d, t) => progress.update(phase, d, t),
				});
				progress.done();
				const seconds = (performance.now() - started) / 1000;
				const out = {
					ok: true,
					manifest: r.manifest.digest,
					tag: dest.tag ?? "latest",
					layers: r.config.layers.length,
					reusedLayers: r.reusedLayers,
					newLayer: {
						digest: r.layer.digest,
						storedBytes: r.layer.size,
						storedChunks: r.layer.storedChunks,
						zeroChunks: r.layer.zeroChunks,
					},
					virtualSize: r.virtualSize,
					chunkSize: r.config.chunkSize,
					seconds,
				};
				if (opts.json) printJson(out);
				else
					process.stdout.write(
						`sealed ${srcText} (${formatBytes(r.virtualSize)}) into ${destText} as layer ${r.config.layers.length} of ${r.config.layers.length}\n` +
							`  manifest ${r.manifest.digest}\n` +
							`  stored ${formatBytes(r.layer.size)} in ${r.layer.storedChunks} chunks (+${r.layer.zeroChunks} zero chunks), chunk size ${formatBytes(r.config.chunkSize)}, ${seconds.toFixed(2)} s\n`,
					);
			}),
		);
}
