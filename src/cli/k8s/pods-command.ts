/** `dadi-k8s pods`: one example pod per runtime class, running a sealed image. */
import type { Command } from "commander";
import { parseClassList } from "../../k8s/classes.js";
import { examplePods } from "../../k8s/pods.js";
import { yamlDocuments } from "../../k8s/yaml-docs.js";
import { printJson, runAction } from "../common.js";
import { emit, type OutputFlags } from "./output.js";

interface Flags extends OutputFlags {
	classes: string;
	image: string;
	namespace?: string;
	namePrefix: string;
	handlerAnnotation: boolean;
}

export function podsCommand(program: Command): void {
	program
		.command("pods")
		.description(
			"write example pods, one per runtime class, running a sealed image (multi-document YAML)",
		)
		.option("--classes <LIST>", "runtime classes (or all)", "all")
		.option(
			"--image <REF>",
			"the sealed image the pods run",
			"registry.example.com/app:sealed",
		)
		.option("--namespace <NS>", "the pods' namespace (default: none set)")
		.option("--name-prefix <PREFIX>", "pod names are PREFIX + class", "dadi-")
		.option(
			"--no-handler-annotation",
			"leave out io.containerd.cri.runtime-handler (containerd 1.6, or 2.3+ with the kubelet's RuntimeClassInImageCriApi gate)",
		)
		.option("--out <FILE>", "write to FILE (atomically) instead of stdout")
		.option("--force", "replace an existing --out file")
		.option("--json", "print {ok, classes, out, manifests} as JSON")
		.action(async (f: Flags) =>
			runAction("dadi-k8s pods", Boolean(f.json), async () => {
				const classes = parseClassList(f.classes);
				const manifests = examplePods({
					classes,
					image: f.image,
					namePrefix: f.namePrefix,
					namespace: f.namespace,
					handlerAnnotation: f.handlerAnnotation,
				});
				const out = await emit(
					yamlDocuments(
						manifests,
						"Example pods for dadi's runtime classes, written by dadi-k8s pods (docs/kubernetes.md).\nOrdinary pods: runtimeClassName, and the annotation that makes containerd 1.7-2.2 pull with the class's snapshotter.",
					),
					f,
				);
				if (f.json) printJson({ ok: true, classes, out, manifests });
				else if (out)
					process.stdout.write(
						`wrote ${manifests.length} pod manifest(s) (${classes.join(", ")}) to ${out}\n`,
					);
			}),
		);
}
