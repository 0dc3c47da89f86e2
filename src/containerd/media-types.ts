/**
 * What containerd recognises a descriptor as, by media type (its images/mediatypes.go): which
 * children are layers to unpack, which is an image config, which are manifests and indexes. A
 * pull treats content exactly as containerd would, so the labels it writes are containerd's.
 */
import {
	MT_DOCKER_CONFIG,
	MT_DOCKER_MANIFEST,
	MT_DOCKER_MANIFEST_LIST,
	MT_OCI_CONFIG,
	MT_OCI_INDEX,
	MT_OCI_MANIFEST,
} from "../oci/media-types.js";

/** Docker's layer types, which may carry `+` suffixes (e.g. `+encrypted`). */
const DOCKER_LAYERS = new Set([
	"application/vnd.docker.image.rootfs.diff.tar",
	"application/vnd.docker.image.rootfs.diff.tar.gzip",
	"application/vnd.docker.image.rootfs.foreign.diff.tar",
	"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
]);

/** containerd's checkpoint configs count as configs too (for its garbage-collection labels). */
const CHECKPOINT_CONFIGS = new Set([
	"application/vnd.containerd.container.criu.checkpoint.criu.tar",
	"application/vnd.containerd.container.checkpoint.config.v1+proto",
]);

export const MT_DOCKER_SCHEMA1 =
	"application/vnd.docker.distribution.manifest.v1+prettyjws";

export function isLayerType(mt: string): boolean {
	if (mt.startsWith("application/vnd.oci.image.layer.")) return true;
	return DOCKER_LAYERS.has(mt.split("+")[0] as string);
}

/** An image config containerd can read diff IDs from. */
export function isConfigType(mt: string): boolean {
	return mt === MT_OCI_CONFIG || mt === MT_DOCKER_CONFIG;
}

export function isKnownConfig(mt: string): boolean {
	return isConfigType(mt) || CHECKPOINT_CONFIGS.has(mt);
}

export function isManifestType(mt: string): boolean {
	return mt === MT_OCI_MANIFEST || mt === MT_DOCKER_MANIFEST;
}

export function isIndexType(mt: string): boolean {
	return mt === MT_OCI_INDEX || mt === MT_DOCKER_MANIFEST_LIST;
}
