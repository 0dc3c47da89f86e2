/**
 * What the containerd configuration generator takes: the containerd line it is for, the node's
 * paths, and the classes to define. Defaults are the paths docs/kubernetes.md installs to.
 */
import { DadiError } from "../errors.js";
import { checkAbsolutePath, checkAnnotationPattern } from "./checks.js";
import type { ClassName } from "./classes.js";

/**
 * The containerd lines that differ in configuration: 1.6 (config version 2, one CRI snapshotter),
 * 1.7 (config version 2, per-runtime snapshotters), 2 (2.x: config version 3, CRI split into the
 * io.containerd.cri.v1.images and io.containerd.cri.v1.runtime plugins).
 */
export type ContainerdLine = "1.6" | "1.7" | "2";

export type GvisorShim = "runsc" | "runc";
export type GvisorPlatform = "systrap" | "ptrace" | "kvm";

export interface ContainerdOptions {
	containerd: ContainerdLine;
	classes: readonly ClassName[];
	/** The proxy plugin's name: the snapshotter name runtimes refer to. */
	snapshotterName: string;
	/** The snapshotter's gRPC unix socket (dadi-snapshotter serve --address unix:PATH). */
	snapshotterSocket: string;
	/** The snapshotter's state directory (dadi-snapshotter serve --root), exported to CRI for image-fs stats. */
	snapshotterRoot: string;
	/**
	 * The guest-mode snapshotter Kata classes use (`dadi-snapshotter serve --mode guest`: a second
	 * process with a root of its own, which never holds keys): its name, socket and root.
	 */
	guestSnapshotterName: string;
	guestSnapshotterSocket: string;
	guestSnapshotterRoot: string;
	/** runc-lazy's OCI runtime binary: the dadi wrapper in front of runc. */
	runcBinary: string;
	/** gvisor's OCI runtime binary: the dadi wrapper in front of runsc. */
	runscBinary: string;
	/** runsc: gVisor's own containerd shim (containerd-shim-runsc-v1); runc: the runc v2 shim running runsc. */
	gvisorShim: GvisorShim;
	/** Where the runsc shim's options file lives (ConfigPath; runsc-config writes it). */
	runscConfigPath: string;
	/** Kata's containerd shim binary (runtime_path). */
	kataShimPath: string;
	/** The directory with Kata's configuration-<shim>.toml files. */
	kataConfigDir: string;
	/** runc's cgroup driver: must match the kubelet's (systemd on kubeadm clusters). */
	systemdCgroup: boolean;
	/** More annotation patterns passed through to the runtimes, besides io.dadi.* (and io.katacontainers.* for Kata). */
	extraAnnotations: readonly string[];
	/** Let containerd's GC delete layer blobs once unpacked. */
	discardUnpackedLayers: boolean;
}

export const CONTAINERD_DEFAULTS: Omit<
	ContainerdOptions,
	"containerd" | "classes"
> = {
	snapshotterName: "dadi",
	snapshotterSocket: "/run/dadi-snapshotter/snapshotter.sock",
	snapshotterRoot: "/var/lib/dadi-snapshotter",
	guestSnapshotterName: "dadi-guest",
	guestSnapshotterSocket: "/run/dadi-snapshotter/guest.sock",
	guestSnapshotterRoot: "/var/lib/dadi-snapshotter-guest",
	runcBinary: "/usr/local/bin/dadi-runc",
	runscBinary: "/usr/local/bin/dadi-runsc",
	gvisorShim: "runsc",
	runscConfigPath: "/etc/containerd/runsc.toml",
	kataShimPath: "/opt/kata/bin/containerd-shim-kata-v2",
	kataConfigDir: "/opt/kata/share/defaults/kata-containers",
	systemdCgroup: true,
	extraAnnotations: [],
	discardUnpackedLayers: false,
};

/** Annotation patterns every runtime passes through: dadi's own. */
export const DADI_ANNOTATIONS = "io.dadi.*";
/** Kata reads its per-pod settings from these (when its configuration enables them). */
export const KATA_ANNOTATIONS = "io.katacontainers.*";

/** "1.6", "1.6.20", "1.7", "1.7.x", "2", "2.0", "2.x", "2.1.4" → the configuration line. */
export function parseContainerdLine(text: string): ContainerdLine {
	const t = text.trim();
	if (/^1\.6(\.(\d+|x))?$/.test(t)) return "1.6";
	if (/^1\.7(\.(\d+|x))?$/.test(t)) return "1.7";
	if (/^2(\.(\d+|x))?(\.(\d+|x))?$/.test(t)) return "2";
	throw new DadiError(
		"USAGE",
		`--containerd ${JSON.stringify(text)}: give 1.6, 1.7 or 2 (any 2.x); containerd 1.5 and older are not supported (end of life)`,
	);
}

export function checkContainerdOptions(o: ContainerdOptions): void {
	if (!/^[a-z][a-z0-9_-]{0,62}$/.test(o.snapshotterName))
		throw new DadiError(
			"USAGE",
			`--snapshotter-name ${JSON.stringify(o.snapshotterName)}: must be a lowercase name (letters, digits, '-', '_'), as containerd plugin ids are`,
		);
	checkAbsolutePath(o.snapshotterSocket, "--snapshotter-socket");
	if (Buffer.byteLength(o.snapshotterSocket) > 107)
		throw new DadiError(
			"USAGE",
			`--snapshotter-socket ${JSON.stringify(o.snapshotterSocket)}: longer than 107 bytes, the most a unix socket path can have (sun_path); choose a shorter path`,
		);
	checkAbsolutePath(o.snapshotterRoot, "--snapshotter-root");
	checkAbsolutePath(o.runcBinary, "--runc-binary");
	checkAbsolutePath(o.runscBinary, "--runsc-binary");
	checkAbsolutePath(o.runscConfigPath, "--runsc-config");
	checkAbsolutePath(o.kataShimPath, "--kata-shim");
	checkAbsolutePath(o.kataConfigDir, "--kata-config-dir");
	for (const a of o.extraAnnotations)
		checkAnnotationPattern(a, "--annotations");
	if (o.classes.length === 0)
		throw new DadiError("USAGE", "--classes: no runtime class to configure");
}
