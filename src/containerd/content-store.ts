/**
 * Putting a blob into containerd's content store with its labels, as containerd's pull does: a
 * blob containerd lacks is written (content-write.ts) with its labels; one it has (or that another
 * pull stored meanwhile) only gets the labels. Either way the blob's distribution-source label
 * gains the repository it came from (merged with what the label already says).
 */
import type { Descriptor } from "../oci/digest.js";
import type { ContainerdClient } from "./client.js";
import { writeBlob } from "./content-write.js";
import {
	appendDistributionSource,
	distributionSourceKey,
	labelFits,
} from "./labels.js";

export interface BlobOrigin {
	/** The registry as named (host[:port]). */
	registry: string;
	repository: string;
}

export class ContentStore {
	readonly #key: string;

	constructor(
		readonly client: ContainerdClient,
		readonly origin: BlobOrigin,
		readonly warn?: (line: string) => void,
	) {
		this.#key = distributionSourceKey(origin.registry);
	}

	/** `labels` plus the distribution source merged into the blob's current labels. */
	#withSource(
		labels: Record<string, string>,
		current: Record<string, string> | undefined,
	): Record<string, string> {
		const value = appendDistributionSource(
			current?.[this.#key],
			this.origin.repository,
		);
		if (labelFits(this.#key, value)) return { ...labels, [this.#key]: value };
		// containerd skips the label too (with a warning) rather than fail the pull.
		this.warn?.(
			`not labelling the blob's source: ${this.#key}=${value.slice(0, 40)}… is over containerd's label limit`,
		);
		return labels;
	}

	/**
	 * Stores the blob `kind` ("index", "manifest", "config", "layer": its ingest's name) unless
	 * containerd has it, and labels it; the bytes written (0 when it was there).
	 */
	async put(
		kind: string,
		desc: Descriptor,
		labels: Record<string, string>,
		open: () => AsyncIterable<Buffer> | Promise<AsyncIterable<Buffer>>,
		onBytes?: (n: number) => void,
	): Promise<number> {
		const c = this.client;
		// Held under our lease before we look: a blob that is there now (another pull's, its lease
		// released) cannot then be collected between here and the image record. containerd keeps a
		// lease reference to content it does not have yet as well.
		await c.leaseAddContent(desc.digest);
		const have = await c.contentInfo(desc.digest);
		if (!have) {
			let written = 0;
			const r = await writeBlob(c, {
				ref: `${kind}-${desc.digest}`,
				desc,
				labels: this.#withSource(labels, undefined),
				open,
				onProgress: (n) => {
					written = n;
					onBytes?.(n);
				},
			});
			if (r === "written") return written;
		}
		const now = have ?? (await c.contentInfo(desc.digest));
		await c.contentLabel(desc.digest, this.#withSource(labels, now?.labels));
		return 0;
	}

	/** A small document held in memory (an index, a manifest, a config). */
	putBytes(
		kind: string,
		desc: Descriptor,
		labels: Record<string, string>,
		bytes: Buffer,
	): Promise<number> {
		return this.put(kind, desc, labels, async function* () {
			yield bytes;
		});
	}
}
