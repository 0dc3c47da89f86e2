/**
 * The runtime classes dadi installs, and what each one is. One table read by every generator
 * (RuntimeClass manifests, containerd runtimes, example pods), so a handler name cannot differ
 * between the cluster object and the node's containerd configuration.
 *
 * Host mode (runc-lazy, gvisor): the dadi snapshotter on the host holds the image key, decrypts and
 * serves the image lazily; the sandbox (runc's namespaces, or gVisor's Sentry) sees a normal rootfs.
 * Guest mode (Kata): the snapshotter hands the sealed image reference to the guest VM in a
 * KataVirtualVolume; the key is released to the attested guest and never reaches the host.
 */
import { DadiError } from "../errors.js";

export type ClassName =
	| "runc-lazy"
	| "gvisor"
	| "kata-qemu-snp"
	| "kata-qemu-tdx"
	| "kata-qemu-coco-dev";

export type Mode = "host" | "guest";
export type Tee = "snp" | "tdx";

export interface ClassInfo {
	name: ClassName;
	mode: Mode;
	/** The TEE a guest-mode class needs; none for host mode and for the coco-dev class. */
	tee?: Tee;
	/** Kata's shim name (kata-deploy's "shim"): configuration-<shim>.toml, io.containerd.kata-<shim>.v2. */
	kataShim?: string;
	/**
	 * Pod overhead: the VM's memory and vCPU outside the containers' requests. The values are the
	 * ones kata-deploy's Helm chart gives these shims (qemu-snp/qemu-tdx 2048Mi and 1 CPU: the
	 * confidential VM's memory is encrypted and pinned; qemu-coco-dev 160Mi and 250m).
	 */
	overhead?: { memory: string; cpu: string };
	summary: string;
}

export const CLASSES: readonly ClassInfo[] = [
	{
		name: "runc-lazy",
		mode: "host",
		summary:
			"runc with the dadi snapshotter: the image is fetched lazily and decrypted on the host (the host holds the key)",
	},
	{
		name: "gvisor",
		mode: "host",
		summary:
			"gVisor (runsc) with the dadi snapshotter: lazily decrypted on the host, the workload behind gVisor's Sentry (the host holds the key)",
	},
	{
		name: "kata-qemu-snp",
		mode: "guest",
		tee: "snp",
		kataShim: "qemu-snp",
		overhead: { memory: "2048Mi", cpu: "1" },
		summary:
			"Kata Containers in an AMD SEV-SNP VM: the guest attests and gets the key; the host sees ciphertext only",
	},
	{
		name: "kata-qemu-tdx",
		mode: "guest",
		tee: "tdx",
		kataShim: "qemu-tdx",
		overhead: { memory: "2048Mi", cpu: "1" },
		summary:
			"Kata Containers in an Intel TDX VM: the guest attests and gets the key; the host sees ciphertext only",
	},
	{
		name: "kata-qemu-coco-dev",
		mode: "guest",
		kataShim: "qemu-coco-dev",
		overhead: { memory: "160Mi", cpu: "250m" },
		summary:
			"Kata Containers in a plain VM with the confidential-containers stack, no TEE: development only (its evidence proves nothing)",
	},
];

export const CLASS_NAMES: readonly ClassName[] = CLASSES.map((c) => c.name);

export function classInfo(name: ClassName): ClassInfo {
	const c = CLASSES.find((x) => x.name === name);
	if (!c) throw new DadiError("INTERNAL", `no runtime class ${name}`);
	return c;
}

/**
 * "runc-lazy,kata-qemu-snp" or "all" → the classes in catalogue order, each once. An unknown name
 * is a USAGE error listing the known ones.
 */
export function parseClassList(text: string, what = "--classes"): ClassName[] {
	const parts = text
		.split(",")
		.map((s) => s.trim())
		.filter((s) => s !== "");
	if (parts.length === 0)
		throw new DadiError(
			"USAGE",
			`${what}: empty; give class names separated by commas (${CLASS_NAMES.join(", ")}) or "all"`,
		);
	if (parts.includes("all")) return [...CLASS_NAMES];
	for (const p of parts)
		if (!CLASS_NAMES.includes(p as ClassName))
			throw new DadiError(
				"USAGE",
				`${what}: unknown runtime class ${JSON.stringify(p)}; known: ${CLASS_NAMES.join(", ")} (or "all")`,
			);
	return CLASS_NAMES.filter((n) => parts.includes(n));
}
