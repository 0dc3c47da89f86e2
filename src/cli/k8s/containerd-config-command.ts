/** `dadi-k8s containerd-config`: the node's containerd configuration for the snapshotter and runtimes. */
import type { Command } from "commander";
import { DadiError } from "../../errors.js";
import { parseClassList } from "../../k8s/classes.js";
import { containerdConfig } from "../../k8s/containerd-config.js";
import {
	CONTAINERD_DEFAULTS,
	type ContainerdOptions,
	parseContainerdLine,
} from "../../k8s/containerd-options.js";
import { printJson, runAction } from "../common.js";
import { emit, type OutputFlags } from "./output.js";

interface Flags extends OutputFlags {
	containerd: string;
	classes: string;
	snapshotterName: string;
	snapshotterSocket: string;
	snapshotterRoot: string;
	guestSnapshotterName: string;
	guestSnapshotterSocket: string;
	guestSnapshotterRoot: string;
	runcBinary: string;
	runscBinary: string;
	gvisorShim: string;
	runscConfig: string;
	kataShim: string;
	kataConfigDir: string;
	cgroupDriver: string;
	annotations?: string;
	discardUnpackedLayers?: boolean;
}

export function containerdOptionsFrom(f: Flags): ContainerdOptions {
	if (f.gvisorShim !== "runsc" && f.gvisorShim !== "runc")
		throw new DadiError(
			"USAGE",
			`--gvisor-shim ${JSON.stringify(f.gvisorShim)}: give runsc (gVisor's containerd shim, containerd-shim-runsc-v1) or runc (the runc v2 shim running runsc)`,
		);
	if (f.cgroupDriver !== "systemd" && f.cgroupDriver !== "cgroupfs")
		throw new DadiError(
			"USAGE",
			`--cgroup-driver ${JSON.stringify(f.cgroupDriver)}: give systemd or cgroupfs, the kubelet's cgroupDriver`,
		);
	return {
		containerd: parseContainerdLine(f.containerd),
		classes: parseClassList(f.classes),
		snapshotterName: f.snapshotterName,
		snapshotterSocket: f.snapshotterSocket,
		snapshotterRoot: f.snapshotterRoot,
		guestSnapshotterName: f.guestSnapshotterName,
		guestSnapshotterSocket: f.guestSnapshotterSocket,
		guestSnapshotterRoot: f.guestSnapshotterRoot,
		runcBinary: f.runcBinary,
		runscBinary: f.runscBinary,
		gvisorShim: f.gvisorShim,
		runscConfigPath: f.runscConfig,
		kataShimPath: f.kataShim,
		kataConfigDir: f.kataConfigDir,
		systemdCgroup: f.cgroupDriver === "systemd",
		extraAnnotations: (f.annotations ?? "")
			.split(",")
			.map((s) => s.trim())
			.filter((s) => s !== ""),
		discardUnpackedLayers: Boolean(f.discardUnpackedLayers),
	};
}

export function containerdConfigCommand(program: Command): void {
	const d = CONTAINERD_DEFAULTS;
	program
		.command("containerd-config")
		.description(
			"write containerd's configuration for the dadi snapshotter (proxy plugin) and the runtime classes: config version 2 for containerd 1.6/1.7, version 3 for 2.x",
		)
		.requiredOption(
			"--containerd <VERSION>",
			"the node's containerd: 1.6, 1.7 or 2 (any 2.x)",
		)
		.option("--classes <LIST>", "runtime classes to define (or all)", "all")
		.option(
			"--snapshotter-name <NAME>",
			"the proxy plugin's name, used as the snapshotter name",
			d.snapshotterName,
		)
		.option(
			"--snapshotter-socket <PATH>",
			"the snapshotter's gRPC socket (dadi-snapshotter serve --address unix:PATH)",
			d.snapshotterSocket,
		)
		.option(
			"--snapshotter-root <DIR>",
			"the snapshotter's --root (exported to CRI for image-fs usage; 1.7 and 2.x)",
			d.snapshotterRoot,
		)
		.option(
			"--guest-snapshotter-name <NAME>",
			"the guest-mode snapshotter Kata classes use (dadi-snapshotter serve --mode guest; 1.7 and 2.x)",
			d.guestSnapshotterName,
		)
		.option(
			"--guest-snapshotter-socket <PATH>",
			"its gRPC socket",
			d.guestSnapshotterSocket,
		)
		.option(
			"--guest-snapshotter-root <DIR>",
			"its --root",
			d.guestSnapshotterRoot,
		)
		.option(
			"--runc-binary <PATH>",
			"runc-lazy's OCI runtime (BinaryName): the dadi wrapper in front of runc",
			d.runcBinary,
		)
		.option(
			"--runsc-binary <PATH>",
			"gvisor's OCI runtime: the dadi wrapper in front of runsc (with --gvisor-shim runc; with runsc it goes into runsc-config)",
			d.runscBinary,
		)
		.option(
			"--gvisor-shim <runsc|runc>",
			"runsc: gVisor's containerd-shim-runsc-v1, as gVisor documents; runc: the runc v2 shim with BinaryName (nodes without gVisor's shim)",
			d.gvisorShim,
		)
		.option(
			"--runsc-config <PATH>",
			"the runsc shim's options file (ConfigPath), written by 'dadi-k8s runsc-config'",
			d.runscConfigPath,
		)
		.option(
			"--kata-shim <PATH>",
			"Kata's containerd shim (runtime_path)",
			d.kataShimPath,
		)
		.option(
			"--kata-config-dir <DIR>",
			"directory of Kata's configuration-<shim>.toml files",
			d.kataConfigDir,
		)
		.option(
			"--cgroup-driver <systemd|cgroupfs>",
			"runc's cgroup driver: the kubelet's cgroupDriver",
			"systemd",
		)
		.option(
			"--annotations <PATTERNS>",
			"more pod annotation patterns to pass to the runtimes, comma-separated (io.dadi.* always; io.katacontainers.* for Kata)",
		)
		.option(
			"--discard-unpacked-layers",
			"let containerd delete layer blobs once unpacked (saves disk; an image then cannot be unpacked into another snapshotter)",
		)
		.option("--out <FILE>", "write to FILE (atomically) instead of stdout")
		.option("--force", "replace an existing --out file")
		.option(
			"--json",
			"print {ok, containerd, configVersion, out, runtimes, toml} as JSON",
		)
		.action(async (f: Flags) =>
			runAction("dadi-k8s containerd-config", Boolean(f.json), async () => {
				const o = containerdOptionsFrom(f);
				const cfg = containerdConfig(o);
				const out = await emit(cfg.toml, f);
				if (f.json)
					printJson({
						ok: true,
						containerd: o.containerd,
						configVersion: cfg.configVersion,
						out,
						runtimes: cfg.runtimes,
						toml: cfg.toml,
					});
				else if (out)
					process.stdout.write(
						`wrote containerd ${o.containerd === "2" ? "2.x" : o.containerd} configuration (version ${cfg.configVersion}; runtimes ${o.classes.join(", ")}) to ${out}\n`,
					);
			}),
		);
}
