/** `dadi-snapshotter serve`: the snapshots gRPC service on a unix socket until SIGINT/SIGTERM. */
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import { DadiError } from "../../errors.js";
import { serveSnapshots } from "../../snapshotter/grpc-server.js";
import { HostImages } from "../../snapshotter/host-images.js";
import { detectOverlayOptions } from "../../snapshotter/overlay-support.js";
import { publicKeyRef } from "../../snapshotter/public-key-ref.js";
import { SealedLayers } from "../../snapshotter/sealed-layers.js";
import { Snapshotter } from "../../snapshotter/snapshotter.js";
import { handleSignals } from "../../temp-files.js";
import { printJson, runAction } from "../common.js";

const PROG = "dadi-snapshotter serve";

interface ServeFlags {
	root: string;
	address: string;
	mode: string;
	keyDir?: string;
	broker?: string;
	attester?: string;
	brokerCa?: string;
	cacheDir?: string;
	insecure?: boolean;
	caFile: string[];
	authfile?: string;
	json?: boolean;
}

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
		.option(
			"--mode <host|guest>",
			"sealed images: host (runc, gVisor: served lazily on this host, which holds their keys) or guest (Kata: handed to the sandbox, nothing decrypted here)",
			"host",
		)
		.option(
			"--key-dir <DIR>",
			"host mode: image keys as DIR/<kid>.jwk (files from 'dadi-seal keygen')",
		)
		.option(
			"--broker <URL>",
			"host mode: get image keys from a KBS key broker instead",
		)
		.option(
			"--attester <KIND>",
			"host mode, with --broker: the TEE evidence the per-image dadi-guest sends (auto, snp, tdx, az-snp-vtpm, az-tdx-vtpm or sample; as dadi-guest --attester)",
		)
		.option(
			"--broker-ca <PEM>",
			"with --broker: CA certificates for an https broker",
		)
		.option(
			"--cache-dir <DIR>",
			"host mode: persistent ciphertext chunk cache, one subdirectory per served image",
		)
		.option(
			"--insecure",
			"talk plain HTTP to registries (loopback or test registries only)",
		)
		.option(
			"--ca-file <FILE>",
			"trust this PEM CA for registries' TLS (repeatable)",
			(v: string, all: string[]) => [...all, v],
			[],
		)
		.option(
			"--authfile <FILE>",
			"registry credentials (docker/podman auth file)",
		)
		.option("--json", "print the ready line as JSON")
		.action(async (opts: ServeFlags) =>
			runAction(PROG, Boolean(opts.json), async () => {
				const log = (line: string) =>
					process.stderr.write(`${PROG}: ${line}\n`);
				const socket = parseSocketAddress(opts.address);
				let stop: (sig: string) => void = () => {};
				const stopped = new Promise<string>((r) => {
					stop = r;
				});
				handleSignals((sig) => stop(sig));
				const root = resolve(opts.root);
				const sn = await Snapshotter.open({
					root,
					log,
					overlay: detectOverlayOptions(),
					remote: sealedLayersFor(opts, root, log),
				});
				let server: Awaited<ReturnType<typeof serveSnapshots>> | undefined;
				try {
					server = await serveSnapshots(sn, socket, log);
					const ready = {
						ok: true,
						address: server.address,
						root: sn.root,
						snapshots: sn.list([]).length,
						mode: opts.mode,
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

/** The sealed-layer plug-in for the mode asked for; keys only ever reach host mode's serves. */
function sealedLayersFor(
	o: ServeFlags,
	root: string,
	log: (line: string) => void,
): SealedLayers {
	const registry = [
		...(o.insecure ? ["--insecure"] : []),
		...o.caFile.flatMap((f) => ["--ca-file", resolve(f)]),
		...(o.authfile ? ["--authfile", resolve(o.authfile)] : []),
	];
	if (o.mode === "guest") {
		if (o.keyDir || o.broker || o.cacheDir)
			throw new DadiError(
				"USAGE",
				"--key-dir, --broker and --cache-dir are for host mode: in guest mode the sandbox gets the key and reads the image itself",
			);
		return new SealedLayers({
			mode: "guest",
			keyRefOf: (layer) =>
				publicKeyRef(layer.image, {
					insecure: Boolean(o.insecure),
					caFile: o.caFile,
					authfile: o.authfile,
				}),
			log,
		});
	}
	if (o.mode !== "host")
		throw new DadiError("USAGE", `--mode "${o.mode}": expected host or guest`);
	if (o.keyDir && o.broker)
		throw new DadiError("USAGE", "give either --key-dir or --broker, not both");
	// Without a key source ordinary images work as ever; a sealed image is still claimed (so it is
	// never downloaded) but its containers fail to start with what to configure.
	const keys = o.keyDir
		? ["--key-dir", resolve(o.keyDir)]
		: o.broker
			? [
					"--broker",
					o.broker,
					...(o.attester ? ["--attester", o.attester] : []),
					...(o.brokerCa ? ["--broker-ca", resolve(o.brokerCa)] : []),
				]
			: undefined;
	return new SealedLayers({
		mode: "host",
		host: new HostImages({
			root,
			guestProgram: guestProgram(),
			serveArgs: keys ? [...keys, ...registry] : undefined,
			cacheDir: o.cacheDir ? resolve(o.cacheDir) : undefined,
			log,
		}),
		log,
	});
}

/**
 * What host mode starts for an image: the single-file dadi-guest that `npm run build` writes
 * beside dist/src (it starts in about half the time: one file instead of ~300 modules), or the
 * module entry point when the bundle is not there (a build without it).
 */
export function guestProgram(): string {
	const bundle = fileURLToPath(
		new URL("../../../guest/dadi-guest.mjs", import.meta.url),
	);
	return existsSync(bundle)
		? bundle
		: fileURLToPath(new URL("../dadi-guest.js", import.meta.url));
}
