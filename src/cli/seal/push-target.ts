/**
 * A `docker://` destination of `seal`: checked before anything is sealed (reachable, TLS or plain
 * HTTP as asked, credentials, push permission), then, once the image is sealed into the staging
 * layout, pushed from it — blobs the registry has are skipped, blobs of a registry base mounted
 * from their repository, the rest uploaded, the manifest last.
 */
import type { DockerReference } from "../../oci/docker-reference.js";
import type { OnProgress } from "../../progress.js";
import { RegistryClient } from "../../registry/client.js";
import { copyImage } from "../../registry/copy.js";
import {
	type BlobOrigin,
	LayoutEndpoint,
	RegistryEndpoint,
} from "../../registry/endpoints.js";
import { checkPushAccess } from "../../registry/push-check.js";
import type { RegistryFlags } from "../registry-options.js";
import { registryClientOptions } from "../registry-options.js";
import type { PushReport } from "./seal-report.js";

export class PushTarget {
	private constructor(
		readonly ref: DockerReference,
		readonly text: string,
		private readonly client: RegistryClient,
	) {}

	static async open(
		ref: DockerReference,
		text: string,
		flags: RegistryFlags,
	): Promise<PushTarget> {
		const client = new RegistryClient(
			ref.registry,
			await registryClientOptions(ref, flags),
		);
		return new PushTarget(ref, text, client);
	}

	/** Fails (NETWORK, REMOTE_DENIED, REMOTE_PROTOCOL) when the image could not be pushed. */
	async check(onProgress?: OnProgress): Promise<void> {
		onProgress?.({
			phase: `checking push access to ${this.text}`,
			done: 0,
			total: 0,
		});
		await checkPushAccess(this.client, this.ref.repository);
	}

	/** Pushes the image tagged `tag` in the layout `dir`. */
	async push(
		dir: string,
		tag: string,
		origins: ReadonlyMap<string, BlobOrigin>,
		onProgress?: OnProgress,
	): Promise<PushReport> {
		const r = await copyImage(
			await LayoutEndpoint.source({ dir, tag }, origins),
			new RegistryEndpoint(this.client, this.ref),
			{ phase: "pushing", onProgress },
		);
		return {
			pushed: this.text,
			blobs: r.blobs,
			bytesUploaded: r.bytesCopied,
		};
	}

	close(): Promise<void> {
		return this.client.close();
	}
}
