/**
 * Image references in skopeo's transport syntax: `oci:DIR[:TAG]` or `oci:DIR@sha256:…` for an OCI
 * image layout, `docker-archive:FILE[:NAME:TAG]` for a `docker save` archive, `raw:FILE` for a raw
 * disk image, `docker://HOST/REPO[:TAG|@DIGEST]` for a registry (docker-reference.ts).
 */
import { DadiError } from "../errors.js";
import { DIGEST_RE } from "./digest.js";
import {
	type DockerReference,
	formatDockerReference,
	parseDockerReference,
} from "./docker-reference.js";

export type Reference =
	| { transport: "oci"; dir: string; tag?: string; digest?: string }
	| DockerReference
	| { transport: "raw"; path: string }
	| { transport: "docker-archive"; path: string; name?: string };

const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

/** "registry.example.com/app:v1", "localhost:5000/app": a registry reference missing docker://. */
function looksLikeRegistry(text: string): boolean {
	const slash = text.indexOf("/");
	if (slash < 1) return false;
	const host = text.slice(0, slash);
	return (
		host === "localhost" ||
		/^[A-Za-z0-9.-]+\.[A-Za-z0-9-]+(:\d{1,5})?$/.test(host) ||
		/^[A-Za-z0-9.-]+:\d{1,5}$/.test(host) ||
		/^\[[0-9a-fA-F:]+\](:\d{1,5})?$/.test(host)
	);
}

export function parseReference(text: string): Reference {
	const colon = text.indexOf(":");
	const registryHint = looksLikeRegistry(text)
		? `; for an image in a registry write docker://${text}`
		: "";
	if (colon < 1)
		throw new DadiError(
			"USAGE",
			`"${text}": expected a transport prefix, e.g. oci:DIR:TAG, docker://HOST/REPO:TAG or raw:FILE${registryHint}`,
		);
	const transport = text.slice(0, colon);
	const rest = text.slice(colon + 1);
	if (rest === "")
		throw new DadiError("USAGE", `"${text}": nothing after "${transport}:"`);
	if (transport === "raw") return { transport: "raw", path: rest };
	if (transport === "docker") return parseDockerReference(rest, text);
	if (transport === "docker-archive") {
		const c = rest.indexOf(":");
		return c < 0
			? { transport: "docker-archive", path: rest }
			: {
					transport: "docker-archive",
					path: rest.slice(0, c),
					name: rest.slice(c + 1),
				};
	}
	if (transport !== "oci")
		throw new DadiError(
			"USAGE",
			`"${text}": unknown transport "${transport}" (this build knows oci:, docker://, docker-archive: and raw:)${registryHint}`,
		);
	const at = rest.lastIndexOf("@");
	if (at > 0 && rest.slice(at + 1).startsWith("sha256:")) {
		const digest = rest.slice(at + 1);
		if (!DIGEST_RE.test(digest))
			throw new DadiError(
				"USAGE",
				`"${text}": "${digest}" is not a sha256 digest (sha256: and 64 lowercase hex digits)`,
			);
		return { transport: "oci", dir: rest.slice(0, at), digest };
	}
	const last = rest.lastIndexOf(":");
	if (last > 0) {
		const tag = rest.slice(last + 1);
		if (!TAG_RE.test(tag))
			throw new DadiError(
				"USAGE",
				`"${text}": "${tag}" is not a valid tag (letters, digits, _ . -; at most 128)`,
			);
		return { transport: "oci", dir: rest.slice(0, last), tag };
	}
	return { transport: "oci", dir: rest };
}

export function formatReference(r: Reference): string {
	if (r.transport === "raw") return `raw:${r.path}`;
	if (r.transport === "docker") return formatDockerReference(r);
	if (r.transport === "docker-archive")
		return `docker-archive:${r.path}${r.name ? `:${r.name}` : ""}`;
	if (r.digest) return `oci:${r.dir}@${r.digest}`;
	return r.tag ? `oci:${r.dir}:${r.tag}` : `oci:${r.dir}`;
}
