/** Media types: the OCI ones we read and write, and dadi's own for sealed content. */
export const OCI_LAYOUT_VERSION = "1.0.0";
export const MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json";
export const MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
export const MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json";

/**
 * A sealed layer blob (layer encoding version 1, docs/format.md §2). containerd counts a manifest
 * entry as a layer only when its media type starts with `application/vnd.oci.image.layer.`
 * (images.IsLayerType), so the name lives there; it claims no tar.
 */
export const MT_SEALED_LAYER = "application/vnd.oci.image.layer.dadi.sealed.v1";
/** Format v1 (refused): the sealed config was a blob of its own type, layers had this type. */
export const MT_SEALED_CONFIG_V1 = "application/vnd.dadi.image.config.v1+json";
export const MT_SEALED_LAYER_V1 = "application/vnd.dadi.image.layer.v1.sealed";

export const ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name";
/** Manifest annotation: the dadi image format version ("2"). */
export const ANNOTATION_FORMAT_VERSION = "io.dadi.format.version";
export const FORMAT_VERSION_TEXT = "2";
/** Layer descriptor annotations. */
export const ANNOTATION_LAYER_ID = "io.dadi.layer.id";
/**
 * containerd hands a layer descriptor's annotations to the snapshotter as labels during unpack,
 * but only those under this prefix (snapshots.FilterInheritedLabels).
 */
export const SNAPSHOT_LABEL_PREFIX = "containerd.io/snapshot/";
export const ANNOTATION_SEALED_LAYER = `${SNAPSHOT_LABEL_PREFIX}dadi.sealed-layer`;
export const ANNOTATION_SEALED_CONFIG = `${SNAPSHOT_LABEL_PREFIX}dadi.sealed-config`;
export const ANNOTATION_LAYER_INDEX = `${SNAPSHOT_LABEL_PREFIX}dadi.layer-index`;

export const MT_DOCKER_MANIFEST =
	"application/vnd.docker.distribution.manifest.v2+json";
export const MT_DOCKER_MANIFEST_LIST =
	"application/vnd.docker.distribution.manifest.list.v2+json";
export const MT_DOCKER_CONFIG =
	"application/vnd.docker.container.image.v1+json";

/** Layer media types of ordinary images, and how their bytes are compressed. */
export const LAYER_COMPRESSION: Record<string, "none" | "gzip" | "zstd"> = {
	"application/vnd.oci.image.layer.v1.tar": "none",
	"application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
	"application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
	"application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
	"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
	"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
	"application/vnd.docker.image.rootfs.diff.tar": "none",
	"application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
	"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
};
