import type { Command } from "commander";
import { DadiError } from "../../errors.js";
import { summarize } from "../../image/inspect.js";
import { loadSealedImage } from "../../image/open-image.js";
import { loadRemoteSealedImage } from "../../lazy/open-remote.js";
import { parseReference } from "../../oci/reference.js";
import { formatPlatform } from "../../source/platform.js";
import { formatBytes, printJson, runAction } from "../common.js";
import {
	addRegistryOptions,
	type RegistryFlags,
	registryClientOptions,
} from "../registry-options.js";

export function inspectCommand(program: Command): void {
	const c = program
		.command("inspect")
		.description(
			"show what anyone without the key (registry, host, network) sees of a sealed image: platform, public config, layers, sizes, chunk counts, the encrypted records' sizes",
		)
		.argument(
			"<REF>",
			"oci:DIR[:TAG], oci:DIR@sha256:… or docker://HOST/REPO[:TAG|@DIGEST]",
		)
		.option("--json", "print as JSON");
	addRegistryOptions(c).action(
		async (refText: string, opts: RegistryFlags & { json?: boolean }) =>
			runAction("dadi-seal inspect", Boolean(opts.json), async () => {
				const ref = parseReference(refText);
				if (ref.transport !== "oci" && ref.transport !== "docker")
					throw new DadiError(
						"USAGE",
						`"${refText}": inspect reads oci:DIR[:TAG] or docker://HOST/REPO[:TAG]`,
					);
				const s = summarize(
					ref.transport === "docker"
						? await loadRemoteSealedImage(
								ref,
								await registryClientOptions(ref, opts),
							)
						: await loadSealedImage(ref),
				);
				if (opts.json) {
					printJson({ ok: true, ...s });
					return;
				}
				const labels = s.publicLabels ? JSON.stringify(s.publicLabels) : "none";
				const lines = [
					`image     ${refText}`,
					`manifest  ${s.manifestDigest}`,
					`format    dadi v${s.formatVersion}: public OCI image config ${s.configDigest.slice(0, 19)}…, sealed config in its "${s.sealedMember}" member`,
					`platform  ${formatPlatform(s.platform)}`,
					`public    entrypoint ${s.entrypoint}; labels: ${labels}; no env, command, history or creation time`,
					`disk      ${formatBytes(s.virtualSize)} (${s.virtualSize} bytes), ${s.fsType}, chunk size ${formatBytes(s.chunkSize)}`,
					`crypto    ${s.suite}, key ${s.keyId} at ${s.keyRef}`,
					`sealed    seal id ${s.sealId}; encrypted: image config ${s.hasImageConfig ? `${s.encrypted.imageConfigBytes} bytes` : "none"}, seal parameters ${s.encrypted.sealParamsBytes ? `${s.encrypted.sealParamsBytes} bytes` : "none"}`,
					`stored    ${formatBytes(s.storedBytes)} in ${s.layers.length} layer(s), ${((s.storedBytes / s.virtualSize) * 100).toFixed(1)}% of the virtual size`,
					"layers (bottom first, from 1):",
					...s.layers.map(
						(l, i) =>
							`  ${i + 1}  ${l.digest.slice(0, 19)}…  ${formatBytes(l.size).padStart(10)}  ${String(l.storedChunks).padStart(8)} stored  ${String(l.zeroChunks).padStart(6)} zero  ${l.compression}`,
					),
				];
				process.stdout.write(`${lines.join("\n")}\n`);
			}),
	);
}
