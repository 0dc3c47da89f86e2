/**
 * RuntimeClass manifests (node.k8s.io/v1) for dadi's runtime classes. Pure: options in, objects out.
 * The handler is the class name, which is also the containerd runtime name the node's
 * configuration defines (containerd-config.ts), so the two always agree.
 */
import {
	checkDnsSubdomain,
	checkLabelValue,
	checkQualifiedName,
	checkQuantity,
} from "./checks.js";
import { type ClassName, classInfo } from "./classes.js";
import {
	nodeSelectorFor,
	type Toleration,
	tolerationsFor,
} from "./node-labels.js";

export interface Overhead {
	memory: string;
	cpu: string;
}

export interface RuntimeClassOptions {
	classes: readonly ClassName[];
	/** Per class: another pod overhead, or null for none. Unlisted classes keep their default. */
	overhead?: Partial<Record<ClassName, Overhead | null>>;
	/** More node labels every class requires (e.g. a node pool), on top of the class's own. */
	extraNodeSelector?: Record<string, string>;
	/** false: no scheduling section at all (every node has everything). Default true. */
	scheduling?: boolean;
}

export interface RuntimeClassManifest {
	apiVersion: "node.k8s.io/v1";
	kind: "RuntimeClass";
	metadata: {
		name: string;
		labels: Record<string, string>;
		annotations: Record<string, string>;
	};
	handler: string;
	overhead?: { podFixed: Record<string, string> };
	scheduling?: {
		nodeSelector: Record<string, string>;
		tolerations?: Toleration[];
	};
}

export const MANAGED_BY = { "app.kubernetes.io/managed-by": "dadi-k8s" };

export function runtimeClassManifests(
	opts: RuntimeClassOptions,
): RuntimeClassManifest[] {
	const extra = opts.extraNodeSelector ?? {};
	for (const [k, v] of Object.entries(extra)) {
		checkQualifiedName(k, "--node-selector key");
		checkLabelValue(v, `--node-selector value of ${k}`);
	}
	return opts.classes.map((name) => {
		const info = classInfo(name);
		checkDnsSubdomain(name, "runtime class name");
		const overhead =
			opts.overhead && name in opts.overhead
				? opts.overhead[name]
				: info.overhead;
		const rc: RuntimeClassManifest = {
			apiVersion: "node.k8s.io/v1",
			kind: "RuntimeClass",
			metadata: {
				name,
				labels: { ...MANAGED_BY, "dadi.dev/mode": info.mode },
				annotations: { "dadi.dev/description": info.summary },
			},
			handler: name,
		};
		if (overhead) {
			checkQuantity(overhead.memory, `--overhead ${name} memory`);
			checkQuantity(overhead.cpu, `--overhead ${name} cpu`);
			rc.overhead = {
				podFixed: { memory: overhead.memory, cpu: overhead.cpu },
			};
		}
		if (opts.scheduling !== false) {
			const tolerations = tolerationsFor(info);
			rc.scheduling = {
				nodeSelector: { ...nodeSelectorFor(info), ...extra },
				...(tolerations.length > 0 ? { tolerations } : {}),
			};
		}
		return rc;
	});
}
