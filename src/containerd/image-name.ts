/**
 * The image reference `pull` takes and the name containerd gives the image. Both of containerd's
 * spellings are accepted: `HOST[:PORT]/REPO[:TAG|@DIGEST]` (as ctr takes it) and skopeo's
 * `docker://…`; a Docker Hub short name (`busybox`) means `docker.io/library/busybox:latest`, as
 * containerd's CRI plugin reads it. The image record is named `HOST/REPO:TAG` or
 * `HOST/REPO@DIGEST` — what `ctr images ls` shows and `ctr run` takes.
 */
import {
	type DockerReference,
	parseDockerReference,
} from "../oci/docker-reference.js";

export interface PullReference extends DockerReference {
	/** The image record's name in containerd. */
	name: string;
}

export function parsePullReference(text: string): PullReference {
	const full = text.startsWith("docker://") ? text : `docker://${text}`;
	const ref = parseDockerReference(full.slice("docker:".length), text);
	return { ...ref, name: imageName(ref) };
}

export function imageName(r: DockerReference): string {
	const base = `${r.registry}/${r.repository}`;
	return r.digest ? `${base}@${r.digest}` : `${base}:${r.tag ?? "latest"}`;
}
