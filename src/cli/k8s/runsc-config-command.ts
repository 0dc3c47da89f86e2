/** `dadi-k8s runsc-config`: the options file of gVisor's containerd shim for the gvisor class. */
import type { Command } from "commander";
import { DadiError } from "../../errors.js";
import {
	CONTAINERD_DEFAULTS,
	type GvisorPlatform,
} from "../../k8s/containerd-options.js";
import { runscConfig } from "../../k8s/runsc-config.js";
import { printJson, runAction } from "../common.js";
import { emit, type OutputFlags } from "./output.js";

interface Flags extends OutputFlags {
	runscBinary: string;
	platform: string;
}

const PLATFORMS: readonly GvisorPlatform[] = ["systrap", "ptrace", "kvm"];

export function runscConfigCommand(program: Command): void {
	program
		.command("runsc-config")
		.description(
			"write the options file of gVisor's containerd shim (the gvisor runtime's ConfigPath): the runsc binary and platform",
		)
		.option(
			"--runsc-binary <PATH>",
			"the dadi wrapper in front of runsc",
			CONTAINERD_DEFAULTS.runscBinary,
		)
		.option(
			"--platform <systrap|ptrace|kvm>",
			"gVisor's platform (kvm needs /dev/kvm; a runsc from before 2023, such as Debian 12's, has no systrap: use ptrace)",
			"systrap",
		)
		.option("--out <FILE>", "write to FILE (atomically) instead of stdout")
		.option("--force", "replace an existing --out file")
		.option("--json", "print {ok, out, toml} as JSON")
		.action(async (f: Flags) =>
			runAction("dadi-k8s runsc-config", Boolean(f.json), async () => {
				if (!PLATFORMS.includes(f.platform as GvisorPlatform))
					throw new DadiError(
						"USAGE",
						`--platform ${JSON.stringify(f.platform)}: give ${PLATFORMS.join(", ")}`,
					);
				const toml = runscConfig({
					runscBinary: f.runscBinary,
					platform: f.platform as GvisorPlatform,
				});
				const out = await emit(toml, f);
				if (f.json) printJson({ ok: true, out, toml });
				else if (out)
					process.stdout.write(`wrote runsc shim options to ${out}\n`);
			}),
		);
}
