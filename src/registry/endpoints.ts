/**
 * The two places an image can be copied from or to: an OCI image layout and a registry
 * repository. Both read blobs as streams and accept blobs from streams; copy.ts moves images
 * between any two.
 */
import { createReadStream } from "node:fs";
import { Readable } from "node:stream";
import { DadiError } from "../errors.js";
import type { Descriptor } from "../oci/digest.js";
import type { DockerReference } from "../oci/docker-reference.js";
import { OciLayout } from "../oci/layout.js";
import { blobStream } from "./blob-download.js";
import { placeBlob, uploadBlob } from "./blob-upload.js";
import { MANIFEST_TYPES, type RegistryClient } from "./client.js";

export interface ImageEndpoint {
	/** For messages. */
	readonly name: string;
	/** The manifest or index the reference names, checked against its digest. */
	top(): Promise<{ descriptor: Descriptor; bytes: Buffer }>;
	/** A manifest (or index) by digest, checked. */
	manifest(desc: Descriptor): Promise<Buffer>;
	/** A blob's bytes from the start (the receiver checks the digest). */
	blob(desc: Descriptor): Promise<Readable>;
	hasBlob(desc: Descriptor): Promise<boolean>;
	/**
	 * Makes this endpoint hold the blob without moving its bytes when it can: "exists" when it has
	 * it, "mounted" when a registry mounted it from the repository `source` names for it;
	 * undefined when the bytes must be written.
	 */
	placeBlob(
		desc: Descriptor,
		source: ImageEndpoint,
	): Promise<"exists" | "mounted" | undefined>;
	/** Writes the blob's bytes from `source`; `onProgress` gets the bytes stored so far. */
	writeBlob(
		desc: Descriptor,
		source: ImageEndpoint,
		onProgress?: (bytes: number) => void,
	): Promise<void>;
	/** A registry repository the blob can be mounted from, when it is in one. */
	blobOrigin(desc: Descriptor): BlobOrigin | undefined;
	/** Stores a manifest; `tag` names it when given. */
	putManifest(desc: Descriptor, bytes: Buffer, tag?: string): Promise<void>;
	/** The tag a destination reference names, if any. */
	readonly tag?: string;
}

/** A repository of a registry: where a blob can be mounted from. */
export interface BlobOrigin {
	registry: string;
	repository: string;
}

export class LayoutEndpoint implements ImageEndpoint {
	readonly name: string;

	private constructor(
		readonly layout: OciLayout,
		readonly ref: { tag?: string; digest?: string },
		/** Blobs (by digest) that were copied into the layout from a registry repository. */
		readonly origins: ReadonlyMap<string, BlobOrigin> = new Map(),
	) {
		this.name = `oci:${layout.dir}`;
	}

	static async source(
		ref: {
			dir: string;
			tag?: string;
			digest?: string;
		},
		origins?: ReadonlyMap<string, BlobOrigin>,
	): Promise<LayoutEndpoint> {
		return new LayoutEndpoint(await OciLayout.open(ref.dir), ref, origins);
	}

	static async destination(ref: {
		dir: string;
		tag?: string;
		digest?: string;
	}): Promise<LayoutEndpoint> {
		return new LayoutEndpoint(await OciLayout.openOrCreate(ref.dir), ref);
	}

	get tag(): string | undefined {
		return this.ref.tag;
	}

	async top(): Promise<{ descriptor: Descriptor; bytes: Buffer }> {
		const d = await this.layout.resolve(this.ref);
		const bytes = await this.layout.readBlob(d, "manifest");
		const { annotations: _a, ...descriptor } = d;
		return { descriptor, bytes };
	}

	manifest(desc: Descriptor): Promise<Buffer> {
		return this.layout.readBlob(desc, "manifest");
	}

	async blob(desc: Descriptor): Promise<Readable> {
		return createReadStream(this.layout.blobPath(desc.digest), {
			highWaterMark: 1 << 20,
		});
	}

	hasBlob(desc: Descriptor): Promise<boolean> {
		return this.layout.hasBlob(desc);
	}

	blobOrigin(desc: Descriptor): BlobOrigin | undefined {
		return this.origins.get(desc.digest);
	}

	async placeBlob(desc: Descriptor): Promise<"exists" | undefined> {
		return (await this.layout.hasBlob(desc)) ? "exists" : undefined;
	}

	async writeBlob(
		desc: Descriptor,
		source: ImageEndpoint,
		onProgress?: (bytes: number) => void,
	): Promise<void> {
		const w = await this.layout.createBlobWriter();
		let n = 0;
		try {
			for await (const chunk of await source.blob(desc)) {
				await w.write(chunk as Buffer);
				n += (chunk as Buffer).length;
				onProgress?.(n);
			}
		} catch (e) {
			await w.abort();
			throw e;
		}
		if (n !== desc.size) {
			await w.abort();
			throw new DadiError(
				"DIGEST_MISMATCH",
				`blob ${desc.digest} from ${source.name}: ${n} bytes, the descriptor says ${desc.size}`,
			);
		}
		const got = await w.commit(desc.mediaType);
		if (got.digest !== desc.digest)
			throw new DadiError(
				"DIGEST_MISMATCH",
				`blob ${desc.digest} from ${source.name}: the bytes received hash to ${got.digest}`,
			);
	}

	async putManifest(
		desc: Descriptor,
		bytes: Buffer,
		tag?: string,
	): Promise<void> {
		const stored = await this.layout.writeBlob(bytes, desc.mediaType);
		if (stored.digest !== desc.digest)
			throw new DadiError("INTERNAL", "manifest bytes changed while copying");
		if (tag) await this.layout.setTag(tag, stored);
	}
}

export class RegistryEndpoint implements ImageEndpoint {
	readonly name: string;

	constructor(
		readonly client: RegistryClient,
		readonly ref: DockerReference,
		/** Upload chunk size (tests); monolithic below it. */
		readonly chunkSize?: number,
	) {
		this.name = `docker://${ref.registry}/${ref.repository}`;
	}

	get tag(): string | undefined {
		return this.ref.digest ? undefined : (this.ref.tag ?? "latest");
	}

	top(): Promise<{ descriptor: Descriptor; bytes: Buffer }> {
		return this.client.getManifest(
			this.ref.repository,
			this.ref.digest ?? this.ref.tag ?? "latest",
		);
	}

	async manifest(desc: Descriptor): Promise<Buffer> {
		const r = await this.client.getManifest(
			this.ref.repository,
			desc.digest,
			MANIFEST_TYPES,
		);
		return r.bytes;
	}

	async blob(desc: Descriptor): Promise<Readable> {
		return Readable.from(blobStream(this.client, this.ref.repository, desc));
	}

	hasBlob(desc: Descriptor): Promise<boolean> {
		return this.client.hasBlob(this.ref.repository, desc);
	}

	blobOrigin(): BlobOrigin {
		return { registry: this.ref.registry, repository: this.ref.repository };
	}

	placeBlob(
		desc: Descriptor,
		source: ImageEndpoint,
	): Promise<"exists" | "mounted" | undefined> {
		const origin = source.blobOrigin(desc);
		return placeBlob(
			this.client,
			this.ref.repository,
			desc,
			origin && origin.registry === this.ref.registry
				? [origin.repository]
				: [],
		);
	}

	writeBlob(
		desc: Descriptor,
		source: ImageEndpoint,
		onProgress?: (bytes: number) => void,
	): Promise<void> {
		return uploadBlob(
			this.client,
			this.ref.repository,
			desc,
			() => source.blob(desc),
			{ chunkSize: this.chunkSize, onProgress },
		);
	}

	async putManifest(
		desc: Descriptor,
		bytes: Buffer,
		tag?: string,
	): Promise<void> {
		await this.client.putManifest(
			this.ref.repository,
			tag ?? desc.digest,
			bytes,
			desc.mediaType,
		);
	}
}
