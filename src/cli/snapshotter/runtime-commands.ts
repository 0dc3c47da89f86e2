/**
 * `dadi-snapshotter install-runtime` writes the OCI runtime wrappers containerd's runc v2 shim
 * runs in host mode (dadi-runc, dadi-runsc: src/runtime/wrapper.ts); `patch-bundle` is what they
 * call before `create`: it fills a sealed image's own entrypoint, env, workdir and user into the
 * bundle (src/runtime/bundle.ts).
 */
import { chmod } from "node:fs/promises";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import { DadiError } from "../../errors.js";
import { writeFileAtomic } from "../../oci/layout.js";
import { patchBundle } from "../../runtime/bundle.js";
import { findHostRunConfig } from "../../runtime/host-rootfs.js";
import { wrapperScript } from "../../runtime/wrapper.js";
import { printJson, runAction } from "../common.js";

export const DEFAULT_ROOT = "/var/lib/dadi-snapshotter";

export function runtimeCommands(program: Command): void {
	program
		.command("install-runtime")
		.description(
			"write the host-mode OCI runtime wrappers (dadi-runc, dadi-runsc) into DIR: containerd runs them as the runc v2 shim's BinaryName; before 'create' they fill a sealed image's own entrypoint, env, workdir and user into the bundle, then exec the real runtime",
		)
		.requiredOption(
			"--dir <DIR>",
			"where to write the wrappers (e.g. /usr/local/bin)",
		)
		.option("--root <DIR>", "the snapshotter's --root", DEFAULT_ROOT)
		.option("--runc <PATH>", "the real runc", "/usr/sbin/runc")
		.option("--runsc <PATH>", "the real runsc (gVisor)", "/usr/bin/runsc")
		.option(
			"--runsc-arg <OPTION>",
			"a global runsc option for dadi-runsc (repeatable), e.g. --network=none where containers get no network namespace of their own (ctr run), --platform=ptrace",
			(v: string, all: string[]) => [...all, v],
			[],
		)
		.option("--json", "print what was written as JSON")
		.action(
			async (o: {
				dir: string;
				root: string;
				runc: string;
				runsc: string;
				runscArg: string[];
				json?: boolean;
			}) =>
				runAction(
					"dadi-snapshotter install-runtime",
					Boolean(o.json),
					async () => {
						const program = fileURLToPath(
							new URL("../dadi-snapshotter.js", import.meta.url),
						);
						const written: string[] = [];
						for (const [name, runtime, runtimeArgs] of [
							["dadi-runc", o.runc, [] as string[]],
							["dadi-runsc", o.runsc, o.runscArg],
						] as const) {
							const file = join(resolve(o.dir), name);
							await writeFileAtomic(
								file,
								wrapperScript({
									runtime: resolve(runtime),
									node: process.execPath,
									program,
									snapshotterRoot: resolve(o.root),
									runtimeArgs,
								}),
								0o755,
							);
							await chmod(file, 0o755);
							written.push(file);
						}
						if (o.json) printJson({ ok: true, written });
						else process.stdout.write(`${written.join("\n")}\n`);
					},
				),
		);
	program
		.command("patch-bundle")
		.description(
			"(run by dadi-runc/dadi-runsc) fill a sealed image's own run settings into an OCI bundle whose rootfs dadi-snapshotter serves in host mode; other bundles are left untouched",
		)
		.argument("<BUNDLE>", "the OCI bundle directory (holds config.json)")
		.option("--root <DIR>", "the snapshotter's --root", DEFAULT_ROOT)
		.action(async (bundle: string, o: { root: string }) =>
			runAction("dadi-snapshotter patch-bundle", false, async () => {
				const root = resolve(o.root);
				const r = await patchBundle(resolve(bundle), (rootfs) =>
					findHostRunConfig(rootfs, root),
				);
				if (r.patched)
					process.stderr.write(
						`dadi-snapshotter patch-bundle: ${bundle}: the sealed image's own config applied (${JSON.stringify(r.args).slice(0, 200)})\n`,
					);
				else if (!r.why.startsWith("not a sealed"))
					throw new DadiError("INPUT_INVALID", `${bundle}: ${r.why}`);
			}),
		);
}
