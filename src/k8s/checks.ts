/**
 * Checks on the values that go into RuntimeClass manifests, pods and containerd configuration. Each
 * failure is a USAGE error naming the option, the value and the rule, because every value here comes
 * from the command line. The rules are Kubernetes' own (apimachinery validation) where Kubernetes
 * validates the field, so a manifest we write is not refused later by the API server.
 */
import { DadiError } from "../errors.js";

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const LABEL_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;

function usage(what: string, value: string, rule: string): DadiError {
	return new DadiError("USAGE", `${what} ${JSON.stringify(value)}: ${rule}`);
}

/** An RFC 1123 label: what Kubernetes requires of a RuntimeClass handler and a container name. */
export function checkDnsLabel(value: string, what: string): string {
	if (value.length > 63 || !DNS_LABEL.test(value))
		throw usage(
			what,
			value,
			"must be a DNS label: at most 63 characters, lowercase letters, digits and '-', starting and ending with a letter or digit",
		);
	return value;
}

/** An RFC 1123 subdomain: what Kubernetes requires of object names (RuntimeClass, Pod, namespace). */
export function checkDnsSubdomain(value: string, what: string): string {
	if (
		value.length === 0 ||
		value.length > 253 ||
		!value.split(".").every((part) => DNS_LABEL.test(part))
	)
		throw usage(
			what,
			value,
			"must be a DNS subdomain: at most 253 characters, dot-separated lowercase labels of letters, digits and '-'",
		);
	return value;
}

/** A label or annotation key: an optional DNS-subdomain prefix and '/', then a name of at most 63 characters. */
export function checkQualifiedName(value: string, what: string): string {
	const slash = value.lastIndexOf("/");
	const prefix = slash < 0 ? undefined : value.slice(0, slash);
	const name = slash < 0 ? value : value.slice(slash + 1);
	if (prefix !== undefined) checkDnsSubdomain(prefix, `${what}: the prefix of`);
	if (name.length > 63 || !LABEL_NAME.test(name))
		throw usage(
			what,
			value,
			"must be a qualified name: [prefix/]name, the name at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
		);
	return value;
}

/** A label value: empty, or at most 63 characters of the label-name alphabet. */
export function checkLabelValue(value: string, what: string): string {
	if (value !== "" && (value.length > 63 || !LABEL_NAME.test(value)))
		throw usage(
			what,
			value,
			"must be a label value: empty, or at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
		);
	return value;
}

/**
 * A resource quantity as Kubernetes writes them (a decimal number and an optional suffix such as m,
 * k, M, Mi, Gi); the subset of the grammar an operator types for memory and CPU.
 */
export function checkQuantity(value: string, what: string): string {
	if (!/^(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$/.test(value))
		throw usage(
			what,
			value,
			"must be a Kubernetes quantity such as 250m, 1, 1.5, 160Mi or 2Gi",
		);
	return value;
}

/** An absolute path on the node, written into containerd's configuration (no newline, no NUL). */
export function checkAbsolutePath(value: string, what: string): string {
	if (!value.startsWith("/") || /[\0\n\r]/.test(value) || value.length > 4096)
		throw usage(
			what,
			value,
			"must be an absolute path (starting with '/', no newline)",
		);
	return value;
}

/**
 * An annotation pattern for containerd's pod_annotations/container_annotations: a Go path.Match
 * pattern over annotation keys, e.g. "io.katacontainers.*". Checked to be a plausible key pattern
 * (the key alphabet plus '*' and '?'), so a typo cannot pass every annotation through.
 */
export function checkAnnotationPattern(value: string, what: string): string {
	if (!/^[A-Za-z0-9][-A-Za-z0-9_.*?/]*$/.test(value) || value.length > 253)
		throw usage(
			what,
			value,
			"must be an annotation key pattern such as io.example.* (letters, digits, '-', '_', '.', '/', with * or ? as wildcards), not starting with a wildcard",
		);
	return value;
}

/** A container image reference as a pod names it (registry/repository[:tag][@digest]). */
export function checkImageReference(value: string, what: string): string {
	const ok =
		/^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(\/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[0-9a-f]{64})?$/.test(
			value,
		);
	if (!ok || value.length > 4096)
		throw usage(
			what,
			value,
			"must be an image reference such as registry.example.com/app:sealed or registry.example.com/app@sha256:<64 hex> (no docker:// prefix)",
		);
	return value;
}
