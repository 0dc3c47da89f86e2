/**
 * `dadi-guest run`: inside the sandbox, attest and get the image key, open the sealed image
 * lazily, attach its decrypted disk to the kernel (nbd, or FUSE + loop), mount it read-only under a
 * tmpfs overlay, run the image's own process in it, and exit with its exit code after tearing
 * everything down in reverse order (src/guest/run.ts; docs/guest.md, docs/cli.md §3.4).
 */
import { readFile } from "node:fs/promises";
import { performance } from "node:perf_hooks";
import type { Command } from "commander";
import { asDadiError, DadiError } from "../errors.js";
import { type StartedProcess, spawnStarter } from "../guest/exec-in-root.js";
import {
	decodeVolumeText,
	type GuestVolume,
	parseGuestVolume,
} from "../guest/kata-volume.js";
import { prepareMountPoint } from "../guest/mount-point.js";
import { checkNbdPresent } from "../guest/nbd-device.js";
import { parseNbdDevice } from "../guest/nbd-ioctl.js";
import {
	applyRegistryAlias,
	parseRegistryAlias,
	type RegistryAlias,
} from "../guest/registry-alias.js";
import { runContainer } from "../guest/run.js";
import {
	ms,
	peakRssFrom,
	type RunReport,
	reportLine,
} from "../guest/run-report.js";
import { TraceReplay } from "../guest/trace-replay.js";
import { UndoStack } from "../guest/undo-stack.js";
import type { KeySource } from "../image/open-image.js";
import { writeFileAtomic } from "../oci/layout.js";
import { handleSignals } from "../temp-files.js";
import { exitCodeFor } from "./common.js";
import { addKeyOptions, type KeyFlags } from "./key-options.js";
import { openForReading, type ReadableImage } from "./open-for-reading.js";
import {
	addPrefetchOptions,
	type PrefetchFlags,
	startMetadataPrefetch,
} from "./prefetch-option.js";
import { addLazyOptions, type LazyFlags } from "./registry-options.js";
import { traceFlags } from "./trace-options.js";

interface RunFlags extends LazyFlags, KeyFlags, PrefetchFlags {
	block?: string;
	nbdDevice?: string;
	nbdTimeout?: string;
	rootfs?: string;
	volume?: string;
	registryAlias?: string[];
	report?: string;
	prefetch?: string;
	prefetchBudget?: string;
	json?: boolean;
	verbose?: boolean;
}

/** After a forwarded SIGINT/SIGTERM, how long the container gets before SIGKILL. */
const STOP_GRACE_MS = 10_000;

const collect = (v: string, prev: string[] = []) => [...prev, v];

export function runCommand(program: Command, prog: string): void {
	const c = program
		.command("run")
		.description(
			"run a sealed image's container inside the sandbox: attest, attach the decrypted disk (nbd or loop), mount it read-only under a tmpfs overlay, run the image's own process, exit with its exit code and tear everything down",
		)
		.argument(
			"[REF]",
			"docker://HOST/REPO[:TAG|@DIGEST] or oci:DIR[:TAG] (or give --volume)",
		)
		.argument(
			"[ARGS...]",
			"after --: the command's arguments, replacing the image's Cmd (the Entrypoint stays)",
		)
		.option(
			"--block <nbd|loop>",
			"how the kernel gets the disk: the nbd driver (default) or a FUSE file on a loop device",
		)
		.option(
			"--nbd-device <auto|/dev/nbdN>",
			"with --block nbd: the device (default auto: the first free one)",
		)
		.option(
			"--nbd-timeout <SECONDS>",
			"with --block nbd: the kernel's request timeout (default 0: none; dadi's own --stall-timeout answers EIO first)",
		)
		.option(
			"--rootfs <DIR>",
			"mount the container's root here (an empty directory; default a private one)",
		)
		.option(
			"--volume <BASE64|@FILE>",
			"the Kata virtual volume dadi-snapshotter's guest mode passes (base64 JSON, or @FILE): its image and layer count instead of REF",
		)
		.option(
			"--registry-alias <FROM=TO>",
			"reach registry FROM at TO (HOST[:PORT] each; repeatable): the sandbox's address of the host's registry",
			collect,
		)
		.option(
			"--prefetch <auto|trace|none>",
			"replay the image's attached start-up trace: auto (default) uses one when attached and usable, trace fails without a usable one, none skips it",
		)
		.option(
			"--prefetch-budget <SIZE>",
			"fetch at most this many bytes while replaying the start-up trace (default: no bound with --cache-dir, 48M without: what waits in the 64M memory cache)",
		)
		.option("--report <FILE>", "write the run report (JSON) to FILE")
		.option(
			"--json",
			"print the run report as the last line on stderr: DADI-RUN {json}",
		)
		.option("--verbose", "log the block device's connection events");
	addPrefetchOptions(addLazyOptions(addKeyOptions(c)))
		.allowExcessArguments(true)
		.action(
			async (_ref: unknown, _args: unknown, opts: RunFlags, cmd: Command) =>
				runAction(prog, opts, cmd),
		);
}

/** REF (before --) and the command's arguments (after --), from commander's operands. */
function splitOperands(cmd: Command): { ref?: string; args: string[] } {
	const dd = process.argv.indexOf("--");
	const after = dd >= 0 ? process.argv.slice(dd + 1) : [];
	const all = cmd.args;
	const before = all.slice(0, Math.max(0, all.length - after.length));
	if (before.length > 1)
		throw new DadiError(
			"USAGE",
			`unexpected "${before[1]}": give the container's command after --`,
		);
	return { ref: before[0], args: after };
}

async function volumeFrom(text: string): Promise<GuestVolume> {
	let body = text;
	if (text.startsWith("@")) {
		try {
			body = await readFile(text.slice(1), "utf8");
		} catch (e) {
			throw new DadiError(
				(e as NodeJS.ErrnoException).code === "ENOENT"
					? "INPUT_NOT_FOUND"
					: "IO",
				`--volume ${text}: cannot read (${(e as NodeJS.ErrnoException).code ?? e})`,
			);
		}
	}
	return parseGuestVolume(decodeVolumeText(body));
}

async function runAction(
	prog: string,
	opts: RunFlags,
	cmd: Command,
): Promise<void> {
	const t0 = performance.now();
	const say = (line: string) => process.stderr.write(`${prog} run: ${line}\n`);
	const debug = opts.verbose ? say : () => {};
	const report: RunReport = {
		ok: false,
		block: opts.block === "loop" ? "loop" : "nbd",
		timingsMs: {},
	};
	const undo = new UndoStack(say);
	let signalled: NodeJS.Signals | undefined;
	let started: StartedProcess | undefined;
	let opened: ReadableImage | undefined;
	let replay: TraceReplay | undefined;
	let killTimer: NodeJS.Timeout | undefined;
	let onSignal: (sig: NodeJS.Signals) => void = () => {};
	const signalledP = new Promise<NodeJS.Signals>((r) => {
		onSignal = r;
	});
	handleSignals((sig) => {
		signalled ??= sig;
		onSignal(sig);
		if (started) {
			say(`${sig}: stopping the container`);
			started.signal(sig);
			killTimer ??= setTimeout(() => started?.killAll(), STOP_GRACE_MS);
			killTimer.unref();
		}
	});
	const checkpoint = () => {
		if (signalled) throw new Interrupted(signalled);
	};
	try {
		const { ref: refArg, args } = splitOperands(cmd);
		if (
			opts.block !== undefined &&
			opts.block !== "nbd" &&
			opts.block !== "loop"
		)
			throw new DadiError(
				"USAGE",
				`--block "${opts.block}": expected nbd or loop`,
			);
		const nbdDevice = parseNbdDevice(opts.nbdDevice ?? "auto");
		if (report.block === "loop" && (opts.nbdDevice || opts.nbdTimeout))
			throw new DadiError(
				"USAGE",
				"--nbd-device and --nbd-timeout apply with --block nbd",
			);
		const nbdTimeout = parseTimeout(opts.nbdTimeout);
		const trace = traceFlags(opts);
		replay = new TraceReplay(trace.prefetch, trace.prefetchBudget, say);
		const tracing = replay;
		const aliases: RegistryAlias[] = (opts.registryAlias ?? []).map(
			parseRegistryAlias,
		);
		const volume = opts.volume ? await volumeFrom(opts.volume) : undefined;
		if (volume && refArg)
			throw new DadiError(
				"USAGE",
				"give the image as REF or --volume, not both (put the container's command after --)",
			);
		if (!volume && !refArg)
			throw new DadiError(
				"USAGE",
				"the image is needed: REF, or --volume from dadi-snapshotter's guest mode",
			);
		if (volume) {
			if (opts.layers && Number(opts.layers) !== volume.layers)
				throw new DadiError(
					"USAGE",
					`--layers ${opts.layers} contradicts the volume's io.dadi.layers (${volume.layers})`,
				);
			opts.layers = String(volume.layers);
		}
		const refText = applyRegistryAlias(
			volume ? volume.image : (refArg as string),
			aliases,
		);
		if (process.getuid?.() !== 0)
			throw new DadiError(
				"USAGE",
				"run needs root (block devices, mount(2), chroot(2))",
			);
		// Checked (and a killed run's leftovers reported) before attesting or fetching anything.
		if (report.block === "nbd") checkNbdPresent(nbdDevice);
		if (opts.rootfs)
			opts.rootfs = await prepareMountPoint(opts.rootfs, "--rootfs", say);
		// The container's starter (a second node) starts now, alongside attesting, fetching and
		// mounting, instead of after them; killed if no container runs.
		const starter = spawnStarter();
		undo.push("stop the unused container starter", () => starter.cancel());
		const openStart = performance.now();
		let keyMs = 0;
		const timedKey =
			(key: KeySource): KeySource =>
			async (image) => {
				if (volume && image.config.key.ref !== volume.keyRef)
					throw new DadiError(
						"INPUT_INVALID",
						`--volume: the image's key reference is ${image.config.key.ref}, the volume names ${volume.keyRef}`,
					);
				const s = performance.now();
				try {
					return typeof key === "function" ? await key(image) : key;
				} finally {
					keyMs += performance.now() - s;
				}
			};
		// A signal while the broker or the registry is slow (retries) stops the wait at once; an
		// image that opens afterwards is closed.
		const opening = openForReading(
			refText,
			opts,
			{ ...opts, stats: undefined },
			false,
			say,
			(k) => tracing.wrapKey(timedKey(k)),
			tracing.onImage,
		);
		opened = await Promise.race([
			opening,
			signalledP.then((sig) => {
				void opening.then(
					(o) => o.finish(),
					() => {},
				);
				throw new Interrupted(sig);
			}),
		]);
		report.image = opened.name;
		report.timingsMs.attest = ms(keyMs);
		report.timingsMs.open = ms(performance.now() - openStart - keyMs);
		checkpoint();
		// The trace lookup ran alongside the key release and the layer opening; the prefetch runs
		// alongside attaching, mounting and the container (only --prefetch trace waits for the check).
		const image = opened.image;
		const readable = opened;
		await tracing.begin(image, () => {
			void startMetadataPrefetch(readable, opts, debug);
		});
		const imageConfig = await opened.image.imageConfig();
		const code = await runContainer({
			starter,
			source: opened.image.disk,
			imageConfig,
			name: opened.name,
			block: report.block,
			nbdDevice,
			nbdTimeoutSec: nbdTimeout,
			rootfs: opts.rootfs,
			args,
			undo,
			checkpoint,
			report,
			onStarted: (p) => {
				started = p;
				if (signalled) p.signal(signalled);
			},
			log: debug,
		});
		report.ok = true;
		process.exitCode = code;
	} catch (e) {
		if (e instanceof Interrupted) {
			report.error = { code: "INTERRUPTED", message: e.message };
			say(`${e.message}; cleaning up`);
			process.exitCode = e.exitCode;
		} else {
			const err = asDadiError(e);
			report.error = { code: err.code, message: err.message };
			say(`error: ${err.message} [${err.code}]`);
			process.exitCode = exitCodeFor(err.code);
		}
	} finally {
		clearTimeout(killTimer);
		await undo.unwind();
		if (replay) {
			await replay.close();
			if (replay.mode !== "none") report.trace = replay.toJSON();
		}
		if (opened) {
			const s = opened.stats?.toJSON();
			if (s) {
				report.fetched = {
					bytes: s.bytesFetched,
					requests: s.requests,
					chunks: s.chunksFetched,
				};
				if (s.metadataPrefetch) report.metadataPrefetch = s.metadataPrefetch;
			}
			await opened.finish().catch(() => {});
		}
		handleSignals(undefined);
		report.peakRssBytes = peakRssFrom(
			await readFile("/proc/self/status", "utf8").catch(() => ""),
		);
		report.timingsMs.total = ms(performance.now() - t0);
		if (opts.report)
			await writeFileAtomic(
				opts.report,
				`${JSON.stringify(report, null, 2)}\n`,
			).catch((e) =>
				say(
					`cannot write the report to ${opts.report}: ${(e as Error).message}`,
				),
			);
		if (opts.json) process.stderr.write(reportLine(report));
		// Interrupted while the broker or registry was being retried: those retries must not hold
		// the process (stdout and stderr are synchronous for files and pipes on Linux).
		if (report.error?.code === "INTERRUPTED") process.exit(process.exitCode);
	}
}

class Interrupted extends Error {
	readonly exitCode: number;
	constructor(readonly sig: NodeJS.Signals) {
		super(`interrupted (${sig})`);
		this.exitCode = sig === "SIGINT" ? 130 : 143;
	}
}

function parseTimeout(v: string | undefined): number | undefined {
	if (v === undefined) return undefined;
	if (!/^\d{1,5}$/.test(v) || Number(v) > 86400)
		throw new DadiError(
			"USAGE",
			`--nbd-timeout "${v}": whole seconds, 0 (none) to 86400`,
		);
	return Number(v);
}
