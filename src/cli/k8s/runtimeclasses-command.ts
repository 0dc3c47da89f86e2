/** `dadi-k8s runtimeclasses`: RuntimeClass manifests (multi-document YAML) for dadi's runtime classes. */
import type { Command } from "commander";
import { DadiError } from "../../errors.js";
import { type ClassName, parseClassList } from "../../k8s/classes.js";
import {
	type Overhead,
	runtimeClassManifests,
} from "../../k8s/runtime-classes.js";
import { yamlDocuments } from "../../k8s/yaml-docs.js";
import { printJson, runAction } from "../common.js";
import { collect, emit, type OutputFlags } from "./output.js";

interface Flags extends OutputFlags {
	classes: string;
	overhead: string[];
	nodeSelector: string[];
	scheduling: boolean;
}

/** "kata-qemu-snp=4Gi,2" or "gvisor=none" → [class, overhead or null]. */
export function parseOverhead(text: string): [ClassName, Overhead | null] {
	const m = /^([a-z0-9-]+)=(.*)$/.exec(text);
	if (!m)
		throw new DadiError(
			"USAGE",
			`--overhead ${JSON.stringify(text)}: give CLASS=MEMORY,CPU (e.g. kata-qemu-snp=4Gi,2) or CLASS=none`,
		);
	const found = parseClassList(m[1] as string, "--overhead");
	const cls = found[0];
	if (found.length !== 1 || cls === undefined)
		throw new DadiError(
			"USAGE",
			`--overhead ${JSON.stringify(text)}: name one class per --overhead`,
		);
	const value = m[2] as string;
	if (value === "none") return [cls, null];
	const parts = value.split(",");
	if (parts.length !== 2)
		throw new DadiError(
			"USAGE",
			`--overhead ${JSON.stringify(text)}: give CLASS=MEMORY,CPU (e.g. kata-qemu-snp=4Gi,2) or CLASS=none`,
		);
	return [
		cls,
		{ memory: (parts[0] as string).trim(), cpu: (parts[1] as string).trim() },
	];
}

export function parseKeyValue(text: string, what: string): [string, string] {
	const at = text.indexOf("=");
	if (at <= 0)
		throw new DadiError(
			"USAGE",
			`${what} ${JSON.stringify(text)}: give KEY=VALUE (e.g. node.example.com/pool=confidential)`,
		);
	return [text.slice(0, at), text.slice(at + 1)];
}

export function runtimeClassesCommand(program: Command): void {
	program
		.command("runtimeclasses")
		.description(
			"write RuntimeClass manifests (node.k8s.io/v1: handler, pod overhead, node selector, tolerations) as multi-document YAML",
		)
		.option(
			"--classes <LIST>",
			"comma-separated: runc-lazy, gvisor, kata-qemu-snp, kata-qemu-tdx, kata-qemu-coco-dev, or all",
			"all",
		)
		.option(
			"--overhead <CLASS=MEM,CPU|CLASS=none>",
			"another pod overhead for a class (repeatable); defaults: Kata SNP/TDX 2048Mi,1, coco-dev 160Mi,250m, host classes none",
			collect,
			[],
		)
		.option(
			"--node-selector <KEY=VALUE>",
			"one more node label every class requires (repeatable)",
			collect,
			[],
		)
		.option(
			"--no-scheduling",
			"no scheduling section (every node has the snapshotter, gVisor, Kata and the TEE)",
		)
		.option("--out <FILE>", "write to FILE (atomically) instead of stdout")
		.option("--force", "replace an existing --out file")
		.option("--json", "print {ok, classes, out, manifests} as JSON")
		.action(async (f: Flags) =>
			runAction("dadi-k8s runtimeclasses", Boolean(f.json), async () => {
				const classes = parseClassList(f.classes);
				const overhead: Partial<Record<ClassName, Overhead | null>> = {};
				for (const o of f.overhead) {
					const [c, v] = parseOverhead(o);
					overhead[c] = v;
				}
				const extraNodeSelector = Object.fromEntries(
					f.nodeSelector.map((s) => parseKeyValue(s, "--node-selector")),
				);
				const manifests = runtimeClassManifests({
					classes,
					overhead,
					extraNodeSelector,
					scheduling: f.scheduling,
				});
				const out = await emit(
					yamlDocuments(
						manifests,
						"RuntimeClasses for dadi, written by dadi-k8s runtimeclasses (docs/kubernetes.md).\nApply with: kubectl apply -f <this file>",
					),
					f,
				);
				if (f.json) printJson({ ok: true, classes, out, manifests });
				else if (out)
					process.stdout.write(
						`wrote ${manifests.length} RuntimeClass manifest(s) (${classes.join(", ")}) to ${out}\n`,
					);
			}),
		);
}
