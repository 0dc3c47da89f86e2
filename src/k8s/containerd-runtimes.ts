/**
 * One containerd CRI runtime per runtime class: its table of keys and its options table. The keys
 * are the same in config versions 2 and 3 (only the plugin they live under differs); `snapshotter`
 * exists from containerd 1.7 on and is left out for 1.6, which would ignore it silently.
 */
import { type ClassName, classInfo } from "./classes.js";
import {
	type ContainerdOptions,
	DADI_ANNOTATIONS,
	KATA_ANNOTATIONS,
} from "./containerd-options.js";
import type { TomlEntry } from "./toml-writer.js";

export interface RuntimeTables {
	name: ClassName;
	/** The shim containerd starts (io.containerd.<name>.<version> → containerd-shim-<name>-<version>). */
	runtimeType: string;
	comment: string;
	entries: TomlEntry[];
	options: TomlEntry[];
}

/** The io.containerd.kata-<shim>.v2 runtime type kata-deploy registers for a Kata shim. */
export function kataRuntimeType(shim: string): string {
	return `io.containerd.kata-${shim}.v2`;
}

function annotations(o: ContainerdOptions, kata: boolean): string[] {
	const list = kata ? [KATA_ANNOTATIONS, DADI_ANNOTATIONS] : [DADI_ANNOTATIONS];
	for (const a of o.extraAnnotations) if (!list.includes(a)) list.push(a);
	return list;
}

export function runtimeTables(
	name: ClassName,
	o: ContainerdOptions,
): RuntimeTables {
	const info = classInfo(name);
	const perRuntimeSnapshotter: TomlEntry[] =
		o.containerd === "1.6"
			? []
			: [
					{
						key: "snapshotter",
						value: snapshotterFor(name, o),
						comment:
							info.mode === "guest"
								? "containers of this runtime get their root file system from the guest-mode dadi snapshotter\n(it hands the sealed image to the sandbox and never holds a key)"
								: "containers of this runtime get their root file system from the dadi snapshotter",
					},
				];
	const cgroup: TomlEntry = {
		key: "SystemdCgroup",
		value: o.systemdCgroup,
		comment: "must match the kubelet's cgroup driver",
	};
	if (name === "runc-lazy") {
		const ann = annotations(o, false);
		return {
			name,
			runtimeType: "io.containerd.runc.v2",
			comment: `${info.summary}.`,
			entries: [
				{ key: "runtime_type", value: "io.containerd.runc.v2" },
				...perRuntimeSnapshotter,
				{ key: "pod_annotations", value: ann },
				{ key: "container_annotations", value: ann },
			],
			options: [
				{
					key: "BinaryName",
					value: o.runcBinary,
					comment:
						"the dadi wrapper in front of runc: applies the sealed image's own entrypoint and environment",
				},
				cgroup,
			],
		};
	}
	if (name === "gvisor") {
		const ann = annotations(o, false);
		if (o.gvisorShim === "runc")
			return {
				name,
				runtimeType: "io.containerd.runc.v2",
				comment: `${info.summary}.\nrunsc behind containerd's runc v2 shim (for nodes without containerd-shim-runsc-v1, e.g. Debian's runsc package); gVisor documents its own shim instead.`,
				entries: [
					{ key: "runtime_type", value: "io.containerd.runc.v2" },
					...perRuntimeSnapshotter,
					{ key: "pod_annotations", value: ann },
					{ key: "container_annotations", value: ann },
				],
				options: [
					{
						key: "BinaryName",
						value: o.runscBinary,
						comment: "the dadi wrapper in front of runsc",
					},
					cgroup,
				],
			};
		return {
			name,
			runtimeType: "io.containerd.runsc.v1",
			comment: `${info.summary}.\ngVisor's own containerd shim (containerd-shim-runsc-v1); its options file names the runsc binary and platform.`,
			entries: [
				{ key: "runtime_type", value: "io.containerd.runsc.v1" },
				...perRuntimeSnapshotter,
				{ key: "pod_annotations", value: ann },
				{ key: "container_annotations", value: ann },
			],
			options: [
				{ key: "TypeUrl", value: "io.containerd.runsc.v1.options" },
				{
					key: "ConfigPath",
					value: o.runscConfigPath,
					comment:
						"written by 'dadi-k8s runsc-config': binary_name (the dadi wrapper in front of runsc) and the platform",
				},
			],
		};
	}
	const shim = info.kataShim as string;
	const ann = annotations(o, true);
	return {
		name,
		runtimeType: kataRuntimeType(shim),
		comment: `${info.summary}.\nThe dadi snapshotter's mounts carry the sealed image reference into the guest (a KataVirtualVolume in the io.katacontainers.volume mount option).`,
		entries: [
			{ key: "runtime_type", value: kataRuntimeType(shim) },
			{
				key: "runtime_path",
				value: o.kataShimPath,
				comment: "one Kata shim binary serves every Kata runtime type",
			},
			...perRuntimeSnapshotter,
			{
				key: "privileged_without_host_devices",
				value: true,
				comment:
					"a privileged pod must not get the host's devices inside the VM",
			},
			{ key: "pod_annotations", value: ann },
			{ key: "container_annotations", value: ann },
		],
		options: [
			{
				key: "ConfigPath",
				value: `${o.kataConfigDir}/configuration-${shim}.toml`,
			},
		],
	};
}

/** The snapshotter a class's images are unpacked by: the guest-mode one for Kata classes. */
export function snapshotterFor(name: ClassName, o: ContainerdOptions): string {
	return classInfo(name).mode === "guest" && o.containerd !== "1.6"
		? o.guestSnapshotterName
		: o.snapshotterName;
}
