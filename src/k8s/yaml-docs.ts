/**
 * Manifests as one multi-document YAML stream (what `kubectl apply -f` reads), written with the
 * `yaml` package: strings that YAML would read as another type ("true", "1", "2048Mi" is safe but
 * "1" is not) are quoted by it, so a label value "true" stays a string.
 */
import { stringify } from "yaml";

export function yamlDocuments(
	docs: readonly object[],
	header?: string,
): string {
	const body = docs
		.map((d) => `---\n${stringify(d, { lineWidth: 0 })}`)
		.join("");
	const comment =
		header === undefined
			? ""
			: `${header
					.split("\n")
					.map((l) => (l === "" ? "#" : `# ${l}`))
					.join("\n")}\n`;
	return comment + body;
}
