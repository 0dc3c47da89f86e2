/**
 * containerd configuration for the dadi snapshotter and runtime classes, as TOML text. Pure.
 *
 * What differs between the containerd lines (read from containerd's source, docs/kubernetes.md §3):
 *
 * - 1.6 (config version 2): the CRI plugin `io.containerd.grpc.v1.cri` has ONE snapshotter for every
 *   pod (`[plugins."io.containerd.grpc.v1.cri".containerd] snapshotter`); runtimes have no
 *   `snapshotter` key. So the 1.6 configuration makes dadi the CRI-wide snapshotter: every pod's
 *   image, sealed or not, goes through the dadi snapshotter.
 * - 1.7 (config version 2): runtimes have `snapshotter`, used when a container is created; the pull
 *   picks the runtime's snapshotter only when the pod carries `io.containerd.cri.runtime-handler`.
 * - 2.x (config version 3): CRI is split into `io.containerd.cri.v1.images` (snapshotter,
 *   disable_snapshot_annotations, discard_unpacked_layers, runtime_platforms) and
 *   `io.containerd.cri.v1.runtime` (runtimes). The pull's snapshotter per runtime comes from
 *   `runtime_platforms.<runtime>.snapshotter` — the runtime's own `snapshotter` is not consulted for
 *   pulls, and a version-2 file's per-runtime snapshotters are not migrated there — so both are set.
 *
 * In 1.x, a file pulled in with `imports` replaces whole plugin sections of the main file; in 2.x
 * imported plugin tables are merged key by key. Hence the 1.x output is a complete CRI section (it
 * keeps the default runc runtime) and the 2.x output is a drop-in.
 */
import type { ClassName } from "./classes.js";
import {
	type ContainerdOptions,
	checkContainerdOptions,
} from "./containerd-options.js";
import { runtimeTables, snapshotterFor } from "./containerd-runtimes.js";
import { type TomlEntry, type TomlTable, writeToml } from "./toml-writer.js";

export const CRI_V2 = "io.containerd.grpc.v1.cri";
export const CRI_IMAGES_V3 = "io.containerd.cri.v1.images";
export const CRI_RUNTIME_V3 = "io.containerd.cri.v1.runtime";

export interface ContainerdConfig {
	/** The `version` at the top of the file: 2 for containerd 1.x, 3 for 2.x. */
	configVersion: 2 | 3;
	toml: string;
	runtimes: { name: ClassName; runtimeType: string; snapshotter: string }[];
}

function proxyPlugin(
	o: ContainerdOptions,
	name: string,
	socket: string,
	root: string,
	comment: string,
): TomlTable {
	const entries: TomlEntry[] = [
		{ key: "type", value: "snapshot" },
		{
			key: "address",
			value: socket,
			comment:
				"dadi-snapshotter serve --address unix:<this path>; containerd connects when a snapshot is first needed",
		},
	];
	if (o.containerd !== "1.6")
		entries.push({
			key: "exports",
			value: { root },
			comment:
				"the snapshotter's --root: where CRI looks for the image file system's usage",
		});
	return { path: ["proxy_plugins", name], comment, entries };
}

/** The host-mode snapshotter, and the guest-mode one when Kata classes can use it (1.7, 2.x). */
function proxyPlugins(o: ContainerdOptions): TomlTable[] {
	const out = [
		proxyPlugin(
			o,
			o.snapshotterName,
			o.snapshotterSocket,
			o.snapshotterRoot,
			"The dadi snapshotter (dadi-snapshotter serve --mode host), a proxy plugin speaking containerd's\nsnapshots API over gRPC.",
		),
	];
	if (o.classes.some((c) => snapshotterFor(c, o) === o.guestSnapshotterName))
		out.push(
			proxyPlugin(
				o,
				o.guestSnapshotterName,
				o.guestSnapshotterSocket,
				o.guestSnapshotterRoot,
				"The guest-mode dadi snapshotter for Kata (dadi-snapshotter serve --mode guest): a second process\nwith a root of its own; it fetches and decrypts nothing and never holds an image key.",
			),
		);
	return out;
}

const ANNOTATIONS_COMMENT =
	"CRI passes containerd.io/snapshot/cri.* labels (image reference, manifest and layer digests) to\nthe snapshotter only when this is false; the dadi snapshotter needs them to find sealed layers.";
const DISCARD_COMMENT =
	"false keeps layer blobs in the content store, so an image can still be unpacked into another\nsnapshotter (runtime classes that use different snapshotters).";

function runtimeTablesFor(
	o: ContainerdOptions,
	criPath: readonly string[],
): TomlTable[] {
	const out: TomlTable[] = [];
	for (const name of o.classes) {
		const rt = runtimeTables(name, o);
		const base = [...criPath, "containerd", "runtimes", name];
		out.push({ path: base, comment: rt.comment, entries: rt.entries });
		out.push({ path: [...base, "options"], entries: rt.options });
	}
	return out;
}

function version2(o: ContainerdOptions): TomlTable[] {
	const cri = ["plugins", CRI_V2];
	const containerd: TomlEntry[] = [];
	if (o.containerd === "1.6")
		containerd.push({
			key: "snapshotter",
			value: o.snapshotterName,
			comment:
				"containerd 1.6 has one CRI snapshotter for every pod (runtimes cannot choose one):\nevery image on this node, sealed or not, is unpacked by the dadi snapshotter.",
		});
	containerd.push(
		{ key: "default_runtime_name", value: "runc" },
		{
			key: "disable_snapshot_annotations",
			value: false,
			comment: ANNOTATIONS_COMMENT,
		},
		{
			key: "discard_unpacked_layers",
			value: o.discardUnpackedLayers,
			comment: DISCARD_COMMENT,
		},
	);
	return [
		{ path: [], entries: [{ key: "version", value: 2 }] },
		...proxyPlugins(o),
		{ path: [...cri, "containerd"], entries: containerd },
		{
			path: [...cri, "containerd", "runtimes", "runc"],
			comment:
				"The default runtime for pods without a runtime class. Kept here because in containerd 1.x a\nfile read through `imports` replaces the main file's whole CRI section.",
			entries: [{ key: "runtime_type", value: "io.containerd.runc.v2" }],
		},
		{
			path: [...cri, "containerd", "runtimes", "runc", "options"],
			entries: [
				{
					key: "SystemdCgroup",
					value: o.systemdCgroup,
					comment: "must match the kubelet's cgroup driver",
				},
			],
		},
		...runtimeTablesFor(o, cri),
	];
}

function version3(o: ContainerdOptions): TomlTable[] {
	const images = ["plugins", CRI_IMAGES_V3];
	const tables: TomlTable[] = [
		{ path: [], entries: [{ key: "version", value: 3 }] },
		...proxyPlugins(o),
		{
			path: images,
			entries: [
				{
					key: "disable_snapshot_annotations",
					value: false,
					comment: ANNOTATIONS_COMMENT,
				},
				{
					key: "discard_unpacked_layers",
					value: o.discardUnpackedLayers,
					comment: DISCARD_COMMENT,
				},
			],
		},
	];
	for (const name of o.classes)
		tables.push({
			path: [...images, "runtime_platforms", name],
			comment:
				name === o.classes[0]
					? "Which snapshotter unpacks an image pulled for a runtime (the pull reads this, not the runtime's\nown snapshotter key); the runtime is known from the kubelet (RuntimeClassInImageCriApi, containerd\n2.3+) or from the pod annotation io.containerd.cri.runtime-handler."
					: undefined,
			entries: [{ key: "snapshotter", value: snapshotterFor(name, o) }],
		});
	return [...tables, ...runtimeTablesFor(o, ["plugins", CRI_RUNTIME_V3])];
}

export function containerdConfig(o: ContainerdOptions): ContainerdConfig {
	checkContainerdOptions(o);
	const v3 = o.containerd === "2";
	const header = [
		`containerd ${o.containerd === "2" ? "2.x" : o.containerd} configuration for the dadi snapshotter and runtime classes`,
		`(${o.classes.join(", ")}), written by dadi-k8s containerd-config. See docs/kubernetes.md.`,
		v3
			? "A drop-in: list it in the main config's `imports` (containerd 2.x merges plugin tables key by key)."
			: "Use it as /etc/containerd/config.toml, or merge it by hand: containerd 1.x's `imports` replace\nwhole plugin sections, so this file's CRI section would replace the main file's.",
	].join("\n");
	return {
		configVersion: v3 ? 3 : 2,
		toml: writeToml(v3 ? version3(o) : version2(o), header),
		runtimes: o.classes.map((name) => ({
			name,
			runtimeType: runtimeTables(name, o).runtimeType,
			snapshotter: snapshotterFor(name, o),
		})),
	};
}
