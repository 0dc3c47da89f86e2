/** `dadi-guest cleanup [MOUNTPOINT]`: undo the mounts and loop devices a killed `serve` left behind. */
import { realpath } from "node:fs/promises";
import { resolve } from "node:path";
import type { Command } from "commander";
import { DadiError } from "../errors.js";
import { readMounts } from "../guest/mountinfo.js";
import {
	type CleanupStep,
	cleanupChain,
	type DadiChain,
	findChains,
	fuseAlive,
	readLoopDevices,
} from "../guest/stale-mounts.js";
import { printJson, runAction } from "./common.js";

const OK_RESULTS = new Set(["done", "lazy", "not mounted"]);

export function cleanupCommand(program: Command, prog: string): void {
	program
		.command("cleanup")
		.description(
			"root: remove what a 'serve' that was killed (SIGKILL, OOM, crash) left behind — its file-system mount, loop device and FUSE mount; servers still running are left alone",
		)
		.argument(
			"[MOUNTPOINT]",
			"only the image mounted here (a --mount-at or --fuse directory); default: every stale one",
		)
		.option("--dry-run", "list what would be cleaned up, change nothing")
		.option("--json", "print the result as JSON")
		.action(
			async (
				mountPoint: string | undefined,
				opts: { dryRun?: boolean; json?: boolean },
			) =>
				runAction(`${prog} cleanup`, Boolean(opts.json), async () => {
					if (process.getuid?.() !== 0)
						throw new DadiError(
							"USAGE",
							"cleanup needs root (umount(2), losetup)",
						);
					const chains = findChains(readMounts(), readLoopDevices(), fuseAlive);
					let chosen: DadiChain[];
					if (mountPoint !== undefined) {
						const real = await realpath(mountPoint).catch(() =>
							resolve(mountPoint),
						);
						const c = chains.find(
							(x) =>
								x.fuseDir === real ||
								x.loops.some((l) => l.mounts.includes(real)),
						);
						if (!c)
							throw new DadiError(
								"INPUT_INVALID",
								`${mountPoint}: not a mount dadi-guest made (no fuse.dadi mount there, nor a loop device on one)`,
							);
						if (c.alive)
							throw new DadiError(
								"INPUT_INVALID",
								`${mountPoint}: a running dadi-guest serves it; stop that process with SIGTERM (or Ctrl-C) and it cleans up itself`,
							);
						chosen = [c];
					} else chosen = chains.filter((c) => !c.alive);
					const live = chains.filter((c) => c.alive).length;
					const done: { chain: DadiChain; steps: CleanupStep[] }[] = [];
					if (!opts.dryRun)
						for (const chain of chosen)
							done.push({ chain, steps: await cleanupChain(chain) });
					const failed = done.flatMap((d) =>
						d.steps.filter((s) => !OK_RESULTS.has(s.result)),
					);
					if (opts.json)
						printJson({
							ok: failed.length === 0,
							dryRun: Boolean(opts.dryRun),
							stale: chosen.map((c) => ({
								fuseDir: c.fuseDir,
								loops: c.loops,
							})),
							steps: done.flatMap((d) => d.steps),
							running: live,
						});
					else {
						const out: string[] = [];
						if (chosen.length === 0) out.push("nothing to clean up");
						for (const c of chosen) {
							out.push(
								`${opts.dryRun ? "would clean up" : "cleaned up"} ${c.fuseDir}${c.loops
									.map(
										(l) =>
											` → ${l.device}${l.mounts.length ? ` → ${l.mounts.join(", ")}` : ""}`,
									)
									.join("")}`,
							);
							for (const s of done.find((d) => d.chain === c)?.steps ?? [])
								out.push(`  ${s.what} ${s.target}: ${s.result}`);
						}
						if (live)
							out.push(
								`${live} image${live === 1 ? "" : "s"} served by running dadi-guest processes left alone`,
							);
						process.stdout.write(`${out.join("\n")}\n`);
					}
					if (failed.length)
						throw new DadiError(
							"IO",
							`cleanup incomplete: ${failed.map((s) => `${s.what} ${s.target}: ${s.result}`).join("; ")}`,
						);
				}),
		);
}
