/**
 * Resolving what a reference names in the registry down to one image manifest: an index (or a
 * docker manifest list) is narrowed to the entry for the platform, nested indexes too. Every index
 * on the way is kept with its children's garbage-collection labels (all its entries, as containerd
 * labels them before filtering by platform), to be stored in containerd's content store.
 */
import { DadiError } from "../errors.js";
import type { Descriptor } from "../oci/digest.js";
import type { Platform } from "../source/image-source.js";
import { kindOf, parseIndex, selectEntry } from "./image-parts.js";
import { childGcLabels } from "./labels.js";
import type { PullSource } from "./pull-source.js";

/** Indexes inside indexes, at most. */
const MAX_INDEX_DEPTH = 4;

export interface StoredDocument {
	desc: Descriptor;
	bytes: Buffer;
}

export interface Resolved {
	/** What the reference names (the image record's target): the manifest or the top index. */
	top: Descriptor;
	/** Indexes from the top one down, each with the labels naming its children. */
	indexes: (StoredDocument & { labels: Record<string, string> })[];
	manifest: StoredDocument;
	/** Bytes fetched. */
	downloaded: number;
}

const bare = (d: Descriptor): Descriptor => ({
	mediaType: d.mediaType,
	digest: d.digest,
	size: d.size,
});

export async function resolveImage(
	source: PullSource,
	platform: Platform,
	what: string,
): Promise<Resolved> {
	const first = await source.top();
	let desc = bare(first.descriptor);
	let bytes = first.bytes;
	let downloaded = bytes.length;
	const indexes: Resolved["indexes"] = [];
	for (let depth = 0; kindOf(desc.mediaType, what) === "index"; depth++) {
		if (depth >= MAX_INDEX_DEPTH)
			throw new DadiError("LAYOUT_INVALID", `${what}: indexes nested too deep`);
		const entries = parseIndex(bytes, `${what}: index ${desc.digest}`);
		indexes.push({
			desc,
			bytes,
			labels: childGcLabels(entries.map((e) => e.descriptor)),
		});
		desc = bare(selectEntry(entries, platform, what));
		bytes = await source.manifest(desc);
		downloaded += bytes.length;
	}
	return {
		top: bare(first.descriptor),
		indexes,
		manifest: { desc, bytes },
		downloaded,
	};
}
