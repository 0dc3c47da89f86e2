/**
 * The options file of gVisor's containerd shim (containerd-shim-runsc-v1), named by the gvisor
 * runtime's ConfigPath: which runsc binary the shim runs (the dadi wrapper) and runsc flags under
 * [runsc_config] (each `flag = "value"` becomes `--flag=value`). Pure.
 */
import { checkAbsolutePath } from "./checks.js";
import type { GvisorPlatform } from "./containerd-options.js";
import { writeToml } from "./toml-writer.js";

export interface RunscConfigOptions {
	runscBinary: string;
	platform: GvisorPlatform;
}

export function runscConfig(o: RunscConfigOptions): string {
	checkAbsolutePath(o.runscBinary, "--runsc-binary");
	return writeToml(
		[
			{
				path: [],
				entries: [
					{
						key: "binary_name",
						value: o.runscBinary,
						comment: "the dadi wrapper in front of runsc",
					},
				],
			},
			{
				path: ["runsc_config"],
				entries: [
					{
						key: "platform",
						value: o.platform,
						comment:
							"systrap needs no KVM and works in VMs (runsc from 2023 on; Debian 12's 2022-12 runsc has only ptrace and kvm);\nkvm needs /dev/kvm on the node",
					},
				],
			},
		],
		"containerd-shim-runsc-v1 options for the dadi gvisor runtime class, written by dadi-k8s runsc-config.\nInstall at the path the runtime's ConfigPath names (default /etc/containerd/runsc.toml).",
	);
}
