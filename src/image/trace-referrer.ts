/**
 * Where a sealed start-up trace lives: an OCI 1.1 artifact whose `subject` is the image manifest
 * (artifactType application/vnd.dadi.trace.v1+encrypted, the empty config, one layer = the sealed
 * trace), found through the distribution spec's referrers *tag schema* — the tag
 * `sha256-<manifest hex>` names an OCI image index listing the referrers — because registries
 * without the referrers API (distribution 2.8, Debian's docker-registry) store it as any tag, and
 * an OCI image layout keeps it as a tag in index.json the same way (docs/format.md §10.3).
 *
 * Nothing here needs the key: attaching and copying move sealed bytes; the reader authenticates
 * them (crypto/trace-seal.ts) before using anything.
 */
import { Readable } from "node:stream";
import { MAX_SEALED_TRACE_BYTES } from "../crypto/trace-seal.js";
import { DadiError, isDadiError } from "../errors.js";
import { type Descriptor, sha256Digest, shown } from "../oci/digest.js";
import type { OciLayout } from "../oci/layout.js";
import { parseDescriptor, parseJson } from "../oci/layout.js";
import { MT_OCI_INDEX, MT_OCI_MANIFEST } from "../oci/media-types.js";
import { placeBlob, uploadBlob } from "../registry/blob-upload.js";
import type { RegistryClient } from "../registry/client.js";
import {
	type ImageEndpoint,
	LayoutEndpoint,
	RegistryEndpoint,
} from "../registry/endpoints.js";

export const TRACE_ARTIFACT_TYPE = "application/vnd.dadi.trace.v1+encrypted";
export const MT_SEALED_TRACE = "application/vnd.dadi.trace.v1.sealed";
export const MT_EMPTY = "application/vnd.oci.empty.v1+json";
export const EMPTY_JSON = Buffer.from("{}");
const EMPTY_DESC: Descriptor = {
	mediaType: MT_EMPTY,
	digest: sha256Digest(EMPTY_JSON),
	size: 2,
};
/** Entries a referrers index may list before it is refused. */
const MAX_REFERRERS = 4096;

/** The referrers tag schema: `sha256:<hex>` → `sha256-<hex>`. */
export function referrersTag(digest: string): string {
	return digest.replace(":", "-");
}

/** Reading and writing the few documents a referrer needs, in a registry repository or a layout. */
export interface ReferrerStore {
	readonly name: string;
	/** The manifest or index a tag names, or undefined when there is none. */
	getTagged(tag: string): Promise<Buffer | undefined>;
	getManifest(desc: Descriptor): Promise<Buffer>;
	getBlob(desc: Descriptor, max: number): Promise<Buffer>;
	putBlob(bytes: Buffer, mediaType: string): Promise<Descriptor>;
	/** Stores a manifest (by digest), and under `tag` when given. */
	putManifest(
		bytes: Buffer,
		mediaType: string,
		tag?: string,
	): Promise<Descriptor>;
}

export class RegistryReferrerStore implements ReferrerStore {
	readonly name: string;
	constructor(
		readonly client: RegistryClient,
		readonly repo: string,
	) {
		this.name = `docker://${client.registry}/${repo}`;
	}
	async getTagged(tag: string): Promise<Buffer | undefined> {
		try {
			return (await this.client.getManifest(this.repo, tag, [MT_OCI_INDEX]))
				.bytes;
		} catch (e) {
			if (isDadiError(e, "INPUT_NOT_FOUND")) return undefined;
			throw e;
		}
	}
	async getManifest(desc: Descriptor): Promise<Buffer> {
		return (
			await this.client.getManifest(this.repo, desc.digest, [MT_OCI_MANIFEST])
		).bytes;
	}
	getBlob(desc: Descriptor, max: number): Promise<Buffer> {
		return this.client.readBlob(this.repo, desc, max);
	}
	async putBlob(bytes: Buffer, mediaType: string): Promise<Descriptor> {
		const desc = { mediaType, digest: sha256Digest(bytes), size: bytes.length };
		if (!(await placeBlob(this.client, this.repo, desc)))
			await uploadBlob(this.client, this.repo, desc, async () =>
				Readable.from([bytes]),
			);
		return desc;
	}
	async putManifest(
		bytes: Buffer,
		mediaType: string,
		tag?: string,
	): Promise<Descriptor> {
		const desc = { mediaType, digest: sha256Digest(bytes), size: bytes.length };
		await this.client.putManifest(
			this.repo,
			tag ?? desc.digest,
			bytes,
			mediaType,
		);
		return desc;
	}
}

export class LayoutReferrerStore implements ReferrerStore {
	readonly name: string;
	constructor(readonly layout: OciLayout) {
		this.name = `oci:${layout.dir}`;
	}
	async getTagged(tag: string): Promise<Buffer | undefined> {
		let d: Descriptor;
		try {
			d = await this.layout.resolve({ tag });
		} catch (e) {
			if (isDadiError(e, "INPUT_NOT_FOUND")) return undefined;
			throw e;
		}
		return this.layout.readBlob(d, `${this.name}:${tag}`);
	}
	getManifest(desc: Descriptor): Promise<Buffer> {
		return this.layout.readBlob(desc, `manifest ${desc.digest.slice(0, 19)}…`);
	}
	getBlob(desc: Descriptor, max: number): Promise<Buffer> {
		return this.layout.readBlob(desc, `blob ${desc.digest.slice(0, 19)}…`, max);
	}
	putBlob(bytes: Buffer, mediaType: string): Promise<Descriptor> {
		return this.layout.writeBlob(bytes, mediaType);
	}
	async putManifest(
		bytes: Buffer,
		mediaType: string,
		tag?: string,
	): Promise<Descriptor> {
		const d = await this.layout.writeBlob(bytes, mediaType);
		if (tag) await this.layout.setTag(tag, d);
		return d;
	}
}

/** The referrer store behind a copy endpoint. */
export function storeOfEndpoint(e: ImageEndpoint): ReferrerStore | undefined {
	if (e instanceof LayoutEndpoint) return new LayoutReferrerStore(e.layout);
	if (e instanceof RegistryEndpoint)
		return new RegistryReferrerStore(e.client, e.ref.repository);
	return undefined;
}

/** The artifact manifest of a sealed trace about `subject`. */
export function traceArtifactManifest(
	subject: Descriptor,
	blob: Descriptor,
): Buffer {
	const doc = {
		schemaVersion: 2,
		mediaType: MT_OCI_MANIFEST,
		artifactType: TRACE_ARTIFACT_TYPE,
		config: { ...EMPTY_DESC, data: EMPTY_JSON.toString("base64") },
		layers: [
			{ mediaType: MT_SEALED_TRACE, digest: blob.digest, size: blob.size },
		],
		subject: {
			mediaType: subject.mediaType,
			digest: subject.digest,
			size: subject.size,
		},
	};
	return Buffer.from(JSON.stringify(doc, null, 2));
}

const invalid = (where: string, msg: string) =>
	new DadiError("LAYOUT_INVALID", `${where}: ${msg}`);

/** The descriptors of a referrers index (tag schema), checked. */
export function parseReferrersIndex(
	bytes: Buffer,
	where: string,
): Descriptor[] {
	const doc = parseJson(bytes, where) as Record<string, unknown>;
	if (
		typeof doc !== "object" ||
		doc === null ||
		doc.schemaVersion !== 2 ||
		!Array.isArray(doc.manifests)
	)
		throw invalid(where, "not an OCI image index");
	if (doc.mediaType !== undefined && doc.mediaType !== MT_OCI_INDEX)
		throw invalid(
			where,
			`media type ${shown(doc.mediaType)} is not an OCI index`,
		);
	if (doc.manifests.length > MAX_REFERRERS)
		throw invalid(where, `more than ${MAX_REFERRERS} referrers`);
	return doc.manifests.map((m, i) =>
		parseDescriptor(m, `${where} manifests[${i}]`),
	);
}

/** Checks a trace artifact manifest about `subjectDigest`; the sealed trace blob's descriptor. */
export function parseTraceArtifact(
	bytes: Buffer,
	subjectDigest: string,
	where: string,
): Descriptor {
	const doc = parseJson(bytes, where) as Record<string, unknown>;
	if (typeof doc !== "object" || doc === null || doc.schemaVersion !== 2)
		throw invalid(where, "not an OCI manifest");
	if (doc.artifactType !== TRACE_ARTIFACT_TYPE)
		throw invalid(
			where,
			`artifactType ${shown(doc.artifactType)} is not a dadi trace`,
		);
	const subject = parseDescriptor(doc.subject, `${where} subject`);
	if (subject.digest !== subjectDigest)
		throw new DadiError(
			"AUTH_FAILED",
			`${where}: this trace was attached to another image (${subject.digest.slice(0, 19)}…), not to ${subjectDigest.slice(0, 19)}…; refusing to use it`,
		);
	if (!Array.isArray(doc.layers) || doc.layers.length !== 1)
		throw invalid(where, "a trace artifact has exactly one layer");
	const blob = parseDescriptor(doc.layers[0], `${where} layers[0]`);
	if (blob.mediaType !== MT_SEALED_TRACE)
		throw invalid(
			where,
			`layer media type ${shown(blob.mediaType)} is not ${MT_SEALED_TRACE}`,
		);
	if (blob.size > MAX_SEALED_TRACE_BYTES)
		throw invalid(
			where,
			`the sealed trace is ${blob.size} bytes, more than ${MAX_SEALED_TRACE_BYTES}`,
		);
	return blob;
}

export interface FoundTrace {
	/** The artifact manifest. */
	manifest: Descriptor;
	manifestBytes: Buffer;
	/** The sealed trace blob. */
	blob: Descriptor;
	sealed: Buffer;
}

/**
 * The dadi trace referrer of the manifest `subjectDigest`: undefined when there is none (no tag,
 * or no trace in its index). A malformed index or artifact is an error, never silently skipped.
 */
export async function findTrace(
	store: ReferrerStore,
	subjectDigest: string,
): Promise<FoundTrace | undefined> {
	const tag = referrersTag(subjectDigest);
	const where = `${store.name}:${tag}`;
	const bytes = await store.getTagged(tag);
	if (bytes === undefined) return undefined;
	const entries = parseReferrersIndex(bytes, where).filter(
		(d) => d.artifactType === TRACE_ARTIFACT_TYPE,
	);
	const d = entries[entries.length - 1];
	if (!d) return undefined;
	const manifest: Descriptor = {
		mediaType: d.mediaType,
		digest: d.digest,
		size: d.size,
	};
	const manifestBytes = await store.getManifest(manifest);
	const blob = parseTraceArtifact(
		manifestBytes,
		subjectDigest,
		`trace artifact ${d.digest.slice(0, 19)}…`,
	);
	const sealed = await store.getBlob(blob, MAX_SEALED_TRACE_BYTES);
	return { manifest, manifestBytes, blob, sealed };
}

/**
 * Stores a trace artifact (its blobs, its manifest by digest) and lists it in the subject's
 * referrers index, replacing any earlier dadi trace there and keeping every other referrer.
 */
async function storeArtifact(
	store: ReferrerStore,
	subjectDigest: string,
	manifestBytes: Buffer,
	sealed: Buffer,
): Promise<{ manifest: Descriptor; replaced: number }> {
	await store.putBlob(EMPTY_JSON, MT_EMPTY);
	await store.putBlob(sealed, MT_SEALED_TRACE);
	const manifest = await store.putManifest(manifestBytes, MT_OCI_MANIFEST);
	const tag = referrersTag(subjectDigest);
	const old = await store.getTagged(tag);
	const kept = old ? parseReferrersIndex(old, `${store.name}:${tag}`) : [];
	// Other referrers' entries are kept as they were written (every member, not only ours).
	const raw = old
		? ((parseJson(old, tag) as { manifests: unknown[] }).manifests ?? [])
		: [];
	const others = raw.filter(
		(_m, i) => kept[i]?.artifactType !== TRACE_ARTIFACT_TYPE,
	);
	const index = {
		schemaVersion: 2,
		mediaType: MT_OCI_INDEX,
		manifests: [...others, { ...manifest, artifactType: TRACE_ARTIFACT_TYPE }],
	};
	await store.putManifest(
		Buffer.from(JSON.stringify(index, null, 2)),
		MT_OCI_INDEX,
		tag,
	);
	return { manifest, replaced: kept.length - others.length };
}

/** Attaches a sealed trace to the image manifest `subject`. */
export async function attachTrace(
	store: ReferrerStore,
	subject: Descriptor,
	sealed: Buffer,
): Promise<{ manifest: Descriptor; blob: Descriptor; replaced: number }> {
	const blob: Descriptor = {
		mediaType: MT_SEALED_TRACE,
		digest: sha256Digest(sealed),
		size: sealed.length,
	};
	const r = await storeArtifact(
		store,
		subject.digest,
		traceArtifactManifest(subject, blob),
		sealed,
	);
	return { ...r, blob };
}

/**
 * Copies the trace referrer of `subjectDigest` from one store to another, bytes unchanged (the
 * manifest digest is the same in both places, so the trace's binding still holds). Undefined when
 * the source has none.
 */
export async function copyTrace(
	from: ReferrerStore,
	to: ReferrerStore,
	subjectDigest: string,
): Promise<{ manifest: Descriptor; bytes: number } | undefined> {
	const found = await findTrace(from, subjectDigest);
	if (!found) return undefined;
	const r = await storeArtifact(
		to,
		subjectDigest,
		found.manifestBytes,
		found.sealed,
	);
	return { manifest: r.manifest, bytes: found.sealed.length };
}
