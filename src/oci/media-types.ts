/** Media types: the OCI ones we read and write, and dadi's own for sealed content. */
export const OCI_LAYOUT_VERSION = "1.0.0";
export const MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json";
export const MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
export const MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json";

export const MT_SEALED_CONFIG = "application/vnd.dadi.image.config.v1+json";
export const MT_SEALED_LAYER = "application/vnd.dadi.image.layer.v1.sealed";
export const ARTIFACT_TYPE = "application/vnd.dadi.image.v1";

export const ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name";
export const ANNOTATION_LAYER_ID = "io.dadi.layer.id";

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
