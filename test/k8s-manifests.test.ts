/**
 * RuntimeClass manifests and example pods: validated against the Kubernetes OpenAPI schemas
 * (kubernetes-models' validators, generated from Kubernetes' own OpenAPI spec) after a round trip
 * through the YAML the command prints; a wrong field type is caught; option values Kubernetes would
 * refuse are USAGE errors before anything is written.
 */
import fc from "fast-check";
import { RuntimeClass } from "kubernetes-models/node.k8s.io/v1/RuntimeClass";
import { Pod } from "kubernetes-models/v1/Pod";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import {
	CLASS_NAMES,
	type ClassName,
	parseClassList,
} from "../src/k8s/classes.js";
import { examplePods, RUNTIME_HANDLER_ANNOTATION } from "../src/k8s/pods.js";
import { runtimeClassManifests } from "../src/k8s/runtime-classes.js";
import { yamlDocuments } from "../src/k8s/yaml-docs.js";
import { thrown } from "./helpers.js";

// biome-ignore lint/suspicious/noExplicitAny: parsed manifests are walked and mutated freely
type Loose = any;

/** The documents of a multi-document YAML stream, as plain objects. */
function docs(yamlText: string): Record<string, unknown>[] {
	return parseAllDocuments(yamlText).map((d) => {
		expect(d.errors).toEqual([]);
		return d.toJS() as Record<string, unknown>;
	});
}

/**
 * Throws kubernetes-models' ValidationError when the object does not match the schema. The schemas
 * accept unknown fields (as the API server's non-strict decoding does), so the fields the objects
 * may have are checked here too: a misspelt field would otherwise be dropped silently.
 */
function validate(o: Record<string, unknown>): void {
	const only = (obj: unknown, keys: string[], at: string): void => {
		for (const k of Object.keys(obj as object))
			if (!keys.includes(k)) throw new Error(`${at}: unexpected field ${k}`);
	};
	if (o.kind === "RuntimeClass") {
		new RuntimeClass(o as never).validate();
		only(
			o,
			["apiVersion", "kind", "metadata", "handler", "overhead", "scheduling"],
			"RuntimeClass",
		);
		if (o.scheduling)
			only(o.scheduling, ["nodeSelector", "tolerations"], "scheduling");
	} else if (o.kind === "Pod") {
		new Pod(o as never).validate();
		only(o, ["apiVersion", "kind", "metadata", "spec"], "Pod");
		only(
			o.spec,
			["runtimeClassName", "restartPolicy", "containers"],
			"Pod spec",
		);
	} else throw new Error(`unexpected kind ${String(o.kind)}`);
	only(o.metadata, ["name", "namespace", "labels", "annotations"], "metadata");
}

const classArb = fc.subarray([...CLASS_NAMES], { minLength: 1 });
const labelName = fc.stringMatching(/^[a-z0-9]([-a-z0-9_.]{0,20}[a-z0-9])?$/);

describe("RuntimeClass manifests", () => {
	it("all five classes: schema-valid after YAML, handlers = names, overhead and scheduling as designed", () => {
		const text = yamlDocuments(
			runtimeClassManifests({ classes: CLASS_NAMES }),
			"header",
		);
		const all = docs(text);
		expect(all.map((d) => (d.metadata as { name: string }).name)).toEqual([
			"runc-lazy",
			"gvisor",
			"kata-qemu-snp",
			"kata-qemu-tdx",
			"kata-qemu-coco-dev",
		]);
		for (const d of all) {
			validate(d);
			expect(d.apiVersion).toBe("node.k8s.io/v1");
			expect(d.handler).toBe((d.metadata as { name: string }).name);
		}
		const [runc, gvisor, snp, tdx, dev] = all as Loose[];
		expect(runc?.overhead).toBeUndefined();
		expect(gvisor?.scheduling.nodeSelector).toEqual({
			"dadi.dev/snapshotter": "true",
			"dadi.dev/gvisor": "true",
		});
		expect(snp?.overhead.podFixed).toEqual({ memory: "2048Mi", cpu: "1" });
		expect(snp?.scheduling.nodeSelector["dadi.dev/tee"]).toBe("snp");
		expect(snp?.scheduling.tolerations).toEqual([
			{
				key: "dadi.dev/tee",
				operator: "Equal",
				value: "snp",
				effect: "NoSchedule",
			},
		]);
		expect(tdx?.scheduling.nodeSelector["dadi.dev/tee"]).toBe("tdx");
		expect(tdx?.scheduling.nodeSelector["katacontainers.io/kata-runtime"]).toBe(
			"true",
		);
		expect(dev?.overhead.podFixed).toEqual({ memory: "160Mi", cpu: "250m" });
		expect(dev?.scheduling.nodeSelector["dadi.dev/tee"]).toBeUndefined();
		// YAML must keep "true" and "1" strings (a bool or number fails the schema).
		expect(text).toContain('dadi.dev/snapshotter: "true"');
		expect(text).toContain('cpu: "1"');
	});

	it("the schema check can fail: a wrong field type, a missing handler, a bad quantity", () => {
		const [rc] = runtimeClassManifests({ classes: ["kata-qemu-snp"] });
		const good = JSON.parse(JSON.stringify(rc));
		validate(good);
		const bad = (mutate: (o: Loose) => void): void => {
			const o = JSON.parse(JSON.stringify(rc));
			mutate(o);
			expect(() => validate(o)).toThrow();
		};
		bad((o) => {
			o.handler = 5;
		});
		bad((o) => {
			delete o.handler;
		});
		bad((o) => {
			o.overhead.podFixed.memory = "lots";
		});
		bad((o) => {
			o.scheduling.nodeSelector["dadi.dev/snapshotter"] = true;
		});
		bad((o) => {
			o.scheduling.tolerations = { key: "x" };
		});
		bad((o) => {
			o.overHead = o.overhead;
			delete o.overhead;
		});
	});

	it("overrides: another overhead, none, extra node selectors, no scheduling", () => {
		const [snp, gv] = runtimeClassManifests({
			classes: ["kata-qemu-snp", "gvisor"],
			overhead: {
				"kata-qemu-snp": null,
				gvisor: { memory: "64Mi", cpu: "100m" },
			},
			extraNodeSelector: { "node.example.com/pool": "confidential" },
		});
		expect(snp?.overhead).toBeUndefined();
		expect(gv?.overhead?.podFixed).toEqual({ memory: "64Mi", cpu: "100m" });
		expect(snp?.scheduling?.nodeSelector["node.example.com/pool"]).toBe(
			"confidential",
		);
		const [plain] = runtimeClassManifests({
			classes: ["runc-lazy"],
			scheduling: false,
		});
		expect(plain?.scheduling).toBeUndefined();
		validate(plain as never);
	});

	it("bad option values are USAGE errors naming the option", () => {
		const e1 = thrown(() =>
			runtimeClassManifests({
				classes: ["gvisor"],
				overhead: { gvisor: { memory: "a lot", cpu: "1" } },
			}),
		);
		expect(e1.code).toBe("USAGE");
		expect(e1.message).toContain("--overhead gvisor memory");
		for (const [k, v] of [
			["-bad", "x"],
			["UPPER.example.com/x", "y"],
			["ok", "not valid!"],
			["ok", "x".repeat(64)],
		] as const) {
			const e = thrown(() =>
				runtimeClassManifests({
					classes: ["gvisor"],
					extraNodeSelector: { [k]: v },
				}),
			);
			expect(e.code, `${k}=${v}`).toBe("USAGE");
			expect(e.message).toContain("--node-selector");
		}
		expect(thrown(() => parseClassList("runc,gvisor")).code).toBe("USAGE");
		expect(thrown(() => parseClassList(" , ")).code).toBe("USAGE");
		expect(parseClassList("kata-qemu-tdx,runc-lazy,runc-lazy")).toEqual([
			"runc-lazy",
			"kata-qemu-tdx",
		]);
	});

	it("property: any valid node selector and overhead gives manifests that validate", () => {
		fc.assert(
			fc.property(
				classArb,
				fc.dictionary(
					fc
						.tuple(
							fc.option(fc.constantFrom("example.com", "a.b.c")),
							labelName,
						)
						.map(([p, n]) => (p ? `${p}/${n}` : n))
						.filter((k) => !k.startsWith("dadi.dev/")),
					fc.oneof(fc.constant(""), labelName),
					{ maxKeys: 4 },
				),
				fc.integer({ min: 1, max: 65536 }),
				fc.integer({ min: 1, max: 8000 }),
				(classes, sel, mi, milli) => {
					const overhead = Object.fromEntries(
						classes.map((c) => [c, { memory: `${mi}Mi`, cpu: `${milli}m` }]),
					);
					const text = yamlDocuments(
						runtimeClassManifests({
							classes,
							overhead,
							extraNodeSelector: sel,
						}),
					);
					const all = docs(text);
					expect(all).toHaveLength(classes.length);
					for (const d of all) {
						validate(d);
						expect((d as Loose).scheduling.nodeSelector).toMatchObject(sel);
					}
				},
			),
			{ numRuns: 60 },
		);
	});

	it("property: a node-selector key or value outside Kubernetes' rules is a USAGE error", () => {
		fc.assert(
			fc.property(
				fc.oneof(
					fc.string({ minLength: 1, maxLength: 8 }).map((s) => [`${s} !`, "v"]),
					fc.string({ minLength: 1, maxLength: 8 }).map((s) => ["k", `${s}?*`]),
					fc.constant(["k/", "v"]),
					fc.constant(["a".repeat(64), "v"]),
				),
				([k, v]) => {
					const e = thrown(() =>
						runtimeClassManifests({
							classes: ["runc-lazy"],
							extraNodeSelector: { [k as string]: v as string },
						}),
					);
					expect(e.code).toBe("USAGE");
				},
			),
			{ numRuns: 60 },
		);
	});
});

describe("example pods", () => {
	it("one ordinary pod per class: runtimeClassName and the runtime-handler annotation, schema-valid", () => {
		const all = docs(
			yamlDocuments(
				examplePods({
					classes: CLASS_NAMES,
					image: "registry.example.com/app:sealed",
					namespace: "demo",
				}),
			),
		);
		expect(all).toHaveLength(5);
		for (const [i, d] of all.entries()) {
			validate(d);
			const cls = CLASS_NAMES[i] as ClassName;
			const pod = d as Loose;
			expect(pod.spec.runtimeClassName).toBe(cls);
			expect(pod.metadata.name).toBe(`dadi-${cls}`);
			expect(pod.metadata.namespace).toBe("demo");
			expect(pod.metadata.annotations).toEqual({
				[RUNTIME_HANDLER_ANNOTATION]: cls,
			});
			expect(pod.spec.containers).toEqual([
				{ name: "app", image: "registry.example.com/app:sealed" },
			]);
		}
		const [bare] = examplePods({
			classes: ["runc-lazy"],
			image: `registry.example.com/app@sha256:${"a".repeat(64)}`,
			handlerAnnotation: false,
			command: ["/bin/sh", "-c", "echo hi"],
		});
		expect(bare?.metadata.annotations).toBeUndefined();
		expect(bare?.spec.containers[0]?.command).toEqual([
			"/bin/sh",
			"-c",
			"echo hi",
		]);
		validate(bare as never);
	});

	it("the pod schema check can fail: a container port as a string", () => {
		const [p] = examplePods({
			classes: ["gvisor"],
			image: "registry.example.com/app:sealed",
		});
		const o = JSON.parse(JSON.stringify(p));
		o.spec.containers[0].ports = [{ containerPort: "80" }];
		expect(() => validate(o)).toThrow(/containerPort/);
	});

	it("bad image, namespace or name prefix: USAGE", () => {
		for (const [opts, what] of [
			[{ image: "docker://registry.example.com/app:1" }, "--image"],
			[{ image: "Registry.example.com/App" }, "--image"],
			[{ image: "r.example.com/app:sealed", namespace: "Demo" }, "--namespace"],
			[{ image: "r.example.com/app:sealed", namePrefix: "Bad_" }, "pod name"],
		] as const) {
			const e = thrown(() =>
				examplePods({ classes: ["runc-lazy"], ...(opts as Loose) }),
			);
			expect(e.code).toBe("USAGE");
			expect(e.message).toContain(what);
		}
	});

	it("property: any valid image, namespace and prefix gives pods that validate", () => {
		const comp = fc.stringMatching(/^[a-z0-9]{1,8}$/);
		fc.assert(
			fc.property(
				classArb,
				fc.tuple(
					comp,
					comp,
					fc.option(fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,10}$/)),
				),
				comp,
				fc.stringMatching(/^[a-z][a-z0-9-]{0,8}-$/),
				(classes, [host, repo, tag], ns, prefix) => {
					const image = `${host}.example.com/${repo}${tag ? `:${tag}` : ""}`;
					const all = docs(
						yamlDocuments(
							examplePods({
								classes,
								image,
								namespace: ns,
								namePrefix: prefix,
							}),
						),
					);
					for (const d of all) {
						validate(d);
						expect((d as Loose).spec.containers[0].image).toBe(image);
					}
				},
			),
			{ numRuns: 60 },
		);
	});
});
