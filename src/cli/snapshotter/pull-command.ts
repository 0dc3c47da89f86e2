/**
 * `dadi-snapshotter pull REF`: pulls an image into containerd with unpacking through a snapshotter,
 * as containerd's CRI plugin does (and `ctr-remote image rpull`), so that a remote snapshotter can
 * claim layers, which are then never downloaded (src/containerd/pull.ts; docs/snapshotter.md §7).
 */
import type { Command } from "commander";
import { ContainerdClient } from "../../containerd/client.js";
import { parsePullReference } from "../../containerd/image-name.js";
import { type PullResult, pullImage } from "../../containerd/pull.js";
import { registrySource } from "../../containerd/pull-source.js";
import { layerAt } from "../../layer-label.js";
import { RegistryClient } from "../../registry/client.js";
import { hostPlatform, parsePlatform } from "../../source/platform.js";
import { handleSignals } from "../../temp-files.js";
import { formatBytes, printJson, runAction } from "../common.js";
import { Progress } from "../progress.js";
import {
	addRegistryOptions,
	type RegistryFlags,
	registryClientOptions,
} from "../registry-options.js";
import { parseSocketAddress } from "./serve-command.js";

const PROG = "dadi-snapshotter pull";
export const DEFAULT_CONTAINERD = "/run/containerd/containerd.sock";

interface PullFlags extends RegistryFlags {
	address?: string;
	namespace?: string;
	snapshotter: string;
	platform?: string;
	json?: boolean;
	quiet?: boolean;
}

const OUTCOME: Record<PullResult["layers"][number]["outcome"], string> = {
	claimed: "claimed by the snapshotter (not downloaded)",
	applied: "downloaded and applied by containerd",
	present: "already unpacked",
};

function report(r: PullResult, flags: PullFlags, seconds: number): string {
	const count = (o: string) => r.layers.filter((l) => l.outcome === o).length;
	const lines = [
		`pulled ${r.name} (${r.target.digest}) into containerd ${r.containerd} (namespace ${flags.namespace}, snapshotter ${flags.snapshotter}): ${r.layers.length} layers, ${count("claimed")} claimed by the snapshotter, ${count("applied")} downloaded and applied, ${count("present")} already unpacked; ${formatBytes(r.downloaded)} downloaded in ${seconds.toFixed(2)} s`,
		...r.layers.map(
			(l, i) =>
				`  ${layerAt(i, r.layers.length)} ${l.digest} (${formatBytes(l.size)}): ${OUTCOME[l.outcome]}`,
		),
		`run it: ctr run --snapshotter ${flags.snapshotter} ${r.name} ID`,
	];
	return `${lines.join("\n")}\n`;
}

export function pullCommand(program: Command): void {
	const c = program
		.command("pull")
		.description(
			"pull an image into containerd and unpack it through a snapshotter the way containerd's CRI plugin does (with the snapshot labels a remote snapshotter needs), so layers the snapshotter claims are never downloaded; other layers are downloaded and applied by containerd",
		)
		.argument(
			"<REF>",
			"HOST[:PORT]/REPO[:TAG|@DIGEST] (or docker://…); the image keeps this name in containerd",
		)
		.option(
			"--address <PATH>",
			`containerd's socket (default $CONTAINERD_ADDRESS or ${DEFAULT_CONTAINERD})`,
		)
		.option(
			"--namespace <NS>",
			'containerd namespace (default $CONTAINERD_NAMESPACE or "default")',
		)
		.option(
			"--snapshotter <NAME>",
			"the snapshotter to unpack with, as containerd names it",
			"dadi",
		)
		.option(
			"--platform <OS/ARCH[/VARIANT]>",
			"from a multi-platform index, this platform's image (default: this machine's)",
		)
		.option("--json", "print the result as JSON")
		.option("--quiet", "no progress on stderr")
		.addHelpText(
			"after",
			"\nExit codes: 0 pulled; 2 usage (a bad reference, namespace or platform); 3 the image, tag or platform is not in the registry, or containerd has no such snapshotter; 4 a manifest or config that is malformed or not a container image; 5 a blob or layer that does not match its digest or diff ID; 7 containerd failed to store or apply something; 8 the registry or containerd (or the snapshotter behind it) cannot be reached, or refused the credentials; 1 a bug.\nSee docs/cli.md §5 and docs/snapshotter.md §7.",
		);
	addRegistryOptions(c).action(async (refText: string, flags: PullFlags) =>
		runAction(PROG, Boolean(flags.json), async () => {
			const ref = parsePullReference(refText);
			const platform = flags.platform
				? parsePlatform(flags.platform)
				: hostPlatform();
			flags.namespace ??= process.env.CONTAINERD_NAMESPACE || "default";
			const socket = parseSocketAddress(
				flags.address ?? (process.env.CONTAINERD_ADDRESS || DEFAULT_CONTAINERD),
			);
			const containerd = new ContainerdClient({
				socket,
				namespace: flags.namespace,
			});
			const registry = new RegistryClient(
				ref.registry,
				await registryClientOptions(ref, flags),
			);
			const progress = new Progress(!flags.quiet, Boolean(flags.json));
			// Interrupted: release the lease at once, or it would keep what was stored for a day.
			handleSignals((sig) => {
				progress.done();
				const lease = containerd.lease;
				const exit = (released: boolean) => {
					process.stderr.write(
						`\ninterrupted (${sig}); ${
							!lease
								? ""
								: released
									? `lease ${lease} released; `
									: `lease ${lease} not released (containerd drops it within 24 h); `
						}no image record was written\n`,
					);
					process.exit(sig === "SIGINT" ? 130 : 143);
				};
				if (!lease) exit(false);
				else
					void Promise.race([
						containerd.leaseDelete(lease).then(() => true),
						new Promise<boolean>((r) => setTimeout(() => r(false), 5000)),
					]).then(exit, () => exit(false));
			});
			const started = performance.now();
			let r: PullResult;
			try {
				r = await pullImage({
					ref,
					platform,
					snapshotter: flags.snapshotter,
					source: registrySource(registry, ref),
					containerd,
					onProgress: (e) => progress.report(e),
					warn: (line) => process.stderr.write(`${PROG}: warning: ${line}\n`),
				});
			} finally {
				handleSignals(undefined);
				progress.done();
				containerd.close();
				await registry.close();
			}
			const seconds = (performance.now() - started) / 1000;
			if (flags.json)
				printJson({
					ok: true,
					...r,
					namespace: flags.namespace,
					snapshotter: flags.snapshotter,
					seconds,
				});
			else process.stdout.write(report(r, flags, seconds));
		}),
	);
}
