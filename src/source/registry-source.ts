/**
 * Ordinary images in a registry, as a seal source: the image for the wanted platform is pulled
 * (every blob checked against its digest) into a private staging layout, which the sealer then
 * reads like any OCI layout (it reads layers more than once). The staging copy is removed on close
 * and on SIGINT/SIGTERM.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromSystemError } from "../errors.js";
import {
	type DockerReference,
	formatDockerReference,
} from "../oci/docker-reference.js";
import type { OnProgress } from "../progress.js";
import {
	RegistryClient,
	type RegistryClientOptions,
} from "../registry/client.js";
import { copyImage } from "../registry/copy.js";
import { LayoutEndpoint, RegistryEndpoint } from "../registry/endpoints.js";
import { trackTemp, untrackTemp } from "../temp-files.js";
import type { Platform, SourceImage } from "./image-source.js";
import { openOciLayoutImage } from "./oci-layout-source.js";

export interface RegistrySourceOptions {
	registry?: RegistryClientOptions;
	workDir?: string;
	onProgress?: OnProgress;
}

export async function openRegistryImage(
	ref: DockerReference,
	platform: Platform,
	o: RegistrySourceOptions = {},
): Promise<SourceImage> {
	let staging: string;
	try {
		staging = await mkdtemp(join(o.workDir ?? tmpdir(), "dadi-pull-"));
	} catch (e) {
		throw fromSystemError(
			e,
			o.workDir ?? tmpdir(),
			"creating a staging directory",
		);
	}
	trackTemp(staging);
	const cleanup = async () => {
		await rm(staging, { recursive: true, force: true });
		untrackTemp(staging);
	};
	const client = new RegistryClient(ref.registry, o.registry);
	try {
		const r = await copyImage(
			new RegistryEndpoint(client, ref),
			await LayoutEndpoint.destination({ dir: staging }),
			{
				platform,
				tag: "source",
				phase: "pulling",
				onProgress: o.onProgress,
			},
		);
		const image = await openOciLayoutImage(
			{ transport: "oci", dir: staging, tag: "source" },
			platform,
		);
		return {
			...image,
			description: formatDockerReference({ ...ref, digest: r.manifest.digest }),
			close: async () => {
				await image.close();
				await cleanup();
			},
		};
	} catch (e) {
		await cleanup();
		throw e;
	} finally {
		await client.close();
	}
}
