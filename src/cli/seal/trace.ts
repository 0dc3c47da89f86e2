/**
 * `dadi-seal trace attach IMAGE --trace FILE` and `dadi-seal trace show IMAGE`: a start-up trace
 * (recorded by `dadi-guest serve --record-trace`) sealed under the image key, bound to the image
 * manifest, and stored as an OCI referrer of it (docs/format.md §10), in a registry or a layout.
 */
import type { Command } from "commander";
import { openTrace, sealTrace } from "../../crypto/trace-seal.js";
import { DadiError, fromSystemError } from "../../errors.js";
import { chunkCountOf } from "../../format/constants.js";
import {
	checkTraceFits,
	decodeTrace,
	encodeTrace,
	MAX_TRACE_BYTES,
	type TraceEntry,
	traceSummary,
} from "../../format/trace.js";
import { traceBindingOf } from "../../guest/trace-replay.js";
import {
	authenticateConfig,
	loadSealedImage,
	type SealedImageRef,
} from "../../image/open-image.js";
import {
	attachTrace,
	findTrace,
	LayoutReferrerStore,
	type ReferrerStore,
	RegistryReferrerStore,
	referrersTag,
} from "../../image/trace-referrer.js";
import { fetchSealedImage } from "../../lazy/open-remote.js";
import { parseReference } from "../../oci/reference.js";
import { readRegularFile } from "../../read-regular-file.js";
import { RegistryClient } from "../../registry/client.js";
import { printJson, readKeyFile, runAction } from "../common.js";
import {
	addRegistryOptions,
	type RegistryFlags,
	registryClientOptions,
} from "../registry-options.js";

interface TraceFlags extends RegistryFlags {
	key: string;
	trace?: string;
	json?: boolean;
}

/** The image (manifest and config checked) and where its referrers are; `close` when done. */
async function openTarget(
	text: string,
	flags: RegistryFlags,
): Promise<{
	image: SealedImageRef;
	store: ReferrerStore;
	name: string;
	close: () => Promise<void>;
}> {
	const ref = parseReference(text);
	if (ref.transport === "oci") {
		const image = await loadSealedImage(ref);
		if (!image.layout) throw new DadiError("INTERNAL", "no layout");
		return {
			image,
			store: new LayoutReferrerStore(image.layout),
			name: `oci:${ref.dir}@${image.manifestDesc.digest}`,
			close: async () => {},
		};
	}
	if (ref.transport !== "docker")
		throw new DadiError(
			"USAGE",
			`"${text}": a sealed image is named as oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]`,
		);
	const client = new RegistryClient(
		ref.registry,
		await registryClientOptions(ref, flags),
	);
	try {
		const image = await fetchSealedImage(client, ref);
		return {
			image,
			store: new RegistryReferrerStore(client, ref.repository),
			name: image.name,
			close: () => client.close(),
		};
	} catch (e) {
		await client.close();
		throw e;
	}
}

/** The number of chunks of the image's (whole) virtual disk. */
function imageChunks(image: SealedImageRef): number {
	const top = image.config.layers[image.config.layers.length - 1];
	return top ? chunkCountOf(top.virtualSize, image.config.chunkSize) : 0;
}

async function readTraceFile(path: string): Promise<TraceEntry[]> {
	let bytes: Buffer;
	try {
		bytes = await readRegularFile(path, MAX_TRACE_BYTES, "the trace file");
	} catch (e) {
		throw fromSystemError(e, path, "reading the trace file");
	}
	return decodeTrace(bytes);
}

export function traceCommand(program: Command): void {
	const trace = program
		.command("trace")
		.description(
			"start-up traces (dadi-guest serve --record-trace): attach one to an image, sealed under the image key, as an OCI referrer; show the one attached",
		);
	const attach = trace
		.command("attach")
		.description(
			"seal a recorded start-up trace under the image key, bound to this image's manifest, and attach it as a referrer (replacing an earlier trace, keeping other referrers)",
		)
		.argument("<IMAGE>", "oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]")
		.requiredOption("--key <KEYFILE>", "the image key")
		.requiredOption(
			"--trace <FILE>",
			"the plaintext trace written by dadi-guest serve --record-trace",
		)
		.option("--json", "print the result as JSON");
	addRegistryOptions(attach).action(async (text: string, opts: TraceFlags) =>
		runAction("dadi-seal trace attach", Boolean(opts.json), async () => {
			const entries = await readTraceFile(opts.trace as string);
			const key = await readKeyFile(opts.key, "open");
			const t = await openTarget(text, opts);
			try {
				authenticateConfig(t.image, key);
				checkTraceFits(
					entries,
					t.image.config.layers.length,
					imageChunks(t.image),
				);
				const sealed = sealTrace(
					key.key,
					traceBindingOf(t.image),
					encodeTrace(entries),
				);
				const r = await attachTrace(t.store, t.image.manifestDesc, sealed);
				const out = {
					ok: true,
					image: t.name,
					subject: t.image.manifestDesc.digest,
					tag: referrersTag(t.image.manifestDesc.digest),
					artifact: r.manifest.digest,
					sealedBytes: sealed.length,
					entries: entries.length,
					replaced: r.replaced,
				};
				if (opts.json) printJson(out);
				else
					process.stdout.write(
						`attached a start-up trace (${entries.length} chunks, ${sealed.length} bytes sealed) to ${t.name} as ${r.manifest.digest.slice(0, 19)}… (referrers tag ${out.tag}${r.replaced ? `, replacing ${r.replaced} earlier trace` : ""})\n`,
					);
			} finally {
				await t.close();
			}
		}),
	);
	const show = trace
		.command("show")
		.description(
			"decrypt and check the start-up trace attached to an image and print a summary",
		)
		.argument("<IMAGE>", "oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]")
		.requiredOption("--key <KEYFILE>", "the image key")
		.option("--json", "print the summary as JSON");
	addRegistryOptions(show).action(async (text: string, opts: TraceFlags) =>
		runAction("dadi-seal trace show", Boolean(opts.json), async () => {
			const key = await readKeyFile(opts.key, "open");
			const t = await openTarget(text, opts);
			try {
				authenticateConfig(t.image, key);
				const found = await findTrace(t.store, t.image.manifestDesc.digest);
				if (!found)
					throw new DadiError(
						"INPUT_NOT_FOUND",
						`${t.name}: no start-up trace attached (dadi-seal trace attach)`,
					);
				const entries = decodeTrace(
					openTrace(key.key, traceBindingOf(t.image), found.sealed),
				);
				checkTraceFits(
					entries,
					t.image.config.layers.length,
					imageChunks(t.image),
				);
				const s = traceSummary(entries);
				const out = {
					ok: true,
					image: t.name,
					subject: t.image.manifestDesc.digest,
					artifact: found.manifest.digest,
					sealedBytes: found.sealed.length,
					...s,
				};
				if (opts.json) printJson(out);
				else
					process.stdout.write(
						`${[
							`image     ${t.name}`,
							`trace     ${found.manifest.digest} (${found.sealed.length} bytes sealed, authentic)`,
							`entries   ${s.entries} chunks, first reads over ${s.lastMs} ms`,
							`layers    ${
								Object.entries(s.perLayer)
									.map(([l, n]) => `${Number(l) + 1}: ${n}`)
									.join(", ") || "none"
							} (bottom first, from 1)`,
						].join("\n")}\n`,
					);
			} finally {
				await t.close();
			}
		}),
	);
}
