/**
 * Copying an image between layouts and registries, in the order a registry needs: blobs (config
 * and layers) first, skipped when the destination has them and mounted across repositories of one
 * registry when it can, then the manifest; for an index, every image it lists (or the one matching
 * a platform), then the index. Every blob and manifest is checked against its digest on the way.
 */
import { DadiError } from "../errors.js";
import type { Descriptor } from "../oci/digest.js";
import { parseDescriptor, parseJson } from "../oci/layout.js";
import { MT_DOCKER_MANIFEST_LIST, MT_OCI_INDEX } from "../oci/media-types.js";
import type { OnProgress, SkippedBlobs } from "../progress.js";
import type { Platform } from "../source/image-source.js";
import { formatPlatform, platformMatches } from "../source/platform.js";
import type { PushOutcome } from "./blob-upload.js";
import type { ImageEndpoint } from "./endpoints.js";

export interface CopyOptions {
	/** From an index, copy only the image for this platform (and tag it). */
	platform?: Platform;
	/** Tag at the destination (default: the destination's, else the source's). */
	tag?: string;
	/** The phase name progress events carry (default "copying"). */
	phase?: string;
	/**
	 * Bytes written to the destination (for a registry: acknowledged by it) of the bytes that must
	 * be written — blobs the destination has or mounted are left out of both and counted in
	 * `skipped`.
	 */
	onProgress?: OnProgress;
}

export interface CopyResult {
	/** What the destination tag names. */
	manifest: Descriptor;
	blobs: Record<PushOutcome, number>;
	/** Bytes uploaded or written (blobs that existed or were mounted cost nothing). */
	bytesCopied: number;
	totalBytes: number;
}

const MAX_DEPTH = 2;

function isIndex(mediaType: string): boolean {
	return mediaType === MT_OCI_INDEX || mediaType === MT_DOCKER_MANIFEST_LIST;
}

export async function copyImage(
	src: ImageEndpoint,
	dest: ImageEndpoint,
	o: CopyOptions = {},
): Promise<CopyResult> {
	const phase = o.phase ?? "copying";
	o.onProgress?.({ phase, done: 0, total: 0 });
	let { descriptor, bytes } = await src.top();
	for (let depth = 0; o.platform && isIndex(descriptor.mediaType); depth++) {
		if (depth >= MAX_DEPTH)
			throw new DadiError(
				"INPUT_INVALID",
				`${src.name}: indexes nested too deep`,
			);
		const child = selectPlatform(bytes, o.platform, src.name);
		bytes = await src.manifest(child);
		descriptor = {
			mediaType: child.mediaType,
			digest: child.digest,
			size: child.size,
		};
	}
	// Plan first, so progress has a total.
	const plan: { desc: Descriptor; bytes: Buffer; blobs: Descriptor[] }[] = [];
	await planManifest(src, descriptor, bytes, plan, 0);
	const unique = new Map<string, Descriptor>();
	for (const p of plan) for (const b of p.blobs) unique.set(b.digest, b);
	const totalBytes = [...unique.values()].reduce((n, b) => n + b.size, 0);
	const result: CopyResult = {
		manifest: descriptor,
		blobs: { exists: 0, mounted: 0, uploaded: 0 },
		bytesCopied: 0,
		totalBytes,
	};
	const skipped: SkippedBlobs = { exists: 0, mounted: 0, bytes: 0 };
	const report = (done: number, total: number) =>
		o.onProgress?.({ phase, done, total, skipped: { ...skipped } });
	// First what costs no bytes (blobs the destination has, mounts), so the total is what is sent.
	const toWrite: Descriptor[] = [];
	for (const b of unique.values()) {
		const placed = await dest.placeBlob(b, src);
		if (placed) {
			result.blobs[placed]++;
			skipped[placed]++;
			skipped.bytes += b.size;
			report(0, 0);
		} else toWrite.push(b);
	}
	const total = toWrite.reduce((n, b) => n + b.size, 0);
	report(0, total);
	for (const b of toWrite) {
		const before = result.bytesCopied;
		await dest.writeBlob(b, src, (n) => report(before + n, total));
		result.blobs.uploaded++;
		result.bytesCopied += b.size;
		report(result.bytesCopied, total);
	}
	const tag = o.tag ?? dest.tag ?? src.tag;
	for (const p of plan)
		await dest.putManifest(
			p.desc,
			p.bytes,
			p.desc.digest === descriptor.digest ? tag : undefined,
		);
	return result;
}

/** Children before parents, so a registry never sees a manifest whose parts are missing. */
async function planManifest(
	src: ImageEndpoint,
	desc: Descriptor,
	bytes: Buffer,
	plan: { desc: Descriptor; bytes: Buffer; blobs: Descriptor[] }[],
	depth: number,
): Promise<void> {
	const doc = parseJson(bytes, `${src.name} manifest`) as Record<
		string,
		unknown
	>;
	if (isIndex(desc.mediaType)) {
		if (depth >= MAX_DEPTH)
			throw new DadiError(
				"INPUT_INVALID",
				`${src.name}: indexes nested too deep`,
			);
		if (!Array.isArray(doc.manifests))
			throw new DadiError(
				"INPUT_INVALID",
				`${src.name}: an index without manifests`,
			);
		for (const [i, m] of doc.manifests.entries()) {
			const child = parseDescriptor(m, `${src.name} index manifests[${i}]`);
			await planManifest(
				src,
				child,
				await src.manifest(child),
				plan,
				depth + 1,
			);
		}
		plan.push({ desc, bytes, blobs: [] });
		return;
	}
	// Layers first, then the config, then (later) the manifest: the order registries expect.
	const blobs: Descriptor[] = [];
	if (!Array.isArray(doc.layers))
		throw new DadiError(
			"INPUT_INVALID",
			`${src.name}: manifest ${desc.digest.slice(0, 19)}… has no layers array`,
		);
	for (const [i, l] of doc.layers.entries())
		blobs.push(parseDescriptor(l, `${src.name} manifest layers[${i}]`));
	if (doc.config !== undefined)
		blobs.push(parseDescriptor(doc.config, `${src.name} manifest config`));
	plan.push({ desc, bytes, blobs });
}

function selectPlatform(
	bytes: Buffer,
	platform: Platform,
	name: string,
): Descriptor {
	const doc = parseJson(bytes, `${name} index`) as { manifests?: unknown };
	if (!Array.isArray(doc.manifests))
		throw new DadiError("INPUT_INVALID", `${name}: an index without manifests`);
	const entries = doc.manifests.map((m, i) => ({
		d: parseDescriptor(m, `${name} index manifests[${i}]`),
		p: (m as { platform?: Partial<Platform> }).platform,
	}));
	const hit = entries.find((e) => platformMatches(e.p, platform));
	if (!hit)
		throw new DadiError(
			"INPUT_NOT_FOUND",
			`${name}: no image for platform ${formatPlatform(platform)} (the index has: ${
				entries
					.map((e) => (e.p ? formatPlatform(e.p as Platform) : "?"))
					.join(", ") || "nothing"
			}); choose one with --platform`,
		);
	return hit.d;
}
