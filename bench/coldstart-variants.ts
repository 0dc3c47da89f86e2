/**
 * The cold-start bench's variants (issue 18): how each gets the image into the registry once
 * (setup) and how one cold run of each goes (nothing of the image local, page caches dropped,
 * timed from the start of the first command to the workload's first byte of output).
 *
 *   A  ocicrypt waterfall: skopeo copy --decryption-key → umoci unpack → chroot python3
 *   B  dadi, key from the broker: dadi-guest run --broker --attester sample (FUSE + loop), empty
 *      chunk cache; no access trace (--prefetch none when the build has the flag)
 *   C  dadi with a recorded access trace attached to the image (skipped when the build lacks it)
 *   D  plain: skopeo copy → umoci unpack → chroot python3
 *   D2 plain through containerd: ctr images pull + ctr run (overlayfs)
 *   E  eStargz through the stargz snapshotter + containerd: ctr-remote rpull + ctr run, converted
 *      (E-convert: ctr-remote image convert --estargz) and optimized per workload (E-opt:
 *      ctr-remote image optimize, which runs the workload to find the prefetch landmark)
 */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { startInitialisedBroker } from "../test/broker/harness.js";
import { startDaemon } from "../test/daemon.js";
import { startContainerd } from "../test/snapshotter/containerd.js";
import { unmountUnder } from "../test/snapshotter/unmount.js";
import type { ColdImage } from "./coldstart-image.js";
import type { ShapedRegistry } from "./coldstart-net.js";
import {
	dropCaches,
	run,
	type Timed,
	timedRun,
	vmHwm,
} from "./coldstart-proc.js";
import {
	buildStargzGrpc,
	stargzMissing,
	startStargz,
} from "./coldstart-stargz.js";

export const WORKLOADS = {
	print: "print(1)",
	numpy: "import numpy; print(1)",
} as const;
export type Workload = keyof typeof WORKLOADS;

export const VARIANTS = [
	"A",
	"B",
	"C",
	"D",
	"D2",
	"E-convert",
	"E-opt",
] as const;
export type Variant = (typeof VARIANTS)[number];

export const VARIANT_LABELS: Record<Variant, string> = {
	A: "A ocicrypt: skopeo decrypt + umoci unpack",
	B: "B dadi, broker key, no trace",
	C: "C dadi with access trace",
	D: "D plain: skopeo + umoci unpack",
	D2: "D2 plain: containerd pull + run",
	"E-convert": "E eStargz (converted)",
	"E-opt": "E eStargz (optimized)",
};

export interface ColdRun {
	variant: Variant;
	link: string;
	workload: Workload;
	rep: number;
	/** Start to the workload's first output, seconds. */
	firstOutputSeconds: number;
	/** Start to exit of the whole command, seconds. */
	totalSeconds: number;
	/** From the registry's access log, start to exit. */
	bytesFetched: number;
	requests: number;
	/** Peak memory, bytes, and how it was measured. */
	peakMemBytes: number | null;
	peakMemHow: string;
	/**
	 * B, C: the bytes the start read from the image's disk — the loop device's sectors read (the
	 * file system's demand, kernel read-ahead included), sampled every 25 ms while the run lasts
	 * (reads in the last interval before the device is detached can be missed).
	 */
	demandBytes?: number;
	/** dadi-guest's own report (B, C): timings, fetched, peakRssBytes. */
	dadi?: Record<string, unknown>;
}

export interface Prepared {
	/** Variants that cannot run here, with the reason. */
	skipped: Partial<Record<Variant, string>>;
	/** What B passes about prefetching, in words. */
	bIncludes: string;
	runOne(v: Variant, w: Workload, link: string, rep: number): Promise<ColdRun>;
	close(): Promise<void>;
}

const KEY_REF = "kbs:///default/image-key/coldstart";

/**
 * Samples every loop device's sectors-read counter while a run lasts: per device the counter at
 * the start (a device re-attached meanwhile whose counter went down starts again from 0) and the
 * last value seen.
 */
class LoopReads {
	readonly #seen = new Map<string, { base: number; last: number }>();
	readonly #timer: NodeJS.Timeout;
	constructor() {
		this.sample(true);
		this.#timer = setInterval(() => this.sample(), 25);
	}
	/** A device first seen after the start is new: its reads count from 0. */
	sample(first = false): void {
		let names: string[];
		try {
			names = readdirSync("/sys/block").filter((n) => n.startsWith("loop"));
		} catch {
			return;
		}
		for (const n of names)
			try {
				const v = Number(
					readFileSync(`/sys/block/${n}/stat`, "utf8").trim().split(/\s+/)[2],
				);
				const s = this.#seen.get(n);
				if (!s) this.#seen.set(n, { base: first ? v : 0, last: v });
				else {
					if (v < s.last) s.base = 0;
					s.last = v;
				}
			} catch {
				// detached meanwhile
			}
	}
	stop(): void {
		clearInterval(this.#timer);
	}
	/** Bytes read from `dev` (e.g. "loop3") while sampled; undefined when never seen. */
	bytes(dev: string): number | undefined {
		const s = this.#seen.get(dev);
		return s === undefined ? undefined : (s.last - s.base) * 512;
	}
}

function helpHas(repo: string, args: string[], flag: string): boolean {
	const r = spawnSync(
		process.execPath,
		[join(repo, "dist/src/cli/dadi-guest.js"), ...args, "--help"],
		{
			encoding: "utf8",
		},
	);
	return r.stdout.includes(flag);
}

/** Pids whose command line contains `arg` as one argument. */
function pidsWithArg(arg: string): number[] {
	const out: number[] = [];
	for (const p of readdirSync("/proc")) {
		if (!/^\d+$/.test(p)) continue;
		try {
			if (readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0").includes(arg))
				out.push(Number(p));
		} catch {
			// gone
		}
	}
	return out;
}

export async function prepareVariants(o: {
	repo: string;
	cacheDir: string;
	work: string;
	image: ColdImage;
	reg: ShapedRegistry;
	workloads: Workload[];
	want: Set<Variant>;
	log: (line: string) => void;
	/** Throws when the bench was interrupted (called between setup steps). */
	checkpoint: () => void;
}): Promise<Prepared> {
	const { repo, work, reg, log } = o;
	const seal = join(repo, "dist/src/cli/dadi-seal.js");
	const guest = join(repo, "dist/src/cli/dadi-guest.js");
	const src = `oci:${o.image.dir}:${o.image.tag}`;
	const H = reg.host;
	const skipped: Prepared["skipped"] = {};
	const cleanups: (() => Promise<void>)[] = [];
	const close = async () => {
		for (const c of cleanups.reverse()) await c().catch(() => {});
	};
	try {
		await mkdir(work, { recursive: true });
		// B and C: the sealed image, its key in a broker.
		const key = join(work, "image.jwk");
		run(process.execPath, [seal, "keygen", "--out", key]);
		const sealTo = (tag: string) =>
			run(process.execPath, [
				seal,
				"seal",
				src,
				`docker://${H}/cs/app:${tag}`,
				"--key",
				key,
				"--key-ref",
				KEY_REF,
				"--insecure",
				"--quiet",
			]);
		log("sealing the image (dadi-seal, ext4 default)...");
		sealTo("sealed");
		o.checkpoint();
		const broker = await startInitialisedBroker(join(work, "broker"));
		cleanups.push(async () => {
			await broker.daemon.stop();
		});
		await broker.putImageKey(KEY_REF, key);
		const brokerUrl = String(broker.daemon.ready.url);
		const traceSupport =
			helpHas(repo, ["serve"], "--record-trace") &&
			spawnSync(process.execPath, [seal, "trace", "attach", "--help"], {
				encoding: "utf8",
			}).stdout.includes("--trace");
		const prefetchFlag = helpHas(repo, ["run"], "--prefetch");
		const bIncludes = prefetchFlag
			? "dadi-guest run --prefetch none: no trace prefetch (the image has none either)"
			: "this build's dadi-guest run as it is: no trace (the build has no --prefetch flag); demand reads with its default read-ahead and metadata fetches";
		// C: one sealed copy per workload with that workload's recorded trace attached.
		if (o.want.has("C")) {
			if (!traceSupport)
				skipped.C =
					"skipped: this build has no trace support — dadi-guest serve --help lacks --record-trace (or dadi-seal has no trace attach)";
			else
				try {
					for (const w of o.workloads) {
						const tag = `trace-${w}`;
						sealTo(tag);
						const mnt = join(work, `record-${w}`);
						const trace = join(work, `trace-${w}.trace`);
						await mkdir(mnt, { recursive: true });
						const serve = await startDaemon(guest, [
							"serve",
							`docker://${H}/cs/app:${tag}`,
							"--key",
							key,
							"--insecure",
							"--mount-at",
							mnt,
							"--record-trace",
							trace,
							"--json",
						]);
						try {
							run("chroot", [mnt, "/usr/bin/python3", "-c", WORKLOADS[w]]);
						} finally {
							await serve.stop();
							await unmountUnder(work);
						}
						run(process.execPath, [
							seal,
							"trace",
							"attach",
							`docker://${H}/cs/app:${tag}`,
							"--trace",
							trace,
							"--key",
							key,
							"--insecure",
						]);
						log(`trace for ${w} recorded and attached (${tag})`);
					}
				} catch (e) {
					skipped.C = `skipped: recording or attaching the trace failed — ${(e as Error).message.replace(/\s+/g, " ").slice(-600)}`;
					log(`C ${skipped.C}`);
				}
		}
		o.checkpoint();
		// A: ocicrypt (JWE, RSA keypair).
		const priv = join(work, "ocicrypt-priv.pem");
		const pub = join(work, "ocicrypt-pub.pem");
		run("openssl", ["genrsa", "-out", priv, "2048"]);
		run("openssl", ["rsa", "-in", priv, "-pubout", "-out", pub]);
		log("pushing the ocicrypt-encrypted and the plain image (skopeo)...");
		run("skopeo", [
			"copy",
			"--quiet",
			"--dest-tls-verify=false",
			"--encryption-key",
			`jwe:${pub}`,
			src,
			`docker://${H}/cs/app:enc`,
		]);
		run("skopeo", [
			"copy",
			"--quiet",
			"--dest-tls-verify=false",
			src,
			`docker://${H}/cs/app:plain`,
		]);
		o.checkpoint();
		// E: eStargz converted and optimized, through a containerd of our own.
		let stargzBin: string | undefined;
		const why = (e: unknown, short: string) => {
			const msg = (e as Error).message.replace(/\s+/g, " ");
			// The command and the end of its stderr (where the error is).
			return `skipped: ${short} — ${msg.length > 700 ? `${msg.slice(0, 200)} … ${msg.slice(-450)}` : msg}`;
		};
		if (o.want.has("E-convert") || o.want.has("E-opt")) {
			let stage = "the stargz snapshotter is not available here";
			try {
				const missing = stargzMissing();
				if (missing) throw new Error(missing);
				stage = "the stargz snapshotter daemon did not build";
				stargzBin = await buildStargzGrpc(repo, o.cacheDir, log);
				stage = "ctr-remote image convert --estargz failed";
				log(
					"converting the image to eStargz (ctr-remote convert / optimize)...",
				);
				const cdir = join(work, "convert");
				const sg = await startStargz(stargzBin, join(cdir, "stargz"), H);
				const c = await startContainerd(
					join(cdir, "containerd"),
					join(cdir, "no-dadi.sock"),
					{ stargz: sg.socket },
				);
				try {
					const remote = (args: string[]) =>
						run("ctr-remote", ["-a", c.socket, ...args], {
							...process.env,
							PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
						});
					remote(["images", "pull", "--plain-http", `${H}/cs/app:plain`]);
					remote([
						"images",
						"convert",
						"--estargz",
						"--oci",
						`${H}/cs/app:plain`,
						`${H}/cs/app:esgz`,
					]);
					remote(["images", "push", "--plain-http", `${H}/cs/app:esgz`]);
					if (o.want.has("E-opt"))
						try {
							for (const w of o.workloads) {
								remote([
									"images",
									"optimize",
									"--oci",
									"--period",
									"5",
									"--entrypoint",
									JSON.stringify(["/usr/bin/python3"]),
									"--args",
									JSON.stringify(["-c", WORKLOADS[w]]),
									`${H}/cs/app:plain`,
									`${H}/cs/app:esgz-opt-${w}`,
								]);
								remote([
									"images",
									"push",
									"--plain-http",
									`${H}/cs/app:esgz-opt-${w}`,
								]);
							}
						} catch (e) {
							skipped["E-opt"] = why(e, "ctr-remote image optimize failed");
							log(`E-opt ${skipped["E-opt"]}`);
						}
				} finally {
					await c.stop();
					await sg.stop();
					await unmountUnder(cdir);
					await rm(cdir, { recursive: true, force: true });
				}
			} catch (e) {
				stargzBin = undefined;
				skipped["E-convert"] = why(e, stage);
				skipped["E-opt"] = skipped["E-convert"];
				log(`E ${skipped["E-convert"]}`);
			}
		}

		const runOne = async (
			v: Variant,
			w: Workload,
			link: string,
			rep: number,
		): Promise<ColdRun> => {
			const dir = join(work, `run-${v}-${w}-${link}-${rep}`);
			await rm(dir, { recursive: true, force: true });
			await mkdir(dir, { recursive: true });
			const code = WORKLOADS[w];
			let t: Timed;
			let peakMemBytes: number | null = null;
			let peakMemHow = "largest process of the command's tree (GNU time %M)";
			let dadi: Record<string, unknown> | undefined;
			let demandBytes: number | undefined;
			let mark = 0;
			const timeFile = join(dir, "time.txt");
			try {
				if (v === "A" || v === "D") {
					const script = [
						"set -e",
						`skopeo copy --quiet --src-tls-verify=false ${v === "A" ? `--decryption-key ${priv} ` : ""}docker://${H}/cs/app:${v === "A" ? "enc" : "plain"} oci:${dir}/oci:img >/dev/null`,
						`umoci unpack --image ${dir}/oci:img ${dir}/bundle >/dev/null`,
						`exec chroot ${dir}/bundle/rootfs /usr/bin/python3 -c '${code}'`,
					].join("\n");
					dropCaches();
					mark = reg.mark();
					t = await timedRun("sh", ["-c", script], timeFile);
				} else if (v === "B" || v === "C") {
					const args = [
						guestProgram(repo),
						"run",
						`docker://${H}/cs/app:${v === "B" ? "sealed" : `trace-${w}`}`,
						"--broker",
						brokerUrl,
						"--attester",
						"sample",
						"--insecure",
						"--block",
						"loop",
						// No --cache-dir: chunks wait in memory, as in a sandbox VM, which has no disk
						// of its own to keep them on (and a file per chunk costs the start CPU time).
						"--json",
						...(prefetchFlag
							? ["--prefetch", v === "B" ? "none" : "trace"]
							: []),
						"--",
						"/usr/bin/python3",
						"-c",
						code,
					];
					dropCaches();
					mark = reg.mark();
					const sampler = new LoopReads();
					try {
						t = await timedRun(process.execPath, args, timeFile);
					} finally {
						sampler.stop();
					}
					const line = t.stderr
						.split("\n")
						.find((l) => l.startsWith("DADI-RUN "));
					if (line) dadi = JSON.parse(line.slice("DADI-RUN ".length));
					const dev = String(dadi?.blockDevice ?? "").replace("/dev/", "");
					// dadi-guest counts what the kernel read of the disk itself (run report `read`);
					// the loop device's counters are the fallback for builds without it
					const guestRead = (dadi?.read as { bytes?: unknown } | undefined)
						?.bytes;
					demandBytes =
						typeof guestRead === "number" ? guestRead : sampler.bytes(dev);
					if (typeof dadi?.peakRssBytes === "number") {
						peakMemBytes = Math.max(dadi.peakRssBytes, t.maxRss ?? 0);
						peakMemHow =
							"largest process of the tree (GNU time %M: dadi-guest or python3); dadi-guest's own VmHWM is in dadi.peakRssBytes";
					}
				} else {
					// D2, E-convert, E-opt: a fresh containerd (and stargz snapshotter) per run, started
					// before the clock like container-bench.ts does.
					const isE = v !== "D2";
					if (isE && !stargzBin)
						throw new Error(skipped[v] ?? "E not prepared");
					const sg = isE
						? await startStargz(stargzBin as string, join(dir, "stargz"), H)
						: undefined;
					const c = await startContainerd(
						join(dir, "containerd"),
						join(dir, "no-dadi.sock"),
						sg ? { stargz: sg.socket } : {},
					);
					try {
						const ref = `${H}/cs/app:${v === "D2" ? "plain" : v === "E-convert" ? "esgz" : `esgz-opt-${w}`}`;
						const pull = isE
							? `ctr-remote -a ${c.socket} images rpull --plain-http ${ref} >/dev/null`
							: `ctr -a ${c.socket} images pull --plain-http ${ref} >/dev/null`;
						const script = [
							"set -e",
							"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
							pull,
							`exec ctr -a ${c.socket} run --rm ${isE ? "--snapshotter stargz " : ""}${ref} cs-${rep} /usr/bin/python3 -c '${code}'`,
						].join("\n");
						dropCaches();
						mark = reg.mark();
						t = await timedRun("sh", ["-c", script], timeFile);
						const cPid = pidsWithArg(join(dir, "containerd", "config.toml"))[0];
						const daemons =
							(vmHwm(cPid) ?? 0) + (sg ? (vmHwm(sg.pid) ?? 0) : 0);
						peakMemBytes = daemons + (t.maxRss ?? 0);
						peakMemHow = `containerd${sg ? " + stargz snapshotter" : ""} VmHWM + the largest client process (ctr, python3)`;
					} finally {
						await c.stop();
						await sg?.stop();
						await unmountUnder(dir);
					}
				}
				const traffic = reg.traffic(mark);
				if (t.code !== 0 || t.firstOutput === null || t.stdout.trim() !== "1")
					throw new Error(
						`${v} ${w}: exit ${t.code}, printed ${JSON.stringify(t.stdout.slice(0, 200))}: ${t.stderr.trim().slice(-1500)}`,
					);
				if (peakMemBytes === null && t.maxRss !== undefined)
					peakMemBytes = t.maxRss;
				return {
					variant: v,
					link,
					workload: w,
					rep,
					firstOutputSeconds: t.firstOutput,
					totalSeconds: t.total,
					bytesFetched: traffic.bytes,
					requests: traffic.requests,
					peakMemBytes,
					peakMemHow,
					...(dadi ? { dadi } : {}),
					...(demandBytes === undefined ? {} : { demandBytes }),
				};
			} finally {
				await unmountUnder(dir);
				await rm(dir, { recursive: true, force: true });
			}
		};
		return { skipped, bIncludes, runOne, close };
	} catch (e) {
		await close();
		throw e;
	}
}

/**
 * The dadi-guest a start runs: the single-file build `npm run build` writes (what a guest image
 * ships, and what dadi-snapshotter starts), or dist's module entry point without it.
 */
function guestProgram(repo: string): string {
	const bundle = join(repo, "dist/guest/dadi-guest.mjs");
	return existsSync(bundle) ? bundle : join(repo, "dist/src/cli/dadi-guest.js");
}
