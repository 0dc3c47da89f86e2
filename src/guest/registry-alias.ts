/**
 * --registry-alias FROM=TO: the sandbox reaches a registry at another address than the host named
 * it by (the host's 127.0.0.1:5000 is 10.0.2.2:5000 from a QEMU user-network guest). Pure. Only
 * the registry part of a docker:// reference changes; the repository and the digest stay, and the
 * digest keeps pinning the content, so an alias can redirect where bytes come from but not what
 * they must be.
 */
import { DadiError } from "../errors.js";
import type { DockerReference } from "../oci/docker-reference.js";
import { formatReference, parseReference } from "../oci/reference.js";

export interface RegistryAlias {
	from: string;
	to: string;
}

/** host[:port]: a DNS name, an IPv4 address or a bracketed IPv6 address. */
const HOST_RE =
	/^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$/;

export function parseRegistryAlias(text: string): RegistryAlias {
	const eq = text.indexOf("=");
	const from = text.slice(0, Math.max(0, eq));
	const to = text.slice(eq + 1);
	if (eq < 1 || !HOST_RE.test(from) || !HOST_RE.test(to))
		throw new DadiError(
			"USAGE",
			`--registry-alias "${text.slice(0, 200)}": expected FROM=TO, each HOST[:PORT] (e.g. 127.0.0.1:5000=10.0.2.2:5000)`,
		);
	return { from: from.toLowerCase(), to };
}

/**
 * The reference with its registry replaced by the first alias naming it (compared without case);
 * other references (oci:, other registries) unchanged.
 */
export function applyRegistryAlias(
	refText: string,
	aliases: readonly RegistryAlias[],
): string {
	if (aliases.length === 0 || !refText.startsWith("docker://")) return refText;
	const ref = parseReference(refText) as DockerReference;
	const a = aliases.find((x) => x.from === ref.registry.toLowerCase());
	return a ? formatReference({ ...ref, registry: a.to }) : refText;
}
