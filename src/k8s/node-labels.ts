/**
 * The node labels and taints the RuntimeClasses schedule by. A node gets them from its operator
 * (docs/kubernetes.md shows the kubectl commands): only nodes with the snapshotter (and gVisor, Kata,
 * the TEE) installed may run the class's pods.
 */
import type { ClassInfo } from "./classes.js";

/** Every node with the dadi snapshotter installed and configured in containerd. */
export const LABEL_SNAPSHOTTER = "dadi.dev/snapshotter";
/** Nodes with gVisor (runsc, and its containerd shim) installed. */
export const LABEL_GVISOR = "dadi.dev/gvisor";
/** The TEE a node offers (snp or tdx): also the key of the taint that reserves TEE nodes. */
export const LABEL_TEE = "dadi.dev/tee";
/** kata-deploy's own node label: Kata Containers is installed on the node. */
export const LABEL_KATA = "katacontainers.io/kata-runtime";

export interface Toleration {
	key: string;
	operator: "Equal" | "Exists";
	value?: string;
	effect: "NoSchedule" | "PreferNoSchedule" | "NoExecute";
}

export function nodeSelectorFor(c: ClassInfo): Record<string, string> {
	const sel: Record<string, string> = { [LABEL_SNAPSHOTTER]: "true" };
	if (c.name === "gvisor") sel[LABEL_GVISOR] = "true";
	if (c.mode === "guest") sel[LABEL_KATA] = "true";
	if (c.tee) sel[LABEL_TEE] = c.tee;
	return sel;
}

/**
 * TEE classes tolerate the taint `dadi.dev/tee=<tee>:NoSchedule`, with which an operator may keep
 * ordinary pods off the (scarce) TEE nodes. Harmless where the taint is not set.
 */
export function tolerationsFor(c: ClassInfo): Toleration[] {
	if (!c.tee) return [];
	return [
		{ key: LABEL_TEE, operator: "Equal", value: c.tee, effect: "NoSchedule" },
	];
}
