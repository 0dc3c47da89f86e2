/** `dadi-snapshotter serve`: the snapshots gRPC service on a unix socket until SIGINT/SIGTERM. */
import { resolve } from "node:path";
import type { Command } from "commander";
import { DadiError } from "../../errors.js";
import { serveSnapshots } from "../../snapshotter/grpc-server.js";
import { detectOverlayOptions } from "../../snapshotter/overlay-support.js";
import { Snapshotter } from "../../snapshotter/snapshotter.js";
import { handleSignals } from "../../temp-files.js";
import { printJson, runAction } from "../common.js";

const PROG = "dadi-snapshotter serve";

/** `unix:PATH` or a path: the socket containerd's proxy_plugins entry names. */
export function parseSocketAddress(text: string): string {
	const path = text.startsWith("unix://")
		? text.slice(7)
		: text.startsWith("unix:")
			? text.slice(5)
			: text;
	if (path === "" || /^[a-z]+:/.test(path))
		throw new DadiError(
			"USAGE",
			`--address "${text}": expected unix:PATH (or a path)`,
		);
	return resolve(path);
}

export function serveCommand(program: Command): void {
	program
		.command("serve")
		.description(
			"serve containerd's snapshots API (proxy snapshotter) on a unix socket until SIGINT/SIGTERM; state under --root",
		)
		.requiredOption(
			"--root <DIR>",
			"the snapshotter's state directory (created if missing; one process per root)",
		)
		.requiredOption(
			"--address <unix:PATH>",
			"the unix socket to listen on (containerd's proxy_plugins address)",
		)
		.option("--json", "print the ready line as JSON")
		.action(async (opts: { root: string; address: string; json?: boolean }) =>
			runAction(PROG, Boolean(opts.json), async () => {
				const log = (line: string) =>
					process.stderr.write(`${PROG}: ${line}\n`);
				const socket = parseSocketAddress(opts.address);
				let stop: (sig: string) => void = () => {};
				const stopped = new Promise<string>((r) => {
					stop = r;
				});
				handleSignals((sig) => stop(sig));
				const sn = await Snapshotter.open({
					root: opts.root,
					log,
					overlay: detectOverlayOptions(),
				});
				let server: Awaited<ReturnType<typeof serveSnapshots>> | undefined;
				try {
					server = await serveSnapshots(sn, socket, log);
					const ready = {
						ok: true,
						address: server.address,
						root: sn.root,
						snapshots: sn.list([]).length,
						pid: process.pid,
					};
					if (opts.json) printJson(ready);
					else
						process.stdout.write(
							`serving containerd snapshots on ${ready.address} (root ${ready.root}, ${ready.snapshots} snapshots)\n`,
						);
					const sig = await stopped;
					log(`${sig}: shutting down`);
				} finally {
					await server?.close();
					await sn.close();
				}
			}),
		);
}
