/**
 * The guest section's report: a sealed disk served as a block device through NBD and through FUSE
 * (the file itself, and a loop device on it), read sequentially and at random with fio, nbdcopy and
 * an in-process loop; against the same jobs on the plaintext disk and node:crypto's AES-GCM
 * decrypt. Tables in the style of the other sections, targets, and the JSON document. See
 * docs/benchmarks.md, "Guest block devices: NBD and FUSE".
 */
import type { TestImage } from "./image.js";

export const GUEST_TARGETS = {
	/** Sequential 1 MiB reads of the whole disk through NBD, MB/s (10^6 bytes), at least. */
	minSequentialNbdMBps: 600,
	/** Random 4 KiB reads at queue depth 16, IOPS, at least. */
	minRandomIops: 20_000,
} as const;

/** fio's completion latency (or, in process, each read's time), microseconds. */
export interface LatencyUs {
	p50: number;
	p99: number;
}

/**
 * What the server saw during a run (startServing's metrics): reads asked of the sealed disk, and
 * the source's read time as the upper bounds of the histogram buckets the quantiles fall in.
 */
export interface ServerSide {
	reads: number;
	bytes: number;
	p50Ms: number;
	p99Ms: number;
}

/** One timed run of one job. */
export interface JobRun {
	seconds: number;
	bytes: number;
	ios: number;
	MBps: number;
	iops: number;
	clatUs?: LatencyUs;
	/** CPU time of the tool (fio's usr + sys), seconds. */
	toolCpuSeconds?: number;
	/** CPU time of the bench process (the server: main thread, FUSE reader, libuv pool, GC). */
	processCpuSeconds: number;
	server?: ServerSide;
}

export type JobKind = "sequential" | "random";

export interface JobResult {
	id: string;
	kind: JobKind;
	/** The path the bytes take: "NBD", "FUSE + loop (direct I/O)", "plaintext file", … */
	path: string;
	/** The tool and its main options. */
	tool: string;
	/** The id of the row this one is compared against (plaintext, same tool and shape). */
	baseline?: string;
	runs: JobRun[];
	median: {
		seconds: number;
		MBps: number;
		iops: number;
		clatUs?: LatencyUs;
		processCpuSeconds: number;
		/** Bench-process CPU per read, microseconds (random) — or per GiB, seconds (sequential). */
		cpuPerUnit: number;
		server?: ServerSide;
	};
	/** median MB/s (sequential) or IOPS (random) / the baseline row's. */
	vsBaseline?: number;
	/** Sequential: median MB/s / the one-call AES-GCM decrypt limit. */
	vsCryptoLimit?: number;
}

export interface CryptoLimit {
	bytes: number;
	/** node:crypto AES-256-GCM, one createDecipheriv + one update() over all the bytes (the issue's limit). */
	oneCall: { runs: number[]; medianSeconds: number; MBps: number };
	/** The same, fed in 64 KiB update() calls. */
	streamed: { runs: number[]; medianSeconds: number; MBps: number };
	/** `openssl speed -decrypt -evp aes-256-gcm`, 64 KiB buffers: the CPU's AES ceiling. */
	opensslMBps: number | null;
}

export interface ProfileSummary {
	job: string;
	kind: JobKind;
	/** Reads and bytes of the profiled run. */
	ios: number;
	bytes: number;
	/** Sampled time of the main thread, ms (idle included). */
	totalMs: number;
	/** Process CPU (all threads) during the profiled run, seconds. */
	processCpuSeconds: number;
	/** perUnit: main-thread µs per read (random) or ms per GiB (sequential). */
	categories: { name: string; ms: number; share: number; perUnit: number }[];
	top: { fn: string; ms: number; share: number }[];
	file?: string;
}

export interface GuestBenchReport {
	schema: "dadi-bench-guest/1";
	date: string;
	quick: boolean;
	reps: number;
	/** Runtime of each random job, seconds. */
	randomSeconds: number;
	image: TestImage & { sha256?: string };
	tools: Record<string, string>;
	nproc: number;
	kernel: string;
	workDir: string;
	loadAverage: { start: number[]; end: number[] };
	sealed: {
		chunkSize: number;
		compression: string;
		sealSeconds: number;
		layerBytes: number;
		storedChunks: number;
		/** Chunks of the disk that read as zero (zero extents and holes): served without decoding. */
		zeroChunks: number;
		chunkCount: number;
	};
	/** The exported plaintext and the bytes read through FUSE + loop and NBD were compared (cmp). */
	verified: {
		export: boolean;
		fuseLoop: boolean;
		nbd: boolean;
		/** How much of the disk was compared through FUSE + loop and through NBD (from offset 0). */
		servedBytesCompared: number;
	};
	cryptoLimit: CryptoLimit;
	sequential: JobResult[];
	random: JobResult[];
	/** The servers over a pseudo-random disk in memory: transport cost only, no decoding. One run each. */
	transport: {
		sourceBytes: number;
		randomSeconds: number;
		/** Runs of each sequential job (median); random jobs run once. */
		sequentialRuns: number;
		rows: JobResult[];
	};
	notes: string[];
	profiles: ProfileSummary[];
	targets: {
		sequentialNbd: { value: number; min: number; met: boolean; tool: string };
		randomNbd: {
			value: number;
			min: number;
			met: boolean;
			clatUs?: LatencyUs;
		};
		randomFuseLoop: {
			value: number;
			min: number;
			met: boolean;
			clatUs?: LatencyUs;
		};
	};
	seconds: number;
}

export function median(xs: readonly number[]): number {
	const s = [...xs].sort((a, b) => a - b);
	if (s.length === 0) return Number.NaN;
	const mid = s.length >> 1;
	return s.length % 2
		? (s[mid] as number)
		: ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

/** Summarizes runs (each figure is the median over the runs, independently). */
export function summarizeJob(
	spec: Pick<JobResult, "id" | "kind" | "path" | "tool" | "baseline">,
	runs: JobRun[],
): JobResult {
	const med = (f: (r: JobRun) => number): number => median(runs.map(f));
	const withClat = runs.filter((r) => r.clatUs !== undefined);
	const withServer = runs.filter((r) => r.server !== undefined);
	const processCpuSeconds = med((r) => r.processCpuSeconds);
	const bytes = med((r) => r.bytes);
	return {
		...spec,
		runs,
		median: {
			seconds: med((r) => r.seconds),
			MBps: med((r) => r.MBps),
			iops: med((r) => r.iops),
			...(withClat.length
				? {
						clatUs: {
							p50: median(withClat.map((r) => r.clatUs?.p50 ?? 0)),
							p99: median(withClat.map((r) => r.clatUs?.p99 ?? 0)),
						},
					}
				: {}),
			processCpuSeconds,
			cpuPerUnit:
				spec.kind === "random"
					? med((r) => r.processCpuSeconds / Math.max(1, r.ios)) * 1e6
					: bytes > 0
						? med((r) => r.processCpuSeconds / (r.bytes / 2 ** 30))
						: 0,
			...(withServer.length
				? {
						server: {
							reads: median(withServer.map((r) => r.server?.reads ?? 0)),
							bytes: median(withServer.map((r) => r.server?.bytes ?? 0)),
							p50Ms: median(withServer.map((r) => r.server?.p50Ms ?? 0)),
							p99Ms: median(withServer.map((r) => r.server?.p99Ms ?? 0)),
						},
					}
				: {}),
		},
	};
}

/** Fills vsBaseline (and vsCryptoLimit for sequential rows) from the other rows. */
export function addRatios(
	rows: JobResult[],
	cryptoLimitMBps: number | undefined,
): void {
	const byId = new Map(rows.map((r) => [r.id, r]));
	for (const r of rows) {
		const b = r.baseline === undefined ? undefined : byId.get(r.baseline);
		if (b !== undefined && b !== r)
			r.vsBaseline =
				r.kind === "random"
					? r.median.iops / b.median.iops
					: r.median.MBps / b.median.MBps;
		if (r.kind === "sequential" && cryptoLimitMBps !== undefined)
			r.vsCryptoLimit = r.median.MBps / cryptoLimitMBps;
	}
}

// --- formatting ---------------------------------------------------------------------------------

function table(head: string[], rows: string[][], right: boolean[]): string {
	const widths = head.map((h, i) =>
		Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)),
	);
	const line = (cells: string[]) =>
		`| ${cells
			.map((c, i) =>
				right[i]
					? c.padStart(widths[i] as number)
					: c.padEnd(widths[i] as number),
			)
			.join(" | ")} |`;
	const rule = `|${widths.map((w, i) => (right[i] ? `${"-".repeat(w + 1)}:` : "-".repeat(w + 2))).join("|")}|`;
	return [line(head), rule, ...rows.map(line)].join("\n");
}

const f0 = (x: number): string => (Number.isFinite(x) ? x.toFixed(0) : "—");
const f2 = (x: number | undefined): string =>
	x !== undefined && Number.isFinite(x) ? x.toFixed(2) : "";
const thousands = (x: number): string =>
	Number.isFinite(x) ? Math.round(x).toLocaleString("en-US") : "—";

function latency(l: LatencyUs | undefined, unit: "ms" | "us"): string {
	if (l === undefined) return "—";
	const d = unit === "ms" ? 1000 : 1;
	const fmt = (x: number) =>
		unit === "ms" ? (x / d).toFixed(x / d < 10 ? 1 : 0) : f0(x);
	return `${fmt(l.p50)} / ${fmt(l.p99)}`;
}

function serverCell(s: ServerSide | undefined): string {
	if (s === undefined || s.reads === 0) return "—";
	const avgKiB = s.bytes / s.reads / 1024;
	return `${thousands(s.reads)} × ${avgKiB >= 100 ? avgKiB.toFixed(0) : avgKiB.toFixed(1)} KiB, ≤${s.p50Ms}/${s.p99Ms} ms`;
}

export function formatGuestHeader(r: GuestBenchReport): string {
	const c = r.cryptoLimit;
	const mib = c.bytes / 2 ** 20;
	const lines = [
		`guest block devices: a ${r.image.size / 2 ** 20} MiB ${r.image.kind} disk (${r.image.description})`,
		`  sealed with ${r.sealed.chunkSize / 1024} KiB chunks, ${r.sealed.compression}: ${r.sealed.layerBytes} bytes, ${r.sealed.storedChunks} stored chunks, ${r.sealed.zeroChunks} of ${r.sealed.chunkCount} chunks read as zero (sealed in ${r.sealed.sealSeconds.toFixed(1)} s); served in this process from an oci: layout on ${r.workDir}`,
		`  ${r.tools.fio ?? "fio ?"}, nbdcopy ${r.tools.nbdcopy ?? "?"}, node ${r.tools.node}, kernel ${r.kernel}, ${r.nproc} CPUs; load average ${r.loadAverage.start.map((x) => x.toFixed(2)).join(" ")} at the start, ${r.loadAverage.end.map((x) => x.toFixed(2)).join(" ")} at the end`,
		`  checked with cmp: exported plaintext = source disk ${r.verified.export ? "ok" : "NOT CHECKED"}; the first ${r.verified.servedBytesCompared / 2 ** 20} MiB read through FUSE + loop ${r.verified.fuseLoop ? "ok" : "NOT CHECKED"}, through NBD ${r.verified.nbd ? "ok" : "NOT CHECKED"}`,
		`crypto limit: node:crypto AES-256-GCM decrypt of ${mib} MiB in one update() call: ${f0(c.oneCall.MBps)} MB/s (${c.oneCall.runs.map((s) => s.toFixed(2)).join(", ")} s)`,
		`  for context: the same in 64 KiB update() calls ${f0(c.streamed.MBps)} MB/s (median of ${c.streamed.runs.length}); openssl speed -decrypt -evp aes-256-gcm (CPU ceiling) ${c.opensslMBps === null ? "n/a" : `${f0(c.opensslMBps)} MB/s`}`,
	];
	for (const n of r.notes) lines.push(`NOTE: ${n}`);
	return lines.join("\n");
}

export function formatSequential(r: GuestBenchReport): string {
	const rows = r.sequential.map((j) => [
		j.path,
		j.tool,
		f0(j.median.MBps),
		f2(j.median.seconds),
		latency(j.median.clatUs, "ms"),
		serverCell(j.median.server),
		f2(j.median.cpuPerUnit),
		f2(j.vsBaseline),
		f2(j.vsCryptoLimit),
	]);
	return `sequential: the whole ${r.image.size / 2 ** 20} MiB disk in 1 MiB reads, 16 in flight; ${r.reps === 1 ? "one run" : `median of ${r.reps} runs`}; MB/s = 10^6 bytes/s; latency = fio's completion latency (in process: each read's time); server = reads the sealed disk was asked for × average size, and the source's read time (histogram bucket bounds) p50/p99; CPU = this process (server) CPU seconds per GiB read\n\n${table(
		[
			"path",
			"tool",
			"MB/s",
			"s",
			"p50 / p99 ms",
			"server reads, p50/p99",
			"CPU s/GiB",
			"/ plaintext",
			"/ crypto limit",
		],
		rows,
		[false, false, true, true, true, true, true, true, true],
	)}\n`;
}

export function formatRandom(r: GuestBenchReport): string {
	const rows = r.random.map((j) => [
		j.path,
		j.tool,
		thousands(j.median.iops),
		f0(j.median.MBps),
		latency(j.median.clatUs, "us"),
		serverCell(j.median.server),
		f0(j.median.cpuPerUnit),
		f2(j.vsBaseline),
	]);
	return `random: 4 KiB reads, queue depth 16, uniform over the whole disk, ${r.randomSeconds} s each; ${r.reps === 1 ? "one run" : `median of ${r.reps} runs`}; CPU = this process's CPU µs per read\n\n${table(
		[
			"path",
			"tool",
			"IOPS",
			"MB/s",
			"p50 / p99 µs",
			"server reads, p50/p99",
			"CPU µs/read",
			"/ plaintext",
		],
		rows,
		[false, false, true, true, true, true, true, true],
	)}\n`;
}

export function formatTransport(r: GuestBenchReport): string {
	const rows = r.transport.rows.map((j) => [
		j.path,
		j.tool,
		f0(j.median.MBps),
		j.kind === "random" ? thousands(j.median.iops) : "",
		latency(j.median.clatUs, j.kind === "random" ? "us" : "ms") +
			(j.median.clatUs ? (j.kind === "random" ? " µs" : " ms") : ""),
		j.kind === "random"
			? `${f0(j.median.cpuPerUnit)} µs/read`
			: `${f2(j.median.cpuPerUnit)} s/GiB`,
	]);
	return `transport only: the same servers over a ${r.transport.sourceBytes / 2 ** 20} MiB pseudo-random disk held in memory (no decryption, no decompression); sequential: median of ${r.transport.sequentialRuns} passes; random: one run of ${r.transport.randomSeconds} s\n\n${table(
		["path", "tool", "MB/s", "IOPS", "p50 / p99", "CPU"],
		rows,
		[false, false, true, true, true, true],
	)}\n`;
}

export function formatProfiles(r: GuestBenchReport): string {
	const out: string[] = [];
	for (const p of r.profiles) {
		const unit = p.kind === "random" ? "µs/read" : "ms/GiB";
		const per = (x: number) => `${x.toFixed(0)} ${unit}`;
		const busy = p.categories
			.filter((c) => !c.name.startsWith("idle"))
			.reduce((a, c) => a + c.ms, 0);
		out.push(
			`profile of ${p.job} (${p.kind === "random" ? `${thousands(p.ios)} reads` : `${(p.bytes / 2 ** 30).toFixed(2)} GiB`}; main thread ${(p.totalMs / 1000).toFixed(2)} s sampled, ${(busy / 1000).toFixed(2)} s busy = ${per(p.categories.reduce((a, c) => a + (c.name.startsWith("idle") ? 0 : c.perUnit), 0))}; process CPU, all threads, ${p.processCpuSeconds.toFixed(2)} s = ${per(p.kind === "random" ? (p.processCpuSeconds * 1e6) / Math.max(1, p.ios) : (p.processCpuSeconds * 1000) / (p.bytes / 2 ** 30))}${p.file ? `; ${p.file}` : ""}):`,
		);
		out.push(
			`  ${p.categories
				.filter((c) => c.share >= 0.005)
				.map(
					(c) => `${c.name} ${(c.share * 100).toFixed(0)}% (${per(c.perUnit)})`,
				)
				.join(", ")}`,
		);
		out.push(
			`  top self time: ${p.top
				.slice(0, 10)
				.map((t) => `${t.fn} ${(t.share * 100).toFixed(1)}%`)
				.join(", ")}`,
		);
	}
	return out.length ? `${out.join("\n")}\n` : "";
}

export function formatGuestTargets(r: GuestBenchReport): string {
	const t = r.targets;
	const word = (m: boolean) => (m ? "MET" : "MISSED");
	const lat = (l: LatencyUs | undefined) =>
		l ? ` (p50 ${f0(l.p50)} µs, p99 ${f0(l.p99)} µs)` : "";
	return [
		`targets: sequential through NBD >= ${GUEST_TARGETS.minSequentialNbdMBps} MB/s; random 4 KiB >= ${thousands(GUEST_TARGETS.minRandomIops)} IOPS (p50/p99 reported)`,
		`  sequential, NBD (${t.sequentialNbd.tool}): ${f0(t.sequentialNbd.value)} MB/s ${word(t.sequentialNbd.met)}`,
		`  random 4 KiB QD16, NBD (fio nbd engine): ${thousands(t.randomNbd.value)} IOPS${lat(t.randomNbd.clatUs)} ${word(t.randomNbd.met)}`,
		`  random 4 KiB QD16, FUSE + loop (direct I/O): ${thousands(t.randomFuseLoop.value)} IOPS${lat(t.randomFuseLoop.clatUs)} ${word(t.randomFuseLoop.met)}`,
		"",
	].join("\n");
}
