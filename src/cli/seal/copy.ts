/** `dadi-seal copy SRC DEST`: move an image between OCI layouts and registries. */
import type { Command } from "commander";
import { DadiError } from "../../errors.js";
import { copyTrace, storeOfEndpoint } from "../../image/trace-referrer.js";
import { MT_OCI_MANIFEST } from "../../oci/media-types.js";
import {
	formatReference,
	parseReference,
	type Reference,
} from "../../oci/reference.js";
import { RegistryClient } from "../../registry/client.js";
import { type CopyResult, copyImage } from "../../registry/copy.js";
import {
	type ImageEndpoint,
	LayoutEndpoint,
	RegistryEndpoint,
} from "../../registry/endpoints.js";
import { parsePlatform } from "../../source/platform.js";
import { formatBytes, printJson, runAction } from "../common.js";
import { Progress } from "../progress.js";
import {
	addRegistryOptions,
	type RegistryFlags,
	registryClientOptions,
} from "../registry-options.js";

/** The start-up trace referrer copied along with an image. */
export interface CopiedTrace {
	artifact: string;
	bytes: number;
}

export interface OpenEndpoint {
	endpoint: ImageEndpoint;
	close(): Promise<void>;
}

/** An endpoint for an oci: or docker:// reference. */
export async function openEndpoint(
	ref: Reference,
	role: "source" | "destination",
	flags: RegistryFlags,
	text: string,
): Promise<OpenEndpoint> {
	if (ref.transport === "oci") {
		const endpoint =
			role === "source"
				? await LayoutEndpoint.source(ref)
				: await LayoutEndpoint.destination(ref);
		return { endpoint, close: async () => {} };
	}
	if (ref.transport === "docker") {
		const client = new RegistryClient(
			ref.registry,
			await registryClientOptions(ref, flags),
		);
		return {
			endpoint: new RegistryEndpoint(client, ref),
			close: () => client.close(),
		};
	}
	throw new DadiError(
		"USAGE",
		`"${text}": copy reads and writes oci:DIR[:TAG] and docker://HOST/REPO[:TAG]`,
	);
}

/** Copies with progress; both endpoints closed afterwards. */
export async function copyBetween(
	src: Reference,
	dest: Reference,
	flags: RegistryFlags & { platform?: string; quiet?: boolean; json?: boolean },
	texts: [string, string],
): Promise<CopyResult & { trace?: CopiedTrace }> {
	const from = await openEndpoint(src, "source", flags, texts[0]);
	try {
		const to = await openEndpoint(dest, "destination", flags, texts[1]);
		try {
			const progress = new Progress(!flags.quiet, Boolean(flags.json));
			let r: CopyResult;
			try {
				r = await copyImage(from.endpoint, to.endpoint, {
					platform: flags.platform ? parsePlatform(flags.platform) : undefined,
					onProgress: (e) => progress.report(e),
				});
			} finally {
				progress.done();
			}
			// The image's start-up trace (a referrer of its manifest) goes along, still sealed: the
			// manifest digest it is bound to is the same at the destination.
			const fromStore = storeOfEndpoint(from.endpoint);
			const toStore = storeOfEndpoint(to.endpoint);
			const trace =
				fromStore && toStore && r.manifest.mediaType === MT_OCI_MANIFEST
					? await copyTrace(fromStore, toStore, r.manifest.digest)
					: undefined;
			return trace
				? {
						...r,
						trace: { artifact: trace.manifest.digest, bytes: trace.bytes },
					}
				: r;
		} finally {
			await to.close();
		}
	} finally {
		await from.close();
	}
}

export function copyCommand(program: Command): void {
	const c = program
		.command("copy")
		.description(
			"copy an image (sealed or not) between OCI layouts and registries: blobs that exist are skipped, blobs in another repository of the same registry are mounted",
		)
		.argument(
			"<SRC>",
			"oci:DIR[:TAG|@DIGEST] or docker://HOST/REPO[:TAG|@DIGEST]",
		)
		.argument("<DEST>", "oci:DIR[:TAG] or docker://HOST/REPO[:TAG]")
		.option(
			"--platform <OS/ARCH>",
			"from a multi-platform index, copy only this platform's image",
		)
		.option("--json", "print the result as JSON")
		.option("--quiet", "no progress on stderr");
	addRegistryOptions(c).action(
		async (
			srcText: string,
			destText: string,
			opts: RegistryFlags & {
				platform?: string;
				json?: boolean;
				quiet?: boolean;
			},
		) =>
			runAction("dadi-seal copy", Boolean(opts.json), async () => {
				const src = parseReference(srcText);
				const dest = parseReference(destText);
				if (dest.transport === "docker" && dest.digest)
					throw new DadiError(
						"USAGE",
						`destination "${destText}": name a tag, not a digest (the digest follows from the bytes)`,
					);
				const started = performance.now();
				const r = await copyBetween(src, dest, opts, [srcText, destText]);
				const seconds = (performance.now() - started) / 1000;
				if (opts.json)
					printJson({
						ok: true,
						source: srcText,
						destination: formatReference(dest),
						manifest: r.manifest,
						blobs: r.blobs,
						bytesCopied: r.bytesCopied,
						totalBytes: r.totalBytes,
						trace: r.trace ?? null,
						seconds,
					});
				else
					process.stdout.write(
						`copied ${srcText} to ${destText} (${r.manifest.digest}): ${r.blobs.uploaded} blobs copied (${formatBytes(r.bytesCopied)}), ${r.blobs.exists} already there, ${r.blobs.mounted} mounted${r.trace ? `, start-up trace ${r.trace.artifact.slice(0, 19)}… copied along` : ""}, ${seconds.toFixed(2)} s\n`,
					);
			}),
	);
}
