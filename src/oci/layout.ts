/**
 * An OCI image layout on disk (oci-layout, index.json, blobs/sha256/…), as skopeo and umoci write
 * it. Every write goes to a temporary name and is renamed into place, so a crash leaves either the
 * old state or the new one; blobs are content-addressed, so a stray complete blob is harmless.
 */
import { createHash, randomBytes } from "node:crypto";
import {
	type FileHandle,
	mkdir,
	open,
	rename,
	rm,
	stat,
} from "node:fs/promises";
import { join } from "node:path";
import { DadiError, fromSystemError } from "../errors.js";
import { readRegularFile } from "../read-regular-file.js";
import { FileSource } from "../storage/source.js";
import { trackTemp, untrackTemp } from "../temp-files.js";
import { checkDigest, type Descriptor, sha256Digest } from "./digest.js";
import {
	ANNOTATION_REF_NAME,
	MT_OCI_INDEX,
	OCI_LAYOUT_VERSION,
} from "./media-types.js";

/** JSON documents (index, manifest, config) larger than this are refused. */
export const MAX_JSON_BLOB = 16 << 20;

interface IndexJson {
	schemaVersion: 2;
	mediaType?: string;
	manifests: Descriptor[];
	annotations?: Record<string, string>;
}

export function parseDescriptor(v: unknown, what: string): Descriptor {
	if (typeof v !== "object" || v === null)
		throw new DadiError("LAYOUT_INVALID", `${what}: not a descriptor object`);
	const o = v as Record<string, unknown>;
	if (typeof o.mediaType !== "string")
		throw new DadiError("LAYOUT_INVALID", `${what}: mediaType missing`);
	const digest = checkDigest(o.digest, `${what} digest`);
	if (typeof o.size !== "number" || !Number.isSafeInteger(o.size) || o.size < 0)
		throw new DadiError(
			"LAYOUT_INVALID",
			`${what}: size is not a non-negative integer`,
		);
	const d: Descriptor = { mediaType: o.mediaType, digest, size: o.size };
	if (o.annotations !== undefined) {
		if (typeof o.annotations !== "object" || o.annotations === null)
			throw new DadiError(
				"LAYOUT_INVALID",
				`${what}: annotations must be an object`,
			);
		const ann: Record<string, string> = {};
		for (const [k, val] of Object.entries(o.annotations)) {
			if (typeof val !== "string")
				throw new DadiError(
					"LAYOUT_INVALID",
					`${what}: annotation ${k} must be a string`,
				);
			ann[k] = val;
		}
		d.annotations = ann;
	}
	if (typeof o.artifactType === "string") d.artifactType = o.artifactType;
	return d;
}

export function parseJson(bytes: Buffer, what: string): unknown {
	try {
		return JSON.parse(bytes.toString("utf8"));
	} catch {
		throw new DadiError("LAYOUT_INVALID", `${what}: not valid JSON`);
	}
}

/** Writes `bytes` to `path` atomically: temporary file in the same directory, fsync, rename. */
export async function writeFileAtomic(
	path: string,
	bytes: Buffer | string,
	mode = 0o644,
): Promise<void> {
	const tmp = `${path}.${randomBytes(6).toString("hex")}.tmp`;
	let fh: FileHandle | undefined;
	trackTemp(tmp);
	try {
		fh = await open(tmp, "wx", mode);
		await fh.writeFile(bytes);
		await fh.sync();
		await fh.close();
		fh = undefined;
		await rename(tmp, path);
	} catch (e) {
		await fh?.close().catch(() => {});
		await rm(tmp, { force: true });
		throw fromSystemError(e, path, "writing");
	} finally {
		untrackTemp(tmp);
	}
}

/** Streams a blob to a temporary file while hashing it; `commit` renames it to its digest. */
export class BlobWriter {
	readonly #hash = createHash("sha256");
	#size = 0;
	#done = false;

	constructor(
		private readonly layout: OciLayout,
		private readonly tmp: string,
		private readonly fh: FileHandle,
	) {}

	async write(bytes: Buffer): Promise<void> {
		this.#hash.update(bytes);
		let off = 0;
		while (off < bytes.length) {
			const { bytesWritten } = await this.fh.write(
				bytes,
				off,
				bytes.length - off,
			);
			off += bytesWritten;
		}
		this.#size += bytes.length;
	}

	async commit(mediaType: string): Promise<Descriptor> {
		const digest = `sha256:${this.#hash.digest("hex")}`;
		this.#done = true;
		try {
			await this.fh.sync();
			await this.fh.close();
			await rename(this.tmp, this.layout.blobPath(digest));
		} catch (e) {
			await this.fh.close().catch(() => {});
			await rm(this.tmp, { force: true });
			throw fromSystemError(e, this.layout.blobPath(digest), "storing a blob");
		} finally {
			untrackTemp(this.tmp);
		}
		return { mediaType, digest, size: this.#size };
	}

	async abort(): Promise<void> {
		if (this.#done) return;
		this.#done = true;
		await this.fh.close().catch(() => {});
		await rm(this.tmp, { force: true });
		untrackTemp(this.tmp);
	}
}

export class OciLayout {
	private constructor(readonly dir: string) {}

	/** Opens an existing layout; INPUT_NOT_FOUND or LAYOUT_INVALID when it is not one. */
	static async open(dir: string): Promise<OciLayout> {
		let marker: Buffer;
		try {
			marker = await readRegularFile(
				join(dir, "oci-layout"),
				4096,
				"the oci-layout file",
				"LAYOUT_INVALID",
			);
		} catch (e) {
			const err = fromSystemError(
				e,
				join(dir, "oci-layout"),
				"opening the OCI image layout",
			);
			if (err.code === "INPUT_NOT_FOUND")
				throw new DadiError(
					"INPUT_NOT_FOUND",
					`${dir}: not an OCI image layout (no oci-layout file)`,
				);
			throw err;
		}
		const m = parseJson(marker, `${dir}/oci-layout`) as {
			imageLayoutVersion?: unknown;
		};
		if (m?.imageLayoutVersion !== OCI_LAYOUT_VERSION)
			throw new DadiError(
				"LAYOUT_INVALID",
				`${dir}/oci-layout: imageLayoutVersion must be "${OCI_LAYOUT_VERSION}"`,
			);
		const layout = new OciLayout(dir);
		await layout.readIndex();
		return layout;
	}

	/** Opens a layout, creating an empty one (atomically) when the directory has none. */
	static async openOrCreate(dir: string): Promise<OciLayout> {
		try {
			await mkdir(join(dir, "blobs", "sha256"), { recursive: true });
		} catch (e) {
			throw fromSystemError(e, dir, "creating the OCI image layout");
		}
		const exists = await stat(join(dir, "oci-layout")).then(
			() => true,
			() => false,
		);
		if (!exists) {
			const hasIndex = await stat(join(dir, "index.json")).then(
				() => true,
				() => false,
			);
			if (hasIndex)
				throw new DadiError(
					"LAYOUT_INVALID",
					`${dir}: has an index.json but no oci-layout file; refusing to overwrite it`,
				);
			const index: IndexJson = {
				schemaVersion: 2,
				mediaType: MT_OCI_INDEX,
				manifests: [],
			};
			await writeFileAtomic(
				join(dir, "index.json"),
				`${JSON.stringify(index)}\n`,
			);
			await writeFileAtomic(
				join(dir, "oci-layout"),
				`${JSON.stringify({ imageLayoutVersion: OCI_LAYOUT_VERSION })}\n`,
			);
		}
		return OciLayout.open(dir);
	}

	blobPath(digest: string): string {
		checkDigest(digest, "blob");
		return join(this.dir, "blobs", "sha256", digest.slice("sha256:".length));
	}

	async readIndex(): Promise<IndexJson> {
		const path = join(this.dir, "index.json");
		let bytes: Buffer;
		try {
			bytes = await readRegularFile(
				path,
				MAX_JSON_BLOB,
				"the layout index",
				"LAYOUT_INVALID",
			);
		} catch (e) {
			throw fromSystemError(e, path, "reading the layout index");
		}
		const o = parseJson(bytes, path) as Record<string, unknown>;
		if (o?.schemaVersion !== 2 || !Array.isArray(o.manifests))
			throw new DadiError(
				"LAYOUT_INVALID",
				`${path}: not an OCI image index (schemaVersion 2 with manifests)`,
			);
		const manifests = o.manifests.map((m, i) =>
			parseDescriptor(m, `${path}: manifests[${i}]`),
		);
		return { ...(o as object), schemaVersion: 2, manifests } as IndexJson;
	}

	/** The manifest descriptor a tag or digest names; without either, the only manifest. */
	async resolve(ref: { tag?: string; digest?: string }): Promise<Descriptor> {
		const { manifests } = await this.readIndex();
		if (ref.digest !== undefined) {
			const d = manifests.find((m) => m.digest === ref.digest);
			if (!d)
				throw new DadiError(
					"INPUT_NOT_FOUND",
					`${this.dir}: no manifest ${ref.digest} in index.json`,
				);
			return d;
		}
		if (ref.tag === undefined) {
			// Referrers (tag schema "sha256-<hex>", e.g. a dadi trace) are not images of their own.
			const images = manifests.filter(
				(m) =>
					!/^sha256-[0-9a-f]{64}$/.test(
						m.annotations?.[ANNOTATION_REF_NAME] ?? "",
					),
			);
			if (images.length === 1) return images[0] as Descriptor;
			throw new DadiError(
				"USAGE",
				`${this.dir}: holds ${images.length} images; name one as oci:${this.dir}:TAG`,
			);
		}
		const d = manifests.find(
			(m) => m.annotations?.[ANNOTATION_REF_NAME] === ref.tag,
		);
		if (!d) {
			const tags = manifests
				.map((m) => m.annotations?.[ANNOTATION_REF_NAME])
				.filter((t) => t !== undefined);
			throw new DadiError(
				"INPUT_NOT_FOUND",
				`${this.dir}: no image tagged "${ref.tag}" (tags: ${tags.join(", ") || "none"})`,
			);
		}
		return d;
	}

	/** Points `tag` at a manifest, replacing what it named before; atomic. */
	async setTag(tag: string, manifest: Descriptor): Promise<void> {
		const index = await this.readIndex();
		const manifests = index.manifests.filter(
			(m) => m.annotations?.[ANNOTATION_REF_NAME] !== tag,
		);
		manifests.push({
			...manifest,
			annotations: { ...manifest.annotations, [ANNOTATION_REF_NAME]: tag },
		});
		await writeFileAtomic(
			join(this.dir, "index.json"),
			`${JSON.stringify({ ...index, manifests })}\n`,
		);
	}

	/** Reads a small blob whole and checks its size and digest. */
	async readBlob(
		desc: Descriptor,
		what: string,
		max = MAX_JSON_BLOB,
	): Promise<Buffer> {
		if (desc.size > max)
			throw new DadiError(
				"LAYOUT_INVALID",
				`${what}: ${desc.size} bytes is more than the ${max} allowed`,
			);
		let bytes: Buffer;
		try {
			// One byte more than the descriptor says: a longer file is a mismatch, not a read.
			bytes = await readRegularFile(
				this.blobPath(desc.digest),
				desc.size + 1,
				what,
				"LAYOUT_INVALID",
			).catch((e: unknown) => {
				if (e instanceof DadiError && /more than the \d+/.test(e.message))
					throw new DadiError(
						"DIGEST_MISMATCH",
						`${what}: blob ${desc.digest} is larger than the ${desc.size} bytes its descriptor says`,
					);
				throw e;
			});
		} catch (e) {
			const err = fromSystemError(
				e,
				this.blobPath(desc.digest),
				`reading ${what}`,
			);
			if (err.code === "INPUT_NOT_FOUND")
				throw new DadiError(
					"LAYOUT_INVALID",
					`${what}: blob ${desc.digest} is missing from ${this.dir}`,
				);
			throw err;
		}
		if (bytes.length !== desc.size)
			throw new DadiError(
				"DIGEST_MISMATCH",
				`${what}: blob ${desc.digest} is ${bytes.length} bytes, the descriptor says ${desc.size}`,
			);
		if (sha256Digest(bytes) !== desc.digest)
			throw new DadiError(
				"DIGEST_MISMATCH",
				`${what}: blob ${desc.digest} does not match its digest`,
			);
		return bytes;
	}

	/** Opens a (large) blob for random reads; checks its size, not its digest. */
	async openBlob(desc: Descriptor, what: string): Promise<FileSource> {
		let src: FileSource;
		try {
			src = await FileSource.open(
				this.blobPath(desc.digest),
				`${what} (${desc.digest.slice(0, 19)})`,
			);
		} catch (e) {
			if (e instanceof DadiError && e.code === "INPUT_NOT_FOUND")
				throw new DadiError(
					"LAYOUT_INVALID",
					`${what}: blob ${desc.digest} is missing from ${this.dir}`,
				);
			throw e;
		}
		if (src.size !== desc.size) {
			await src.close();
			throw new DadiError(
				"DIGEST_MISMATCH",
				`${what}: blob ${desc.digest} is ${src.size} bytes, the descriptor says ${desc.size}`,
			);
		}
		return src;
	}

	/** Streams a blob through SHA-256 and compares with its digest. */
	async checkBlobDigest(
		desc: Descriptor,
		what: string,
		onBytes?: (n: number) => void,
	): Promise<void> {
		const src = await this.openBlob(desc, what);
		try {
			const h = createHash("sha256");
			const step = 8 << 20;
			for (let off = 0; off < src.size; off += step) {
				const b = await src.read(off, Math.min(step, src.size - off));
				h.update(b);
				onBytes?.(b.length);
			}
			if (`sha256:${h.digest("hex")}` !== desc.digest)
				throw new DadiError(
					"DIGEST_MISMATCH",
					`${what}: blob ${desc.digest} does not match its digest`,
				);
		} finally {
			await src.close();
		}
	}

	/** Whether the layout holds this blob intact (size and digest checked). */
	async hasBlob(desc: Descriptor): Promise<boolean> {
		try {
			await this.checkBlobDigest(desc, "blob");
			return true;
		} catch {
			return false;
		}
	}

	/** Stores a small blob; a damaged copy already there is replaced. */
	async writeBlob(bytes: Buffer, mediaType: string): Promise<Descriptor> {
		const desc: Descriptor = {
			mediaType,
			digest: sha256Digest(bytes),
			size: bytes.length,
		};
		const existing = await readRegularFile(
			this.blobPath(desc.digest),
			bytes.length,
			"an existing blob",
		).catch(() => undefined);
		if (!existing?.equals(bytes))
			await writeFileAtomic(this.blobPath(desc.digest), bytes);
		return desc;
	}

	async createBlobWriter(): Promise<BlobWriter> {
		const tmp = join(
			this.dir,
			"blobs",
			"sha256",
			`.upload-${randomBytes(8).toString("hex")}.tmp`,
		);
		try {
			const fh = await open(tmp, "wx", 0o644);
			trackTemp(tmp);
			return new BlobWriter(this, tmp, fh);
		} catch (e) {
			throw fromSystemError(e, tmp, "creating a blob");
		}
	}
}
