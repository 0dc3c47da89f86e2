/**
 * The seal parameters of a container image: how its layers' file systems were built, and which
 * source layers each sealed layer holds. The sealer needs them to reuse an image's layers for
 * another image that starts with the same source layers (`--base-image`); nobody else does.
 *
 * Format v1 kept them public in the sealed config, which let anyone test guesses: the file-system
 * UUID was an unkeyed hash of the (encrypted) image config, the timestamp its `created`, the inode
 * count nearly the file count, the source diff_ids named public base images. In v2 they travel as
 * one encrypted record (crypto/config-auth.ts, kind "seal-params"):
 *
 *   {"fs":{"uuid":…,"timestamp":…,"sizeBytes":…,"inodes":…},"layers":[["sha256:…",…],…]}
 *
 * `layers` has one entry per sealed layer, bottom first: the diff_ids of the source layers that
 * layer adds, in order (all of them for a flattened image).
 */
import { openRecord, sealRecord } from "../crypto/config-auth.js";
import { DadiError } from "../errors.js";
import { DIGEST_RE } from "../oci/digest.js";
import type { SealedConfig } from "../oci/sealed-config.js";

/** How every layer's file system was built (so later images can build theirs the same way). */
export interface FsParams {
	uuid: string;
	timestamp: number;
	sizeBytes: number;
	inodes: number;
}

export interface SealParams {
	fs: FsParams;
	/** Per sealed layer: the source diff_ids it adds. */
	layers: string[][];
}

const UUID_RE =
	/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function encodeSealParams(p: SealParams): Buffer {
	return Buffer.from(
		JSON.stringify({
			fs: {
				uuid: p.fs.uuid,
				timestamp: p.fs.timestamp,
				sizeBytes: p.fs.sizeBytes,
				inodes: p.fs.inodes,
			},
			layers: p.layers,
		}),
		"utf8",
	);
}

/**
 * Parses decrypted seal parameters for an image of `layerCount` layers. The record is authentic
 * (only the key holder wrote it), but it is checked like any input: FORMAT_INVALID when malformed.
 */
export function decodeSealParams(
	bytes: Buffer,
	layerCount: number,
): SealParams {
	const bad = (why: string) =>
		new DadiError("FORMAT_INVALID", `seal parameters: ${why}`);
	let v: unknown;
	try {
		v = JSON.parse(bytes.toString("utf8"));
	} catch {
		throw bad("not JSON");
	}
	if (typeof v !== "object" || v === null || Array.isArray(v))
		throw bad("not an object");
	const o = v as Record<string, unknown>;
	if (Object.keys(o).some((k) => k !== "fs" && k !== "layers"))
		throw bad("unknown member");
	const fs = o.fs as Record<string, unknown>;
	if (typeof fs !== "object" || fs === null || Array.isArray(fs))
		throw bad("fs is not an object");
	const names = ["uuid", "timestamp", "sizeBytes", "inodes"];
	if (Object.keys(fs).some((k) => !names.includes(k)))
		throw bad("fs has an unknown member");
	const n = (x: unknown) => {
		if (typeof x !== "number" || !Number.isSafeInteger(x) || x < 0)
			throw bad("fs numbers must be integers >= 0");
		return x;
	};
	if (typeof fs.uuid !== "string" || !UUID_RE.test(fs.uuid))
		throw bad("fs.uuid is not a UUID");
	if (!Array.isArray(o.layers) || o.layers.length !== layerCount)
		throw bad(`layers must list the image's ${layerCount} layers`);
	const layers = o.layers.map((l) => {
		if (
			!Array.isArray(l) ||
			l.length > 1024 ||
			l.some((d) => typeof d !== "string" || !DIGEST_RE.test(d))
		)
			throw bad("a layer's source diff_ids are not sha256 digests");
		return l as string[];
	});
	return {
		fs: {
			uuid: fs.uuid,
			timestamp: n(fs.timestamp),
			sizeBytes: n(fs.sizeBytes),
			inodes: n(fs.inodes),
		},
		layers,
	};
}

export function sealSealParams(
	imageKey: Buffer,
	sealId: string,
	p: SealParams,
): string {
	return sealRecord(imageKey, "seal-params", sealId, encodeSealParams(p));
}

/** The seal parameters of an image (after its config was authenticated), or null (raw disks). */
export function openSealParams(
	imageKey: Buffer,
	c: SealedConfig,
): SealParams | null {
	if (c.sealParams === undefined) return null;
	return decodeSealParams(
		openRecord(imageKey, "seal-params", c.sealId, c.sealParams),
		c.layers.length,
	);
}
