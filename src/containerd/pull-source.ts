/**
 * Where a pull reads an image from: a registry repository through dadi's distribution client
 * (src/registry: authorization, retries, timeouts, TLS). Manifests and the config are checked
 * against their digests by the client; layer blobs are streamed (and hashed by the writer).
 */
import type { Descriptor } from "../oci/digest.js";
import {
	type DockerReference,
	manifestReference,
} from "../oci/docker-reference.js";
import { blobStream } from "../registry/blob-download.js";
import type { RegistryClient } from "../registry/client.js";

export interface PullSource {
	/** For messages: "docker://HOST/REPO". */
	readonly name: string;
	/** The manifest or index the reference names. */
	top(): Promise<{ descriptor: Descriptor; bytes: Buffer }>;
	/** A manifest or index by digest. */
	manifest(desc: Descriptor): Promise<Buffer>;
	/** A small blob (the config), whole. */
	config(desc: Descriptor): Promise<Buffer>;
	/** A layer blob from its first byte. */
	blob(desc: Descriptor): AsyncIterable<Buffer>;
}

export function registrySource(
	client: RegistryClient,
	ref: DockerReference,
): PullSource {
	const repo = ref.repository;
	return {
		name: `docker://${ref.registry}/${repo}`,
		top: () => client.getManifest(repo, manifestReference(ref)),
		manifest: async (d) => (await client.getManifest(repo, d.digest)).bytes,
		config: (d) => client.readBlob(repo, d),
		blob: (d) => blobStream(client, repo, d),
	};
}
