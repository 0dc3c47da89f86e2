/**
 * Example pods, one per runtime class: an ordinary pod whose only differences are
 * `runtimeClassName` and, unless turned off, the annotation `io.containerd.cri.runtime-handler`.
 *
 * Why the annotation: the kubelet's PullImage request does not say which runtime class the image is
 * for (unless its RuntimeClassInImageCriApi feature gate is on and containerd is 2.3 or later), so
 * containerd 1.7 to 2.2 choose the snapshotter for the pull from this pod annotation. Without it
 * the image is pulled by the default snapshotter, not by dadi. containerd 1.6 ignores it (one
 * snapshotter for every pod), and so does a containerd that gets the handler from the kubelet.
 */
import {
	checkDnsLabel,
	checkDnsSubdomain,
	checkImageReference,
} from "./checks.js";
import type { ClassName } from "./classes.js";
import { MANAGED_BY } from "./runtime-classes.js";

/** containerd's (experimental) pod annotation naming the runtime handler for image pulls. */
export const RUNTIME_HANDLER_ANNOTATION = "io.containerd.cri.runtime-handler";

export interface PodOptions {
	classes: readonly ClassName[];
	/** The sealed image, e.g. registry.example.com/app:sealed. */
	image: string;
	/** Pod names are `${namePrefix}${class}`. */
	namePrefix?: string;
	namespace?: string;
	/** Add io.containerd.cri.runtime-handler (default true). */
	handlerAnnotation?: boolean;
	/** Container command (default: the image's own entrypoint). */
	command?: string[];
}

export interface PodManifest {
	apiVersion: "v1";
	kind: "Pod";
	metadata: {
		name: string;
		namespace?: string;
		labels: Record<string, string>;
		annotations?: Record<string, string>;
	};
	spec: {
		runtimeClassName: string;
		restartPolicy: "Never";
		containers: {
			name: string;
			image: string;
			command?: string[];
		}[];
	};
}

export function examplePods(opts: PodOptions): PodManifest[] {
	checkImageReference(opts.image, "--image");
	const prefix = opts.namePrefix ?? "dadi-";
	if (opts.namespace !== undefined)
		checkDnsLabel(opts.namespace, "--namespace");
	return opts.classes.map((name) => {
		const podName = checkDnsSubdomain(
			`${prefix}${name}`,
			"pod name (--name-prefix and the class name)",
		);
		const pod: PodManifest = {
			apiVersion: "v1",
			kind: "Pod",
			metadata: {
				name: podName,
				...(opts.namespace !== undefined ? { namespace: opts.namespace } : {}),
				labels: { ...MANAGED_BY, "dadi.dev/runtime-class": name },
				...(opts.handlerAnnotation === false
					? {}
					: { annotations: { [RUNTIME_HANDLER_ANNOTATION]: name } }),
			},
			spec: {
				runtimeClassName: name,
				restartPolicy: "Never",
				containers: [
					{
						name: "app",
						image: opts.image,
						...(opts.command && opts.command.length > 0
							? { command: [...opts.command] }
							: {}),
					},
				],
			},
		};
		return pod;
	});
}
