/**
 * Registry references in skopeo's `docker://` syntax: `docker://HOST[:PORT]/REPO[:TAG]` or
 * `docker://HOST[:PORT]/REPO@sha256:…`. As with docker, a first component without a dot or a
 * colon (and not `localhost`) is a Docker Hub repository: `docker://busybox` is
 * `docker.io/library/busybox:latest`.
 */
import { DadiError } from "../errors.js";
import { DIGEST_RE } from "./digest.js";

export interface DockerReference {
	transport: "docker";
	/** The registry as named (host[:port]); `docker.io` for Docker Hub. */
	registry: string;
	/** Repository path inside the registry, e.g. `library/busybox`. */
	repository: string;
	tag?: string;
	digest?: string;
}

const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const COMPONENT_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const HOST_RE =
	/^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/;
const MAX_NAME = 255;

export const DOCKER_HUB = "docker.io";

/** Parses what follows `docker://`. `text` is the whole reference, for messages. */
export function parseDockerReference(
	rest: string,
	text: string,
): DockerReference {
	if (!rest.startsWith("//"))
		throw new DadiError(
			"USAGE",
			`"${text}": a registry reference is docker://HOST/REPO[:TAG|@DIGEST]`,
		);
	let name = rest.slice(2);
	let digest: string | undefined;
	let tag: string | undefined;
	const at = name.indexOf("@");
	if (at >= 0) {
		digest = name.slice(at + 1);
		name = name.slice(0, at);
		if (!DIGEST_RE.test(digest))
			throw new DadiError(
				"USAGE",
				`"${text}": "${digest.slice(0, 80)}" is not a sha256 digest (sha256: and 64 lowercase hex digits)`,
			);
	}
	const lastSlash = name.lastIndexOf("/");
	const colon = name.lastIndexOf(":");
	if (colon > lastSlash) {
		tag = name.slice(colon + 1);
		name = name.slice(0, colon);
		if (!TAG_RE.test(tag))
			throw new DadiError(
				"USAGE",
				`"${text}": "${tag.slice(0, 80)}" is not a valid tag (letters, digits, _ . -; at most 128)`,
			);
	}
	const parts = name.split("/");
	let registry = DOCKER_HUB;
	const first = parts[0] ?? "";
	if (
		parts.length > 1 &&
		(first.includes(".") || first.includes(":") || first === "localhost")
	) {
		registry = first;
		parts.shift();
		if (!HOST_RE.test(registry))
			throw new DadiError(
				"USAGE",
				`"${text}": "${registry}" is not a registry host[:port]`,
			);
	}
	if (registry === DOCKER_HUB && parts.length === 1) parts.unshift("library");
	const repository = parts.join("/");
	if (repository.length === 0 || repository.length > MAX_NAME)
		throw new DadiError(
			"USAGE",
			`"${text}": the repository name is empty or longer than ${MAX_NAME} characters`,
		);
	for (const p of parts)
		if (!COMPONENT_RE.test(p))
			throw new DadiError(
				"USAGE",
				`"${text}": repository component "${p.slice(0, 80)}" is not valid (lowercase letters, digits, separators . _ __ -)`,
			);
	const ref: DockerReference = { transport: "docker", registry, repository };
	if (tag !== undefined) ref.tag = tag;
	if (digest !== undefined) ref.digest = digest;
	return ref;
}

export function formatDockerReference(r: DockerReference): string {
	const base = `docker://${r.registry}/${r.repository}`;
	if (r.digest) return `${base}@${r.digest}`;
	return `${base}:${r.tag ?? "latest"}`;
}

/** The host that serves a registry's API: Docker Hub's API lives at registry-1.docker.io. */
export function apiHost(registry: string): string {
	return registry === DOCKER_HUB ? "registry-1.docker.io" : registry;
}

/** The manifest reference to ask for: the digest when pinned, else the tag (default latest). */
export function manifestReference(r: DockerReference): string {
	return r.digest ?? r.tag ?? "latest";
}
