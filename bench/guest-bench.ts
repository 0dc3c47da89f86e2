/**
 * The guest section of `npm run bench` (`--guest` runs only this): the realistic disk sealed with
 * the defaults (64 KiB chunks, zstd) into an oci: layout on tmpfs, opened with openSealedImage and
 * served in this process with startServing — an NBD export on a unix socket and a FUSE file — then
 * read by real clients in child processes, warm (no registry; the sealed blob sits in memory):
 *
 * 1. sequential 1 MiB reads of the whole disk, 16 in flight, and
 * 2. random 4 KiB reads, queue depth 16, for a fixed time,
 *
 * through NBD (nbdcopy; fio's nbd engine, which uses libnbd), through FUSE (fio on DIR/disk with
 * O_DIRECT), through a loop device on the FUSE file (direct I/O, and buffered as `dadi-guest serve
 * --mount-at` sets it up), and with VirtualDisk.read in this process (no transport); against the
 * same fio jobs on the plaintext disk (exported to the same tmpfs, as a file and through a loop
 * device) and node:crypto's one-call AES-256-GCM decrypt of as many bytes (the crypto limit).
 * Then the same servers over a disk held in memory: the transport's own cost (this replaced the
 * opt-in FUSE_BENCH test of test/fuse-server.test.ts).
 *
 * Deadlock rules (src/guest/fuse/server.ts): this process serves the FUSE mount, so it never makes
 * a synchronous fs call on the mount or on anything backed by it, and never runs a program stored
 * there; every client is a child process started with the asynchronous spawn. The mount point lies
 * outside the scratch directory, which run.ts removes synchronously on Ctrl-C. On any exit the
 * children are killed, the mount detached and the loop devices released.
 *
 * See docs/benchmarks.md, "Guest block devices: NBD and FUSE".
 */
import { type ChildProcess, spawn } from "node:child_process";
import {
	createCipheriv,
	createDecipheriv,
	createHash,
	randomBytes,
} from "node:crypto";
import { existsSync, rmdirSync } from "node:fs";
import {
	mkdir,
	mkdtemp,
	readFile,
	rm,
	rmdir,
	writeFile,
} from "node:fs/promises";
import { Session } from "node:inspector/promises";
import { availableParallelism, loadavg, release, tmpdir } from "node:os";
import { basename, join } from "node:path";
import { generateImageKey } from "../src/crypto/image-key.js";
import type { BlockSource } from "../src/guest/block-source.js";
import { detachQuietly } from "../src/guest/fuse/mount.js";
import type { GuestMetrics } from "../src/guest/metrics.js";
import { type Serving, startServing } from "../src/guest/serve.js";
import { exportDisk } from "../src/image/export.js";
import { type OpenedImage, openSealedImage } from "../src/image/open-image.js";
import type { LatencyHistogram } from "../src/latency-histogram.js";
import { sealDisk } from "../src/seal/seal-disk.js";
import type { VirtualDisk } from "../src/storage/virtual-disk.js";
import { opensslSpeed } from "./baseline.js";
import {
	addRatios,
	type CryptoLimit,
	formatGuestHeader,
	formatGuestTargets,
	formatProfiles,
	formatRandom,
	formatSequential,
	formatTransport,
	GUEST_TARGETS,
	type GuestBenchReport,
	type JobKind,
	type JobResult,
	type JobRun,
	median,
	type ProfileSummary,
	type ServerSide,
	summarizeJob,
} from "./guest-report.js";
import { prepareImage, prng } from "./image.js";
import { which } from "./image-measure.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const QUEUE_DEPTH = 16;
const SEQ_BS = MiB;
const RAND_BS = 4 * KiB;
/** The transport-only disk (what the old FUSE_BENCH test served). */
const TRANSPORT_BYTES = 256 * MiB;
/** Runs of each sequential transport-only job (median); random ones run once. */
const SEQ_TRANSPORT_RUNS = 3;
const TAG = "v1";
/** Bytes compared with cmp through FUSE + loop and through NBD before the runs. */
const CHECK_BYTES = 256 * MiB;

export interface GuestBenchOptions {
	cacheDir: string;
	/** Scratch directory (tmpfs when possible; removed by the caller); this section uses a subdirectory. */
	workDir: string;
	workDirDescription: string;
	reps: number;
	quick: boolean;
	synthetic: boolean;
	/** Runtime of each random job, seconds. */
	randomSeconds: number;
	/** Also profile a few jobs once (main thread, node:inspector) and write .cpuprofile files here. */
	profileDir?: string;
	log: (line: string) => void;
	print: (text: string) => void;
}

/** Why the section cannot run here, or null. */
export function guestBenchMissing(): string | null {
	if (process.getuid?.() !== 0)
		return "needs root (mount(2) of the FUSE file system, loop devices)";
	if (!existsSync("/dev/fuse")) return "/dev/fuse is missing (no FUSE here)";
	for (const [tool, pkg] of [
		["fio", "fio"],
		["nbdcopy", "libnbd-bin"],
		["losetup", "mount"],
		["cmp", "diffutils"],
	] as const)
		if (which(tool) === null)
			return `${tool} not found (Debian: apt-get install ${pkg})`;
	return null;
}

const seconds = (since: number): number => (performance.now() - since) / 1000;

// --- child processes and clean-up --------------------------------------------------------------

interface Ran {
	code: number | null;
	stdout: string;
	stderr: string;
	seconds: number;
}

/** SIGKILL to a child's process group (children are started as group leaders). */
function killGroup(c: ChildProcess): void {
	if (c.pid === undefined || c.exitCode !== null || c.signalCode !== null)
		return;
	try {
		process.kill(-c.pid, "SIGKILL");
	} catch {
		c.kill("SIGKILL");
	}
}

/**
 * Everything the section starts that outlives a step: child processes, loop devices, servers,
 * mount points. `release()` undoes it in order; the exit hook does what can be done synchronously
 * when the process ends another way (Ctrl-C in run.ts, an uncaught error).
 */
class Resources {
	readonly children = new Set<ChildProcess>();
	readonly loops: string[] = [];
	readonly servings: Serving[] = [];
	readonly mountDirs: string[] = [];
	readonly images: OpenedImage[] = [];
	private readonly onExit = (): void => {
		for (const c of this.children) killGroup(c);
		for (const d of this.mountDirs) detachQuietly(d);
		// Not waited for: a loop device busy with I/O for this (dying) server would block a
		// synchronous losetup until the FUSE connection is gone, which needs this process gone.
		for (const dev of this.loops)
			try {
				spawn("losetup", ["-d", dev], {
					detached: true,
					stdio: "ignore",
				}).unref();
			} catch {
				// nothing more to do at exit
			}
		for (const d of this.mountDirs)
			try {
				rmdirSync(d);
			} catch {
				// still busy or gone
			}
	};

	constructor() {
		process.on("exit", this.onExit);
	}

	/** Runs a program to completion (killed after `timeoutMs`) without blocking this thread. */
	run(cmd: string, args: string[], timeoutMs = 600_000): Promise<Ran> {
		return new Promise((resolve, reject) => {
			const t0 = performance.now();
			// Its own process group, so that fio's job processes (it forks them) go with it.
			const p = spawn(cmd, args, {
				stdio: ["ignore", "pipe", "pipe"],
				detached: true,
			});
			this.children.add(p);
			const out: Buffer[] = [];
			let err = "";
			p.stdout?.on("data", (d: Buffer) => out.push(d));
			p.stderr?.on("data", (d: Buffer) => {
				if (err.length < 64 * KiB) err += d.toString();
			});
			const timer = setTimeout(() => killGroup(p), timeoutMs);
			p.on("error", (e) => {
				clearTimeout(timer);
				this.children.delete(p);
				reject(e);
			});
			p.on("close", (code) => {
				clearTimeout(timer);
				this.children.delete(p);
				resolve({
					code,
					stdout: Buffer.concat(out).toString(),
					stderr: err,
					seconds: seconds(t0),
				});
			});
		});
	}

	async ok(cmd: string, args: string[], timeoutMs?: number): Promise<Ran> {
		const r = await this.run(cmd, args, timeoutMs);
		if (r.code !== 0)
			throw new Error(
				`${cmd} ${args.join(" ")} exited ${r.code}: ${r.stderr.trim().slice(-2000)}`,
			);
		return r;
	}

	/** A read-only loop device on `file`; direct I/O on the backing file when `direct`. */
	async loop(file: string, direct: boolean): Promise<string> {
		const args = ["--read-only", "--find", "--show"];
		if (direct) args.push("--direct-io=on");
		const dev = (await this.ok("losetup", [...args, file])).stdout.trim();
		if (!/^\/dev\/loop\d+$/.test(dev))
			throw new Error(`losetup printed ${JSON.stringify(dev)}`);
		this.loops.push(dev);
		if (direct) {
			const dio = (
				await readFile(`/sys/block/${basename(dev)}/loop/dio`, "utf8")
			).trim();
			if (dio !== "1")
				throw new Error(
					`${dev}: the kernel did not enable direct I/O on ${file}`,
				);
		}
		return dev;
	}

	async release(log: (line: string) => void): Promise<void> {
		for (const c of this.children) killGroup(c);
		for (const dev of this.loops.splice(0).reverse()) {
			const r = await this.run("losetup", ["-d", dev], 30_000).catch(
				(e: Error) => ({ code: -1, stderr: e.message }),
			);
			if (r.code !== 0)
				log(`guest: losetup -d ${dev} failed: ${r.stderr.trim()}`);
		}
		for (const s of this.servings.splice(0).reverse())
			await s.close().catch((e: Error) => log(`guest: closing: ${e.message}`));
		for (const i of this.images.splice(0)) await i.close().catch(() => {});
		for (const d of this.mountDirs.splice(0))
			await rmdir(d).catch((e: Error) =>
				log(`guest: removing ${d}: ${e.message}`),
			);
		process.off("exit", this.onExit);
	}
}

// --- measurements -------------------------------------------------------------------------------

/** The server's read count, bytes and latency histogram, to diff around a run. */
interface MetricsSnapshot {
	reads: number;
	bytes: number;
	latency: LatencyHistogram;
}

function snapshot(m: GuestMetrics): MetricsSnapshot {
	return { reads: m.reads, bytes: m.readBytes, latency: m.latency.snapshot() };
}

function serverDiff(m: GuestMetrics, before: MetricsSnapshot): ServerSide {
	const h = m.latency.since(before.latency);
	const reads = m.reads - before.reads;
	return {
		reads,
		bytes: m.readBytes - before.bytes,
		p50Ms: reads ? h.quantile(0.5) : 0,
		p99Ms: reads ? h.quantile(0.99) : 0,
	};
}

type Measured = Omit<JobRun, "processCpuSeconds" | "server">;

/** Runs `fn` with the process's CPU time and (when served) the server's reads around it. */
async function measured(
	metrics: GuestMetrics | undefined,
	fn: () => Promise<Measured>,
): Promise<JobRun> {
	const before = metrics ? snapshot(metrics) : undefined;
	const cpu = process.cpuUsage();
	const r = await fn();
	const used = process.cpuUsage(cpu);
	return {
		...r,
		processCpuSeconds: (used.user + used.system) / 1e6,
		...(metrics && before ? { server: serverDiff(metrics, before) } : {}),
	};
}

interface FioSpec {
	name: string;
	target: { file: string } | { nbd: string; size: number };
	rw: "read" | "randread";
	bs: number;
	iodepth: number;
	ioengine?: "libaio" | "psync";
	numjobs?: number;
	/** Fixed time; without it, the whole target once. */
	seconds?: number;
}

function fioArgs(j: FioSpec): string[] {
	const a = [
		`--name=${j.name}`,
		"--readonly",
		`--rw=${j.rw}`,
		`--bs=${j.bs}`,
		`--iodepth=${j.iodepth}`,
		"--group_reporting",
		"--output-format=json",
	];
	if ("nbd" in j.target)
		a.push(
			"--ioengine=nbd",
			`--uri=${j.target.nbd}`,
			`--size=${j.target.size}`,
		);
	else
		a.push(
			`--filename=${j.target.file}`,
			`--ioengine=${j.ioengine ?? "libaio"}`,
			"--direct=1",
		);
	if (j.numjobs !== undefined) a.push(`--numjobs=${j.numjobs}`);
	if (j.seconds !== undefined) a.push("--time_based", `--runtime=${j.seconds}`);
	return a;
}

interface FioRead {
	io_bytes: number;
	total_ios: number;
	runtime: number;
	iops: number;
	bw_bytes: number;
	clat_ns?: { percentile?: Record<string, number> };
}

async function fio(res: Resources, j: FioSpec): Promise<Measured> {
	const r = await res.run("fio", fioArgs(j));
	const at = r.stdout.indexOf("{"); // the nbd engine prints a line before the JSON
	let job:
		| { error: number; read: FioRead; usr_cpu: number; sys_cpu: number }
		| undefined;
	try {
		job = JSON.parse(r.stdout.slice(Math.max(0, at))).jobs[0];
	} catch {
		// reported below
	}
	if (r.code !== 0 || job === undefined || job.error !== 0)
		throw new Error(
			`fio ${fioArgs(j).join(" ")} failed (exit ${r.code}, error ${job?.error}): ${r.stderr.trim().slice(-2000)}`,
		);
	const rd = job.read;
	const pct = rd.clat_ns?.percentile ?? {};
	const s = rd.runtime / 1000;
	return {
		seconds: s,
		bytes: rd.io_bytes,
		ios: rd.total_ios,
		MBps: rd.bw_bytes / 1e6,
		iops: rd.iops,
		...(pct["50.000000"] !== undefined
			? {
					clatUs: {
						p50: (pct["50.000000"] ?? 0) / 1000,
						p99: (pct["99.000000"] ?? 0) / 1000,
					},
				}
			: {}),
		toolCpuSeconds: ((job.usr_cpu + job.sys_cpu) / 100) * s,
	};
}

/** A whole-target pass timed by the wall clock (process start included): nbdcopy, dd. */
async function wallClock(
	res: Resources,
	cmd: string,
	args: string[],
	bytes: number,
	bs: number,
): Promise<Measured> {
	const r = await res.ok(cmd, args);
	return {
		seconds: r.seconds,
		bytes,
		ios: bytes / bs,
		MBps: bytes / r.seconds / 1e6,
		iops: bytes / bs / r.seconds,
	};
}

function percentilesUs(ms: number[]): { p50: number; p99: number } {
	const s = Float64Array.from(ms).sort();
	const at = (p: number) =>
		(s[Math.max(0, Math.ceil(p * s.length) - 1)] ?? 0) * 1000;
	return { p50: at(0.5), p99: at(0.99) };
}

/** VirtualDisk.read of the whole disk in `bs` reads, QUEUE_DEPTH in flight: no transport at all. */
async function inProcessSequential(disk: VirtualDisk): Promise<Measured> {
	const lat: number[] = [];
	let next = 0;
	const t0 = performance.now();
	const worker = async (): Promise<void> => {
		while (next < disk.size) {
			const off = next;
			const len = Math.min(SEQ_BS, disk.size - off);
			next += len;
			const t = performance.now();
			await disk.read(off, len);
			lat.push(performance.now() - t);
		}
	};
	await Promise.all(Array.from({ length: QUEUE_DEPTH }, worker));
	const s = seconds(t0);
	return {
		seconds: s,
		bytes: disk.size,
		ios: lat.length,
		MBps: disk.size / s / 1e6,
		iops: lat.length / s,
		clatUs: percentilesUs(lat),
	};
}

/** mulberry32: a small seeded PRNG (every run reads the same offsets). */

/** Uniform random 4 KiB VirtualDisk.reads, QUEUE_DEPTH in flight, for `secs` seconds. */
async function inProcessRandom(
	disk: VirtualDisk,
	secs: number,
): Promise<Measured> {
	const rand = prng(0x4b1d);
	const blocks = Math.floor(disk.size / RAND_BS);
	const lat: number[] = [];
	const t0 = performance.now();
	const end = t0 + secs * 1000;
	const worker = async (): Promise<void> => {
		while (performance.now() < end) {
			const off = Math.floor(rand() * blocks) * RAND_BS;
			const t = performance.now();
			await disk.read(off, RAND_BS);
			lat.push(performance.now() - t);
		}
	};
	await Promise.all(Array.from({ length: QUEUE_DEPTH }, worker));
	const s = seconds(t0);
	return {
		seconds: s,
		bytes: lat.length * RAND_BS,
		ios: lat.length,
		MBps: (lat.length * RAND_BS) / s / 1e6,
		iops: lat.length / s,
		clatUs: percentilesUs(lat),
	};
}

/**
 * node:crypto AES-256-GCM decrypt of the whole disk's bytes: in one update() call (the crypto
 * limit; it also allocates and first-touches an output as large as the disk) and in 64 KiB calls.
 */
async function measureCryptoLimit(
	path: string,
	oneCallReps: number,
	streamedReps: number,
): Promise<CryptoLimit> {
	const data = await readFile(path);
	const key = randomBytes(32);
	const iv = randomBytes(12);
	// Encrypted in pieces into one buffer (the same bytes as one call; untimed).
	const sealed = Buffer.allocUnsafeSlow(data.length);
	const c = createCipheriv("aes-256-gcm", key, iv);
	for (let off = 0; off < data.length; off += 4 * MiB)
		c.update(data.subarray(off, off + 4 * MiB)).copy(sealed, off);
	c.final();
	const tag = c.getAuthTag();
	const oneCall: number[] = [];
	for (let i = 0; i < oneCallReps; i++) {
		const t0 = performance.now();
		const d = createDecipheriv("aes-256-gcm", key, iv);
		d.setAuthTag(tag);
		const plain = d.update(sealed);
		d.final();
		oneCall.push(seconds(t0));
		if (i === 0 && !plain.equals(data))
			throw new Error("AES-GCM baseline: decryption did not round-trip");
	}
	const streamed: number[] = [];
	for (let i = 0; i < streamedReps; i++) {
		const t0 = performance.now();
		const d = createDecipheriv("aes-256-gcm", key, iv);
		d.setAuthTag(tag);
		for (let off = 0; off < sealed.length; off += 64 * KiB)
			d.update(sealed.subarray(off, off + 64 * KiB));
		d.final();
		streamed.push(seconds(t0));
	}
	const ssl = opensslSpeed(true, 1);
	const rate = (runs: number[]) => ({
		runs,
		medianSeconds: median(runs),
		MBps: data.length / median(runs) / 1e6,
	});
	return {
		bytes: data.length,
		oneCall: rate(oneCall),
		streamed: rate(streamed),
		opensslMBps: ssl === null ? null : (ssl * MiB) / 1e6,
	};
}

// --- profiles -----------------------------------------------------------------------------------

interface CpuProfileNode {
	id: number;
	callFrame: { functionName: string; url: string; lineNumber: number };
	children?: number[];
}
interface CpuProfile {
	nodes: CpuProfileNode[];
	samples: number[];
	timeDeltas: number[];
}

/** Categories by the nearest frame (leaf first) that says what the time is for. */
const FRAME_RULES: [RegExp, RegExp | null, string][] = [
	[/format\/codec\.js$/, null, "zstd decompress"],
	[/internal\/crypto\/|\/src\/crypto\//, null, "AES-256-GCM (node:crypto)"],
	[/^node:buffer$/, null, "buffer allocation and copies"],
	[
		/guest\/fuse\/server\.js$/,
		/^write$/,
		"FUSE: reply writes (writev to /dev/fuse)",
	],
	[
		/guest\/fuse\/reader\.js$|per_context\/messageport|internal\/worker/,
		null,
		"FUSE: requests from the reader thread",
	],
	[/guest\/fuse\//, null, "FUSE: request handling"],
	[
		/^node:(net|stream|internal\/stream_base_commons|internal\/streams\/)/,
		null,
		"NBD: socket I/O (node:net)",
	],
	[/guest\/nbd\//, null, "NBD: protocol"],
	[
		/storage\/source\.js$|internal\/fs\/promises/,
		null,
		"layer blob reads (FileHandle.read)",
	],
	[/storage\/|format\//, null, "storage: index lookup, runs, copies"],
	[/guest\/metrics\.js$/, null, "metrics"],
];

function categorize(stack: CpuProfileNode[]): string {
	const leaf = stack[0]?.callFrame.functionName ?? "";
	if (leaf === "(garbage collector)") return "garbage collection";
	if (leaf === "(idle)") return "idle (waiting for requests or the pool)";
	if (leaf === "(program)") return "V8/native, unattributed";
	for (const n of stack)
		for (const [url, fn, name] of FRAME_RULES)
			if (
				url.test(n.callFrame.url) &&
				(fn === null || fn.test(n.callFrame.functionName))
			)
				return name;
	return "other";
}

/** A frame's name for the top list; native frames (V8 cannot name them) by their JS caller. */
function frameName(stack: CpuProfileNode[]): string {
	const cf = stack[0]?.callFrame;
	if (cf === undefined) return "?";
	const where = (c: CpuProfileNode["callFrame"]) =>
		`${c.functionName || "(anonymous)"} ${basename(c.url)}:${c.lineNumber + 1}`;
	if (cf.url !== "") return where(cf);
	if (cf.functionName.startsWith("(")) return cf.functionName;
	const caller = stack.find((n) => n.callFrame.url !== "");
	return caller
		? `native, called by ${where(caller.callFrame)}`
		: cf.functionName;
}

function summarizeProfile(
	job: string,
	p: CpuProfile,
	run: JobRun,
	kind: JobKind,
	processCpuSeconds: number,
	file?: string,
): ProfileSummary {
	const byId = new Map(p.nodes.map((n) => [n.id, n]));
	const parent = new Map<number, number>();
	for (const n of p.nodes)
		for (const c of n.children ?? []) parent.set(c, n.id);
	const self = new Map<number, number>();
	// timeDeltas[i + 1] is how long sample i's stack was current.
	for (const [i, id] of p.samples.entries())
		self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i + 1] ?? 0));
	const cats = new Map<string, number>();
	const fns = new Map<string, number>();
	let total = 0;
	for (const [id, us] of self) {
		const stack: CpuProfileNode[] = [];
		for (
			let at: number | undefined = id;
			at !== undefined;
			at = parent.get(at)
		) {
			const n = byId.get(at);
			if (n) stack.push(n);
		}
		const cat = categorize(stack);
		cats.set(cat, (cats.get(cat) ?? 0) + us);
		const fn = frameName(stack);
		fns.set(fn, (fns.get(fn) ?? 0) + us);
		total += us;
	}
	const sorted = (m: Map<string, number>) =>
		[...m]
			.sort((a, b) => b[1] - a[1])
			.map(([k, us]) => ({ ms: us / 1000, share: us / total, k }));
	// Random: µs per read; sequential: ms per GiB.
	const perUnit = (ms: number): number =>
		kind === "random"
			? (ms * 1000) / Math.max(1, run.ios)
			: ms / (run.bytes / 2 ** 30);
	return {
		job,
		kind,
		ios: run.ios,
		bytes: run.bytes,
		totalMs: total / 1000,
		processCpuSeconds,
		categories: sorted(cats).map(({ k, ms, share }) => ({
			name: k,
			ms,
			share,
			perUnit: perUnit(ms),
		})),
		top: sorted(fns)
			.slice(0, 15)
			.map(({ k, ms, share }) => ({ fn: k, ms, share })),
		...(file ? { file } : {}),
	};
}

async function profiled(
	dir: string,
	job: string,
	kind: JobKind,
	fn: () => Promise<JobRun>,
): Promise<ProfileSummary> {
	const session = new Session();
	session.connect();
	try {
		await session.post("Profiler.enable");
		await session.post("Profiler.setSamplingInterval", { interval: 250 });
		await session.post("Profiler.start");
		const cpu = process.cpuUsage();
		const run = await fn();
		const used = process.cpuUsage(cpu);
		const { profile } = (await session.post("Profiler.stop")) as {
			profile: CpuProfile;
		};
		const file = join(dir, `guest-${job}.cpuprofile`);
		await writeFile(file, JSON.stringify(profile));
		return summarizeProfile(
			job,
			profile,
			run,
			kind,
			(used.user + used.system) / 1e6,
			file,
		);
	} finally {
		session.disconnect();
	}
}

// --- the section --------------------------------------------------------------------------------

interface Job {
	id: string;
	kind: JobKind;
	path: string;
	tool: string;
	baseline?: string;
	/** Untimed preparation before each run (dropping a page cache). */
	before?: () => Promise<void>;
	run: () => Promise<JobRun>;
}

function version(out: string, re: RegExp): string {
	return re.exec(out)?.[1] ?? "?";
}

export async function runGuestBench(
	o: GuestBenchOptions,
): Promise<GuestBenchReport> {
	const started = performance.now();
	const loadStart = loadavg();
	const size = (o.quick ? 256 : 1024) * MiB;
	const work = join(o.workDir, "guest");
	await mkdir(work, { recursive: true });
	const res = new Resources();
	const phase = (line: string): void =>
		o.log(`guest: ${line} (at ${seconds(started).toFixed(0)} s)`);
	const notes: string[] = [];
	const serverLog: string[] = [];
	const log = (line: string): void => {
		serverLog.push(line);
		if (serverLog.length > 200) serverLog.shift();
	};
	try {
		const image = await prepareImage({
			cacheDir: o.cacheDir,
			workDir: work,
			size,
			forceSynthetic: o.synthetic,
			log: o.log,
		});
		if (image.note) notes.push(image.note);
		const fioVersion = (await res.ok("fio", ["--version"])).stdout.trim();
		const nbdcopyVersion = version(
			(await res.ok("nbdcopy", ["--version"])).stdout,
			/nbdcopy (\S+)/,
		);
		const engines = (await res.run("fio", ["--enghelp"])).stdout;
		const fioNbd = /^\s*nbd\s*$/m.test(engines);
		if (!fioNbd)
			notes.push(
				"this fio has no nbd engine (built without libnbd): the NBD rows are nbdcopy only, random NBD reads were not measured",
			);

		phase("sealing (64 KiB chunks, zstd) and exporting the plaintext...");
		const key = generateImageKey();
		const layoutDir = join(work, "layout");
		const t = performance.now();
		const sealed = await sealDisk({
			disk: image.path,
			dest: { transport: "oci", dir: layoutDir, tag: TAG },
			key,
		});
		const sealSeconds = seconds(t);
		const opened = await openSealedImage(
			{ transport: "oci", dir: layoutDir, tag: TAG },
			key,
		);
		res.images.push(opened);
		const disk = opened.disk;
		const plain = join(work, "plain.img");
		await exportDisk(disk, plain, { force: true });
		await res.ok("cmp", [plain, image.path]);
		const storedChunks = sealed.layer.storedChunks;

		phase("serving over NBD and FUSE, attaching loop devices...");
		const mnt = await mkdtemp(join(tmpdir(), "dadi-guest-bench-"));
		res.mountDirs.push(mnt);
		const serving = await startServing({
			source: disk,
			name: "guest-bench",
			nbd: { unix: join(work, "nbd.sock") },
			fuse: mnt,
			log,
		});
		res.servings.push(serving);
		const nbd = serving.nbd as string;
		const fuseFile = serving.fuse as string;
		const metrics = serving.metricsState;
		const fuseLoopDio = await res.loop(fuseFile, true);
		const fuseLoopBuf = await res.loop(fuseFile, false);
		const plainLoop = await res.loop(plain, true);

		phase(
			"checking what NBD and FUSE + loop serve against the export (cmp)...",
		);
		// The first CHECK_BYTES (a whole pass costs ~10 s; the tests verify whole disks with fio).
		const checkBytes = Math.min(size, CHECK_BYTES);
		await res.ok("cmp", ["-n", String(checkBytes), fuseLoopDio, plain]);
		// cmp stops after n bytes; nbdcopy then fails on the closed pipe, and sh reports cmp's status.
		await res.ok("sh", [
			"-c",
			'nbdcopy "$1" - 2>/dev/null | cmp -n "$3" - "$2"',
			"sh",
			nbd,
			plain,
			String(checkBytes),
		]);
		// cmp filled the loop device's page cache; drop it (fio uses O_DIRECT anyway).
		await dropCache(res, fuseLoopDio);

		const secs = o.randomSeconds;
		const seqFio =
			(name: string, file: string): (() => Promise<Measured>) =>
			() =>
				fio(res, {
					name,
					target: { file },
					rw: "read",
					bs: SEQ_BS,
					iodepth: QUEUE_DEPTH,
				});
		const randFio =
			(name: string, file: string): (() => Promise<Measured>) =>
			() =>
				fio(res, {
					name,
					target: { file },
					rw: "randread",
					bs: RAND_BS,
					iodepth: QUEUE_DEPTH,
					seconds: secs,
				});
		const served = (fn: () => Promise<Measured>) => () => measured(metrics, fn);
		const local = (fn: () => Promise<Measured>) => () =>
			measured(undefined, fn);
		const dropFuse = () => dropCache(res, fuseFile);
		const fioSeq = `fio libaio --direct=1 --rw=read --bs=1M --iodepth=${QUEUE_DEPTH}`;
		const fioRand = `fio libaio --direct=1 --rw=randread --bs=4k --iodepth=${QUEUE_DEPTH}`;
		const jobs: Job[] = [
			{
				id: "seq-inproc",
				kind: "sequential",
				path: "in process (no transport)",
				tool: `VirtualDisk.read, 1 MiB x ${QUEUE_DEPTH} in flight`,
				run: local(() => inProcessSequential(disk)),
			},
			{
				id: "seq-nbdcopy",
				kind: "sequential",
				path: "NBD (unix socket)",
				tool: `nbdcopy --connections=1 --requests=${QUEUE_DEPTH} --request-size=1M URI null:`,
				baseline: "seq-plain-loop",
				run: served(() =>
					wallClock(
						res,
						"nbdcopy",
						[
							"--connections=1",
							`--requests=${QUEUE_DEPTH}`,
							`--request-size=${SEQ_BS}`,
							nbd,
							"null:",
						],
						size,
						SEQ_BS,
					),
				),
			},
			...(fioNbd
				? [
						{
							id: "seq-nbd-fio",
							kind: "sequential" as const,
							path: "NBD (unix socket)",
							tool: `fio --ioengine=nbd (libnbd) --rw=read --bs=1M --iodepth=${QUEUE_DEPTH}`,
							baseline: "seq-plain-loop",
							run: served(() =>
								fio(res, {
									name: "seq-nbd",
									target: { nbd, size },
									rw: "read",
									bs: SEQ_BS,
									iodepth: QUEUE_DEPTH,
								}),
							),
						},
					]
				: []),
			{
				id: "seq-fuse-file",
				kind: "sequential",
				path: "FUSE file (DIR/disk)",
				tool: fioSeq,
				baseline: "seq-plain-file",
				run: served(seqFio("seq-fuse-file", fuseFile)),
			},
			{
				id: "seq-fuse-loop-dio",
				kind: "sequential",
				path: "FUSE + loop (direct I/O)",
				tool: fioSeq,
				baseline: "seq-plain-loop",
				run: served(seqFio("seq-fuse-loop-dio", fuseLoopDio)),
			},
			{
				id: "seq-fuse-loop-buf",
				kind: "sequential",
				path: "FUSE + loop (buffered, as --mount-at)",
				tool: fioSeq,
				baseline: "seq-plain-loop",
				before: dropFuse,
				run: served(seqFio("seq-fuse-loop-buf", fuseLoopBuf)),
			},
			{
				id: "seq-plain-loop",
				kind: "sequential",
				path: "plaintext + loop (direct I/O)",
				tool: fioSeq,
				run: local(seqFio("seq-plain-loop", plainLoop)),
			},
			{
				id: "seq-plain-file",
				kind: "sequential",
				path: "plaintext file",
				tool: fioSeq,
				run: local(seqFio("seq-plain-file", plain)),
			},
			{
				id: "rand-inproc",
				kind: "random",
				path: "in process (no transport)",
				tool: `VirtualDisk.read, 4 KiB x ${QUEUE_DEPTH} in flight`,
				run: local(() => inProcessRandom(disk, secs)),
			},
			...(fioNbd
				? [
						{
							id: "rand-nbd-fio",
							kind: "random" as const,
							path: "NBD (unix socket)",
							tool: `fio --ioengine=nbd (libnbd) --rw=randread --bs=4k --iodepth=${QUEUE_DEPTH}`,
							baseline: "rand-plain-loop",
							run: served(() =>
								fio(res, {
									name: "rand-nbd",
									target: { nbd, size },
									rw: "randread",
									bs: RAND_BS,
									iodepth: QUEUE_DEPTH,
									seconds: secs,
								}),
							),
						},
					]
				: []),
			{
				id: "rand-fuse-file",
				kind: "random",
				path: "FUSE file (DIR/disk)",
				tool: fioRand,
				baseline: "rand-plain-file",
				run: served(randFio("rand-fuse-file", fuseFile)),
			},
			{
				id: "rand-fuse-loop-dio",
				kind: "random",
				path: "FUSE + loop (direct I/O)",
				tool: fioRand,
				baseline: "rand-plain-loop",
				run: served(randFio("rand-fuse-loop-dio", fuseLoopDio)),
			},
			{
				id: "rand-fuse-loop-buf",
				kind: "random",
				path: "FUSE + loop (buffered, as --mount-at)",
				tool: fioRand,
				baseline: "rand-plain-loop",
				before: dropFuse,
				run: served(randFio("rand-fuse-loop-buf", fuseLoopBuf)),
			},
			{
				id: "rand-plain-loop",
				kind: "random",
				path: "plaintext + loop (direct I/O)",
				tool: fioRand,
				run: local(randFio("rand-plain-loop", plainLoop)),
			},
			{
				id: "rand-plain-file",
				kind: "random",
				path: "plaintext file",
				tool: fioRand,
				run: local(randFio("rand-plain-file", plain)),
			},
		];

		// Round-robin: every job once per round, so drifting load spreads over all of them.
		const runs = new Map<string, JobRun[]>(jobs.map((j) => [j.id, []]));
		for (let rep = 0; rep < o.reps; rep++) {
			phase(`round ${rep + 1} of ${o.reps}`);
			for (const j of jobs) {
				await j.before?.();
				const r = await j.run();
				runs.get(j.id)?.push(r);
				o.log(
					`  round ${rep + 1}, ${j.id}: ${j.kind === "random" ? `${Math.round(r.iops)} IOPS` : `${r.MBps.toFixed(0)} MB/s`}${r.clatUs ? `, p50 ${r.clatUs.p50.toFixed(0)} µs, p99 ${r.clatUs.p99.toFixed(0)} µs` : ""}, process CPU ${r.processCpuSeconds.toFixed(2)} s`,
				);
			}
		}
		const results = jobs.map((j) =>
			summarizeJob(
				{
					id: j.id,
					kind: j.kind,
					path: j.path,
					tool: j.tool,
					...(j.baseline ? { baseline: j.baseline } : {}),
				},
				runs.get(j.id) ?? [],
			),
		);
		const profiles: ProfileSummary[] = [];
		if (o.profileDir !== undefined) {
			await mkdir(o.profileDir, { recursive: true });
			for (const id of [
				"seq-inproc",
				"seq-nbd-fio",
				"seq-fuse-file",
				"rand-inproc",
				"rand-nbd-fio",
				"rand-fuse-loop-dio",
			]) {
				const j = jobs.find((x) => x.id === id);
				if (j === undefined) continue;
				phase(`profiling ${id}...`);
				await j.before?.();
				profiles.push(await profiled(o.profileDir, id, j.kind, j.run));
			}
		}

		// Release the sealed disk's servers and loop devices before the transport-only runs.
		await res.release(o.log);

		phase("transport only (a pseudo-random disk in memory)...");
		const transport = await runTransport(o, work, 2, fioNbd);

		phase(
			`measuring the crypto limit (AES-256-GCM decrypt of ${size / MiB} MiB)...`,
		);
		const crypto = await measureCryptoLimit(
			image.path,
			o.quick ? o.reps : 1,
			o.reps,
		);
		o.log(
			`  one call ${crypto.oneCall.MBps.toFixed(0)} MB/s, 64 KiB calls ${crypto.streamed.MBps.toFixed(0)} MB/s, openssl ${crypto.opensslMBps?.toFixed(0) ?? "n/a"} MB/s`,
		);

		addRatios(results, crypto.oneCall.MBps);

		const seq = results.filter((r) => r.kind === "sequential");
		const rand = results.filter((r) => r.kind === "random");
		const pick = (id: string) => results.find((r) => r.id === id);
		const seqNbd = pick("seq-nbdcopy") as JobResult;
		const randNbd = pick("rand-nbd-fio");
		const randFuse = pick("rand-fuse-loop-dio") as JobResult;
		for (const line of serverLog)
			if (/fail|error|EIO|refused/i.test(line)) notes.push(`server: ${line}`);
		const report: GuestBenchReport = {
			schema: "dadi-bench-guest/1",
			date: new Date().toISOString(),
			quick: o.quick,
			reps: o.reps,
			randomSeconds: secs,
			image,
			tools: {
				fio: fioVersion,
				nbdcopy: nbdcopyVersion,
				node: process.version,
			},
			nproc: availableParallelism(),
			kernel: release(),
			workDir: o.workDirDescription,
			loadAverage: { start: loadStart, end: loadavg() },
			sealed: {
				chunkSize: sealed.config.chunkSize,
				compression: sealed.layer.compression,
				sealSeconds,
				layerBytes: sealed.layer.size,
				storedChunks,
				zeroChunks: disk.chunkCount - storedChunks,
				chunkCount: disk.chunkCount,
			},
			verified: {
				export: true,
				fuseLoop: true,
				nbd: true,
				servedBytesCompared: Math.min(size, CHECK_BYTES),
			},
			cryptoLimit: crypto,
			sequential: seq,
			random: rand,
			transport,
			notes,
			profiles,
			targets: {
				sequentialNbd: {
					value: seqNbd.median.MBps,
					min: GUEST_TARGETS.minSequentialNbdMBps,
					met: seqNbd.median.MBps >= GUEST_TARGETS.minSequentialNbdMBps,
					tool: "nbdcopy",
				},
				randomNbd: {
					value: randNbd?.median.iops ?? Number.NaN,
					min: GUEST_TARGETS.minRandomIops,
					met: (randNbd?.median.iops ?? 0) >= GUEST_TARGETS.minRandomIops,
					...(randNbd?.median.clatUs ? { clatUs: randNbd.median.clatUs } : {}),
				},
				randomFuseLoop: {
					value: randFuse.median.iops,
					min: GUEST_TARGETS.minRandomIops,
					met: randFuse.median.iops >= GUEST_TARGETS.minRandomIops,
					...(randFuse.median.clatUs ? { clatUs: randFuse.median.clatUs } : {}),
				},
			},
			seconds: seconds(started),
		};
		o.print(`\n${formatGuestHeader(report)}\n\n`);
		o.print(`${formatSequential(report)}\n`);
		o.print(`${formatRandom(report)}\n`);
		o.print(`${formatTransport(report)}\n`);
		if (profiles.length) o.print(`${formatProfiles(report)}\n`);
		o.print(formatGuestTargets(report));
		o.log(`guest section took ${seconds(started).toFixed(0)} s`);
		return report;
	} catch (e) {
		if (serverLog.length)
			o.log(
				`guest: last server log lines:\n  ${serverLog.slice(-20).join("\n  ")}`,
			);
		throw e;
	} finally {
		await res.release(o.log);
		await rm(work, { recursive: true, force: true });
	}
}

/** Drops the page cache of `file` (a FUSE file or a block device): dd's nocache, in a child. */
async function dropCache(res: Resources, file: string): Promise<void> {
	await res.ok("dd", [`if=${file}`, "iflag=nocache", "count=0", "status=none"]);
}

/** AES-CTR keystream: pseudo-random bytes that neither compress nor repeat. */
function pseudoRandom(n: number): Buffer {
	const key = createHash("sha256").update("guest-transport").digest();
	return createCipheriv("aes-256-ctr", key, Buffer.alloc(16)).update(
		Buffer.alloc(n),
	);
}

/**
 * The same servers over a disk in memory (a buffer; reads are subarrays, no copy): what NBD and
 * FUSE cost by themselves. The FUSE rows are the measurements of the former FUSE_BENCH test.
 */
async function runTransport(
	o: GuestBenchOptions,
	work: string,
	secs: number,
	fioNbd: boolean,
): Promise<GuestBenchReport["transport"]> {
	const size = TRANSPORT_BYTES;
	const data = pseudoRandom(size);
	const source: BlockSource = {
		size,
		read: async (off, len) => data.subarray(off, off + len),
	};
	const res = new Resources();
	try {
		const mnt = await mkdtemp(join(tmpdir(), "dadi-guest-bench-"));
		res.mountDirs.push(mnt);
		const serving = await startServing({
			source,
			name: "memory",
			nbd: { unix: join(work, "memory.sock") },
			fuse: mnt,
			log: () => {},
		});
		res.servings.push(serving);
		const nbd = serving.nbd as string;
		const file = serving.fuse as string;
		const m = serving.metricsState;
		// Untimed warm-up of both paths: a new server's first pass is slower (JIT, first memory use).
		await res.ok("nbdcopy", [nbd, "null:"]);
		await res.ok("dd", [
			`if=${file}`,
			"of=/dev/null",
			"bs=1M",
			"iflag=direct",
			"status=none",
		]);
		const randJob =
			(name: string, extra: Partial<FioSpec>): (() => Promise<Measured>) =>
			() =>
				fio(res, {
					name,
					target: { file },
					rw: "randread",
					bs: RAND_BS,
					iodepth: QUEUE_DEPTH,
					seconds: secs,
					...extra,
				});
		const jobs: Job[] = [
			{
				id: "t-fuse-dd-buffered",
				kind: "sequential",
				path: "FUSE file (DIR/disk)",
				tool: "dd bs=1M (buffered, page cache dropped first)",
				before: () => dropCache(res, file),
				run: () =>
					measured(m, () =>
						wallClock(
							res,
							"dd",
							[`if=${file}`, "of=/dev/null", "bs=1M", "status=none"],
							size,
							SEQ_BS,
						),
					),
			},
			{
				id: "t-fuse-dd-direct",
				kind: "sequential",
				path: "FUSE file (DIR/disk)",
				tool: "dd bs=1M iflag=direct",
				run: () =>
					measured(m, () =>
						wallClock(
							res,
							"dd",
							[
								`if=${file}`,
								"of=/dev/null",
								"bs=1M",
								"iflag=direct",
								"status=none",
							],
							size,
							SEQ_BS,
						),
					),
			},
			{
				id: "t-fuse-seq-fio",
				kind: "sequential",
				path: "FUSE file (DIR/disk)",
				tool: `fio libaio --direct=1 --rw=read --bs=1M --iodepth=${QUEUE_DEPTH}`,
				run: () =>
					measured(m, () =>
						fio(res, {
							name: "t-fuse-seq",
							target: { file },
							rw: "read",
							bs: SEQ_BS,
							iodepth: QUEUE_DEPTH,
						}),
					),
			},
			{
				id: "t-fuse-psync-1",
				kind: "random",
				path: "FUSE file (DIR/disk)",
				tool: "fio psync --direct=1 --rw=randread --bs=4k, 1 job",
				run: () =>
					measured(m, randJob("t-psync-1", { ioengine: "psync", iodepth: 1 })),
			},
			{
				id: "t-fuse-psync-4",
				kind: "random",
				path: "FUSE file (DIR/disk)",
				tool: "fio psync --direct=1 --rw=randread --bs=4k, 4 jobs",
				run: () =>
					measured(
						m,
						randJob("t-psync-4", {
							ioengine: "psync",
							iodepth: 1,
							numjobs: 4,
						}),
					),
			},
			{
				id: "t-fuse-aio-16",
				kind: "random",
				path: "FUSE file (DIR/disk)",
				tool: `fio libaio --direct=1 --rw=randread --bs=4k --iodepth=${QUEUE_DEPTH}`,
				run: () => measured(m, randJob("t-aio-16", {})),
			},
			{
				id: "t-fuse-aio-32",
				kind: "random",
				path: "FUSE file (DIR/disk)",
				tool: "fio libaio --direct=1 --rw=randread --bs=4k --iodepth=32",
				run: () => measured(m, randJob("t-aio-32", { iodepth: 32 })),
			},
			{
				id: "t-nbd-nbdcopy",
				kind: "sequential",
				path: "NBD (unix socket)",
				tool: `nbdcopy --connections=1 --requests=${QUEUE_DEPTH} --request-size=1M URI null:`,
				run: () =>
					measured(m, () =>
						wallClock(
							res,
							"nbdcopy",
							[
								"--connections=1",
								`--requests=${QUEUE_DEPTH}`,
								`--request-size=${SEQ_BS}`,
								nbd,
								"null:",
							],
							size,
							SEQ_BS,
						),
					),
			},
			{
				id: "t-nbd-seq-fio",
				kind: "sequential",
				path: "NBD (unix socket)",
				tool: `fio --ioengine=nbd (libnbd) --rw=read --bs=1M --iodepth=${QUEUE_DEPTH}`,
				run: () =>
					measured(m, () =>
						fio(res, {
							name: "t-nbd-seq",
							target: { nbd, size },
							rw: "read",
							bs: SEQ_BS,
							iodepth: QUEUE_DEPTH,
						}),
					),
			},
			{
				id: "t-nbd-rand-fio",
				kind: "random",
				path: "NBD (unix socket)",
				tool: `fio --ioengine=nbd (libnbd) --rw=randread --bs=4k --iodepth=${QUEUE_DEPTH}`,
				run: () =>
					measured(m, () =>
						fio(res, {
							name: "t-nbd-rand",
							target: { nbd, size },
							rw: "randread",
							bs: RAND_BS,
							iodepth: QUEUE_DEPTH,
							seconds: secs,
						}),
					),
			},
		];
		const rows: JobResult[] = [];
		for (const j of jobs) {
			if (j.id.startsWith("t-nbd-") && j.id.endsWith("-fio") && !fioNbd)
				continue;
			// A pass over 256 MiB takes about 0.1 s: three of them (median) for sequential jobs.
			const runs: JobRun[] = [];
			for (
				let i = 0;
				i < (j.kind === "sequential" ? SEQ_TRANSPORT_RUNS : 1);
				i++
			) {
				await j.before?.();
				runs.push(await j.run());
			}
			const row = summarizeJob(
				{ id: j.id, kind: j.kind, path: j.path, tool: j.tool },
				runs,
			);
			o.log(
				`  ${j.id}: ${j.kind === "random" ? `${Math.round(row.median.iops)} IOPS` : `${row.median.MBps.toFixed(0)} MB/s`}`,
			);
			rows.push(row);
		}
		return {
			sourceBytes: size,
			randomSeconds: secs,
			sequentialRuns: SEQ_TRANSPORT_RUNS,
			rows,
		};
	} finally {
		await res.release(o.log);
	}
}
