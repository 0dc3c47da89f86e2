/** `dadi-guest serve`: expose a sealed image's disk as NBD and/or a FUSE file until a signal. */
import type { Command } from "commander";
import { DadiError } from "../errors.js";
import { prepareMountPoint } from "../guest/mount-point.js";
import { ms } from "../guest/run-report.js";
import {
	checkNbdExposure,
	isLoopbackHost,
	parseListen,
	type Serving,
	startServing,
} from "../guest/serve.js";
import { TraceRecording } from "../guest/trace-recording.js";
import { TraceReplay, type TraceReplayJson } from "../guest/trace-replay.js";
import type { KeySource, OpenedImage } from "../image/open-image.js";
import { writeFileAtomic } from "../oci/layout.js";
import { runConfigOf } from "../runtime/run-config.js";
import { handleSignals } from "../temp-files.js";
import { formatBytes, printJson, runAction } from "./common.js";
import { addKeyOptions, type KeyFlags } from "./key-options.js";
import { openForReading } from "./open-for-reading.js";
import {
	addPrefetchOptions,
	type PrefetchFlags,
	startMetadataPrefetch,
} from "./prefetch-option.js";
import { addLazyOptions, type LazyFlags } from "./registry-options.js";
import { traceFlags } from "./trace-options.js";

interface ServeFlags extends LazyFlags, KeyFlags, PrefetchFlags {
	nbd?: string;
	nbdAllowRemote?: boolean;
	fuse?: string;
	mountAt?: string;
	metrics?: string;
	runConfig?: string;
	statsInterval?: string;
	recordTrace?: string;
	traceBudgetMs?: string;
	traceBudgetBytes?: string;
	prefetch?: string;
	prefetchBudget?: string;
	json?: boolean;
}

export function serveCommand(program: Command, prog: string): void {
	const c = program
		.command("serve")
		.description(
			"serve a sealed image's decrypted disk as an NBD export and/or a read-only FUSE file (loop-mounted with --mount-at) until SIGINT/SIGTERM",
		)
		.argument(
			"<REF>",
			"oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST] (read lazily)",
		)
		.option(
			"--nbd <unix:PATH|tcp:HOST:PORT>",
			"serve an NBD export (named dadi; the default export too), read-only; a bare /path is a unix socket; TCP on loopback only unless --nbd-allow-remote",
		)
		.option(
			"--nbd-allow-remote",
			"allow --nbd on a non-loopback TCP address: the decrypted disk is readable, unauthenticated and unencrypted, by anyone who reaches it",
		)
		.option(
			"--fuse <DIR>",
			"mount a FUSE file system at DIR holding one read-only file, DIR/disk",
		)
		.option(
			"--mount-at <DIR>",
			"root: attach the disk to a loop device and mount its file system read-only at DIR (served through FUSE)",
		)
		.option(
			"--metrics <tcp:HOST:PORT>",
			"serve Prometheus metrics at http://HOST:PORT/metrics",
		)
		.option(
			"--run-config <FILE>",
			"write the image's own run settings (entrypoint, cmd, env, workdir, user; decrypted) to FILE, mode 0600, before the ready line (for dadi-runc in host mode)",
		)
		.option(
			"--stats-interval <SECONDS>",
			"how often --stats FILE is rewritten (default 5)",
		)
		.option(
			"--record-trace <FILE>",
			"record the chunks the start-up reads (first-read order, with times) and write this plaintext trace to FILE, mode 0600, when a budget runs out, on SIGUSR1, or at stop (attach it with 'dadi-seal trace attach')",
		)
		.option(
			"--trace-budget-ms <MS>",
			"with --record-trace: stop recording this many ms after the start (default 30000)",
		)
		.option(
			"--trace-budget-bytes <SIZE>",
			"with --record-trace: stop recording once this many bytes of chunks are recorded",
		)
		.option(
			"--prefetch <auto|trace|none>",
			"replay the image's attached start-up trace: auto (default; none while --record-trace) uses one when attached and usable, trace fails without a usable one, none skips it",
		)
		.option(
			"--prefetch-budget <SIZE>",
			"fetch at most this many bytes while replaying the start-up trace (default: no bound with --cache-dir, 48M without: what waits in the 64M memory cache)",
		)
		.option("--json", "print the ready line as JSON");
	addPrefetchOptions(addLazyOptions(addKeyOptions(c))).action(
		async (refText: string, opts: ServeFlags) =>
			runAction(`${prog} serve`, Boolean(opts.json), async () => {
				const log = (line: string) =>
					process.stderr.write(`${prog} serve: ${line}\n`);
				const nbd = opts.nbd ? parseListen(opts.nbd, "--nbd") : undefined;
				if (nbd)
					checkNbdExposure(
						nbd,
						opts.nbd as string,
						Boolean(opts.nbdAllowRemote),
					);
				else if (opts.nbdAllowRemote)
					throw new DadiError("USAGE", "--nbd-allow-remote applies with --nbd");
				if (nbd && "host" in nbd && !isLoopbackHost(nbd.host))
					log(
						`warning: the decrypted disk will be readable by anyone who can reach ${nbd.host}:${nbd.port} (--nbd-allow-remote)`,
					);
				const metrics = opts.metrics
					? (parseListen(opts.metrics, "--metrics", false) as {
							host: string;
							port: number;
						})
					: undefined;
				const interval = opts.statsInterval
					? Number(opts.statsInterval)
					: undefined;
				if (interval !== undefined && !(interval > 0 && interval <= 3600))
					throw new DadiError(
						"USAGE",
						`--stats-interval "${opts.statsInterval}": seconds, more than 0 and at most 3600`,
					);
				// Mount points are checked (and a killed server's leftovers cleaned) before attesting.
				if (opts.mountAt)
					opts.mountAt = await prepareMountPoint(
						opts.mountAt,
						"--mount-at",
						log,
					);
				if (opts.fuse)
					opts.fuse = await prepareMountPoint(opts.fuse, "--fuse", log);
				const trace = traceFlags(opts);
				const replay = new TraceReplay(
					trace.prefetch,
					trace.prefetchBudget,
					log,
				);
				let stop: (sig: string) => void = () => {};
				const stopped = new Promise<string>((r) => {
					stop = r;
				});
				// Signals from here on shut down in order (a second one exits at once).
				handleSignals((sig) => stop(sig));
				const openStart = performance.now();
				let keyMs: number | undefined;
				const timedKey = (key: KeySource): KeySource =>
					typeof key === "function"
						? async (image) => {
								const t = performance.now();
								try {
									return await key(image);
								} finally {
									keyMs = performance.now() - t;
								}
							}
						: key;
				const opened = await openForReading(
					refText,
					opts,
					{ ...opts, stats: undefined },
					false,
					log,
					(key) => replay.wrapKey(timedKey(key)),
					replay.onImage,
				).catch((e) => {
					handleSignals(undefined);
					throw e;
				});
				const openedAt = performance.now();
				let serving: Serving | undefined;
				let recording: TraceRecording | undefined;
				const onUsr1 = () => void recording?.finish("signal");
				try {
					if (trace.record) {
						recording = new TraceRecording(
							trace.record,
							opened.image.disk,
							{ budgetMs: trace.budgetMs, budgetBytes: trace.budgetBytes },
							log,
						);
						process.on("SIGUSR1", onUsr1);
					}
					// The trace lookup ran alongside the key release and the layer opening; the
					// prefetch (of the trace, or of the metadata) runs alongside the mount.
					await replay.begin(opened.image, () => {
						void startMetadataPrefetch(opened, opts, log);
					});
					if (opts.runConfig)
						await writeRunConfig(opts.runConfig, opened.image);
					serving = await startServing({
						extraStats: () => ({
							...(replay.mode !== "none" ? { trace: replay.toJSON() } : {}),
							...(recording ? { recording: recording.toJSON() } : {}),
						}),
						source: opened.image.disk,
						lazy: opened.stats,
						name: opened.name,
						nbd,
						fuse: opts.fuse,
						mountAt: opts.mountAt,
						metrics,
						statsFile: opts.stats,
						statsIntervalMs: interval ? interval * 1000 : undefined,
						log,
					});
					const servingAt = performance.now();
					const ready = {
						ok: true,
						image: opened.name,
						size: opened.image.disk.size,
						nbd: serving.nbd,
						fuse: serving.fuse,
						mountedAt: serving.mountedAt,
						loopDevice: serving.loopDevice,
						metrics: serving.metrics,
						...(replay.mode !== "none" ? { trace: replay.toJSON() } : {}),
						...(recording ? { recording: recording.toJSON() } : {}),
						timingsMs: {
							startup: ms(openStart),
							open: ms(openedAt - openStart),
							...(keyMs !== undefined ? { key: ms(keyMs) } : {}),
							...serving.timingsMs,
							ready: ms(servingAt),
						},
					};
					if (opts.json) printJson(ready);
					else
						process.stdout.write(
							`serving ${opened.name} (${formatBytes(ready.size)})${[
								serving.nbd ? `\n  nbd       ${serving.nbd}` : "",
								serving.fuse ? `\n  fuse      ${serving.fuse}` : "",
								serving.mountedAt
									? `\n  mounted   ${serving.mountedAt} (${serving.loopDevice}, read-only)`
									: "",
								serving.metrics ? `\n  metrics   ${serving.metrics}` : "",
								replay.mode !== "none"
									? `\n  trace     ${describeReplay(replay.toJSON())}`
									: "",
								recording
									? `\n  recording ${recording.file} (start-up trace)`
									: "",
							].join("")}\n`,
						);
					const sig = await stopped;
					log(`${sig}: shutting down`);
					await recording?.finish("signal");
				} finally {
					process.off("SIGUSR1", onUsr1);
					await recording?.finish("close");
					await replay.close();
					await serving?.close();
					await opened.finish();
					handleSignals(undefined);
				}
				log("stopped");
			}),
	);
}

/** The decrypted image config's run settings only (entrypoint, cmd, env, workdir, user), 0600. */
async function writeRunConfig(file: string, image: OpenedImage): Promise<void> {
	const config = await image.imageConfig();
	const run =
		config === null ? undefined : runConfigOf(config, "the image config");
	const doc = run
		? {
				config: {
					Entrypoint: run.entrypoint,
					Cmd: run.cmd,
					Env: run.env,
					WorkingDir: run.workingDir,
					User: run.user,
				},
			}
		: {};
	await writeFileAtomic(file, `${JSON.stringify(doc)}\n`, 0o600);
}

function describeReplay(t: TraceReplayJson): string {
	if (t.state === "none") return "no start-up trace attached";
	if (t.state === "refused")
		return `start-up trace refused (${t.error?.code}): not used`;
	if (t.state === "pending") return "looking up the start-up trace";
	return `replaying the start-up trace: ${t.entries} chunks`;
}
