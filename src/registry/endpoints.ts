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
import { type PushOutcome, pushBlob } from "./blob-upload.js";
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
	putBlob(
		desc: Descriptor,
		source: ImageEndpoint,
		onProgress?: (bytes: number) => void,
	): Promise<PushOutcome>;
	/** Stores a manifest; `tag` names it when given. */
	putManifest(desc: Descriptor, bytes: Buffer, tag?: string): Promise<void>;
	/** The tag a destination reference names, if any. */
	readonly tag?: string;
}

export class LayoutEndpoint implements ImageEndpoint {
	readonly name: string;

	private constructor(
		readonly layout: OciLayout,
		readonly ref: { tag?: string; digest?: string },
	) {
		this.name = `oci:${layout.dir}`;
	}

	static async source(ref: {
		dir: string;
		tag?: string;
		digest?: string;
	}): Promise<LayoutEndpoint> {
		return new LayoutEndpoint(await OciLayout.open(ref.dir), ref);
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

	async putBlob(
		desc: Descriptor,
		source: ImageEndpoint,
		onProgress?: (bytes: number) => void,
	): Promise<PushOutcome> {
		if (await this.layout.hasBlob(desc)) return "exists";
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
		return "uploaded";
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

	putBlob(
		desc: Descriptor,
		source: ImageEndpoint,
		onProgress?: (bytes: number) => void,
	): Promise<PushOutcome> {
		const sameRegistry =
			source instanceof RegistryEndpoint &&
			source.ref.registry === this.ref.registry;
		return pushBlob(
			this.client,
			this.ref.repository,
			desc,
			() => source.blob(desc),
			{
				mountFrom: sameRegistry ? [source.ref.repository] : [],
				chunkSize: this.chunkSize,
				onProgress,
			},
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
