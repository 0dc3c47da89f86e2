/**
 * The registry section's report: lazy reads of a sealed image from a local docker-registry (a
 * start-up set of scattered file reads, and a sequential read of the whole disk) against plain
 * HTTP downloads of the same blobs with curl. Tables in the style of the other sections, targets,
 * and the JSON document. See docs/benchmarks.md, "Registry: lazy reads".
 */
import type { LazyStatsJson } from "../src/lazy/stats.js";
import type { TestImage } from "./image.js";
import { markdownTable } from "./report.js";

export const REGISTRY_TARGETS = {
	/** Start-up set: bytes fetched from the registry / bytes read from the disk, at most. */
	maxFetchedToRead: 1.5,
	/** Sequential read: lazy export throughput / curl download throughput, at least. */
	minLazyToCurl: 0.7,
} as const;

const MiB = 2 ** 20;

/** One timed run of a whole-image transfer. */
export interface TransferRun {
	seconds: number;
	/** Bytes that came over HTTP (curl: size_download; lazy: stats.bytesFetched). */
	bytesFetched: number;
	/** Lazy runs: the reader's statistics. */
	stats?: LazyStatsJson;
	/** Lazy runs: seconds spent opening the image (manifest, config, layer metadata). */
	openSeconds?: number;
}

export interface TransferSummary {
	what: string;
	runs: TransferRun[];
	medianSeconds: number;
	/** Stored (layer blob) bytes per second, MiB/s, from the median time. */
	storedMiBps: number;
	/** Virtual disk bytes per second, MiB/s, from the median time. */
	diskMiBps: number;
}

export interface StartupRun {
	/** Open the image + read the first 4 KiB block of the first file, from a new reader. */
	firstBlockSeconds: number;
	openSeconds: number;
	/** From before the open to the last read of the set. */
	totalSeconds: number;
	bytesRead: number;
	stats: LazyStatsJson;
	/** Data chunks the set touches, each counted once, and their stored bytes. */
	touched: { chunks: number; storedBytes: number };
}

export interface StartupReport {
	params: {
		fraction: number;
		minFileBytes: number;
		maxFileBytes: number;
		requestBytes: number;
		filesInFlight: number;
		seed: number;
		concurrency: number;
	};
	files: number;
	/** Data-bearing bytes of the disk the files were placed in (non-zero 4 KiB blocks). */
	dataBytes: number;
	runs: StartupRun[];
	median: {
		firstBlockSeconds: number;
		totalSeconds: number;
		bytesRead: number;
		bytesFetched: number;
		chunkBytesFetched: number;
		metadataBytesFetched: number;
		fetchedToRead: number;
		chunkFetchedToRead: number;
		/** Distinct data chunks the set touches, and their stored bytes (the least a reader fetches). */
		touchedChunks: number;
		touchedStoredBytes: number;
		/** Chunk bytes fetched / stored bytes of the touched chunks: chunks fetched more than once. */
		chunkFetchedToTouched: number;
		readAheadChunks: number;
		chunksFetched: number;
		requests: number;
		rangeRequests: number;
		latencyMs: { p50: number; p90: number; p99: number; max: number };
	};
	/** curl of every blob of the manifest (and the manifest), for comparison. */
	fullDownload: { runs: TransferRun[]; medianSeconds: number; bytes: number };
}

export interface SweepRow {
	name: string;
	readAhead: boolean;
	memoryBytes: number;
	concurrency: number;
	maxRequestBytes: number;
	readAheadMaxBytes: number;
	exportDepth: number;
	runBytes: number;
	runs: number[];
	medianSeconds: number;
	diskMiBps: number;
	lazyToCurl: number;
	requests: number;
	bytesFetched: number;
}

export interface RegistryBenchReport {
	schema: "dadi-bench-registry/1";
	date: string;
	quick: boolean;
	reps: number;
	image: TestImage & { sha256: string };
	tools: Record<string, string>;
	nproc: number;
	workDir: string;
	registryStorage: string;
	loadAverage: { start: number[]; end: number[] };
	sealed: {
		chunkSize: number;
		compression: string;
		sealSeconds: number;
		layerBytes: number;
		/** Manifest + config + layer blobs. */
		imageBytes: number;
		storedChunks: number;
	};
	push: { seconds: number; bytes: number; MiBps: number };
	startup: StartupReport;
	sequential: {
		curl: TransferSummary;
		/** `dadi-seal export docker://…` (= `dadi-guest export`) in a new process: the target's figure. */
		cliExport: TransferSummary;
		/** openRemoteSealedImage + exportDisk in the bench's own (warm) process. */
		lazyExport: TransferSummary;
		lazyReadLoop: TransferSummary;
		/** `dadi-seal export oci:…` of the sealed layout on local scratch: decode + write, no HTTP. */
		localExport: TransferSummary;
		/** curl time / CLI export time (same stored bytes): the target. */
		lazyToCurl: number;
		inProcessToCurl: number;
		readLoopToCurl: number;
		exportVerified: boolean;
		readLoop: { requestBytes: number; inFlight: number };
	};
	sweep: SweepRow[];
	/**
	 * Read-ahead fetches that finished after their image was closed and failed to store into the
	 * closed memory cache (an unhandled rejection in src/lazy/remote-blob.ts; see registry-bench.ts).
	 */
	lateCacheStoresAfterClose: number;
	targets: {
		fetchedToRead: { value: number; max: number; met: boolean };
		lazyToCurl: { value: number; min: number; met: boolean };
	};
}

export function median(xs: readonly number[]): number {
	if (xs.length === 0) return Number.NaN;
	const s = [...xs].sort((a, b) => a - b);
	const m = s.length >> 1;
	return s.length % 2
		? (s[m] as number)
		: ((s[m - 1] as number) + (s[m] as number)) / 2;
}

export function summarize(
	what: string,
	runs: TransferRun[],
	storedBytes: number,
	diskBytes: number,
): TransferSummary {
	const medianSeconds = median(runs.map((r) => r.seconds));
	return {
		what,
		runs,
		medianSeconds,
		storedMiBps: storedBytes / MiB / medianSeconds,
		diskMiBps: diskBytes / MiB / medianSeconds,
	};
}

const fixed = (n: number, d: number): string =>
	Number.isFinite(n) ? n.toFixed(d) : "-";
const mib = (n: number): string => (n / MiB).toFixed(1);
const ms = (s: number): string => (s * 1000).toFixed(0);

export function formatRegistryHeader(r: RegistryBenchReport): string {
	const s = r.sealed;
	return [
		`registry: lazy reads of a sealed image from a local docker-registry (plain HTTP on loopback)`,
		`  disk (${r.image.cached ? "cached" : "built in this run"}): ${r.image.description}; ${mib(r.image.size)} MiB, ${mib(r.startup.dataBytes)} MiB in non-zero 4 KiB blocks`,
		`  sealed: ${s.chunkSize >> 10} KiB chunks, ${s.compression}; layer blob ${s.layerBytes} bytes (${mib(s.layerBytes)} MiB, ${s.storedChunks} stored chunks), whole image ${s.imageBytes} bytes; seal ${fixed(s.sealSeconds, 2)} s`,
		`  push to the registry (copyImage, one upload): ${fixed(r.push.seconds, 2)} s, ${fixed(r.push.MiBps, 0)} MiB/s`,
		`  tools: ${Object.entries(r.tools)
			.map(([k, v]) => `${k} ${v}`)
			.join(", ")}; nproc ${r.nproc}`,
		`  scratch: ${r.workDir}; registry storage: ${r.registryStorage}`,
		`  load average (1, 5, 15 min) at start ${r.loadAverage.start.map((x) => fixed(x, 2)).join(" ")}, at end ${r.loadAverage.end.map((x) => fixed(x, 2)).join(" ")}`,
		"",
	].join("\n");
}

export function formatStartup(r: RegistryBenchReport): string {
	const st = r.startup;
	const p = st.params;
	const m = st.median;
	const fd = st.fullDownload;
	const runs = (f: (x: StartupRun) => string): string =>
		st.runs.map(f).join(", ");
	const rows: string[][] = [
		[
			"time to first block (open + first 4 KiB read), ms",
			ms(m.firstBlockSeconds),
			runs((x) => ms(x.firstBlockSeconds)),
		],
		[
			"start-up set, total (open included), s",
			fixed(m.totalSeconds, 2),
			runs((x) => fixed(x.totalSeconds, 2)),
		],
		["bytes read (plaintext)", String(m.bytesRead), ""],
		[
			"bytes fetched (all HTTP bodies)",
			String(m.bytesFetched),
			runs((x) => String(x.stats.bytesFetched)),
		],
		[
			"  of which chunk bytes",
			String(m.chunkBytesFetched),
			runs((x) => String(x.stats.chunkBytesFetched)),
		],
		[
			"  of which metadata (header, trailer, index)",
			String(m.metadataBytesFetched),
			"",
		],
		[
			"fetched / read",
			fixed(m.fetchedToRead, 3),
			runs((x) => fixed(x.stats.bytesFetched / x.bytesRead, 3)),
		],
		["chunk bytes fetched / read", fixed(m.chunkFetchedToRead, 3), ""],
		[
			"distinct data chunks touched (their stored bytes)",
			`${m.touchedChunks} (${m.touchedStoredBytes})`,
			"",
		],
		[
			"chunk bytes fetched / stored bytes of the touched chunks",
			fixed(m.chunkFetchedToTouched, 3),
			"",
		],
		[
			"chunks fetched (read-ahead)",
			`${m.chunksFetched} (${m.readAheadChunks})`,
			runs((x) => `${x.stats.chunksFetched} (${x.stats.readAheadChunks})`),
		],
		[
			"HTTP requests (range requests)",
			`${m.requests} (${m.rangeRequests})`,
			runs((x) => `${x.stats.requests} (${x.stats.rangeRequests})`),
		],
		[
			"range latency p50 / p90 / p99 / max, ms",
			`${fixed(m.latencyMs.p50, 1)} / ${fixed(m.latencyMs.p90, 1)} / ${fixed(m.latencyMs.p99, 1)} / ${fixed(m.latencyMs.max, 1)}`,
			"",
		],
		[
			"curl of the whole sealed image (manifest + all blobs), s",
			fixed(fd.medianSeconds, 2),
			fd.runs.map((x) => fixed(x.seconds, 2)).join(", "),
		],
		["  bytes downloaded", String(fd.bytes), ""],
		[
			"start-up set fetched / whole image",
			fixed(m.bytesFetched / fd.bytes, 3),
			"",
		],
	];
	return [
		`start-up set: ${st.files} files (log-uniform ${p.minFileBytes >> 10} KiB to ${p.maxFileBytes >> 20} MiB, 4 KiB-aligned, in the data-bearing part) = ${fixed(p.fraction * 100, 0)}% of the disk, each read sequentially in ${p.requestBytes >> 10} KiB requests, ${p.filesInFlight} files at a time, seed ${p.seed}; a new reader each run (no disk cache), concurrency ${p.concurrency}; median of ${st.runs.length}`,
		"",
		markdownTable(["measure", "median", "runs"], rows, 1),
	].join("\n");
}

export function formatSequential(r: RegistryBenchReport): string {
	const q = r.sequential;
	const pull = q.curl.medianSeconds + q.localExport.medianSeconds;
	const c0 = q.cliExport.runs[0];
	const row = (s: TransferSummary, ratio: string): string[] => [
		s.what,
		fixed(s.medianSeconds, 2),
		s.runs.map((x) => fixed(x.seconds, 2)).join(", "),
		fixed(s.storedMiBps, 0),
		fixed(s.diskMiBps, 0),
		ratio,
	];
	return [
		`sequential read of the whole image: ${mib(r.image.size)} MiB disk, ${mib(r.sealed.layerBytes)} MiB stored; MiB/s from the median time; runs alternate in the order of the rows`,
		"",
		markdownTable(
			["path", "median s", "runs s", "stored MiB/s", "disk MiB/s", "/ curl"],
			[
				row(q.curl, "1.000"),
				row(q.cliExport, fixed(q.lazyToCurl, 3)),
				row(q.lazyExport, fixed(q.inProcessToCurl, 3)),
				row(q.lazyReadLoop, fixed(q.readLoopToCurl, 3)),
				row(
					q.localExport,
					fixed(q.curl.medianSeconds / q.localExport.medianSeconds, 3),
				),
				[
					"reference: curl, then export from a local copy (the two medians added)",
					fixed(pull, 2),
					"",
					fixed(r.sealed.layerBytes / MiB / pull, 0),
					fixed(r.image.size / MiB / pull, 0),
					fixed(q.curl.medianSeconds / pull, 3),
				],
			],
			1,
		),
		`export from the registry / (curl + local export): ${fixed(pull / q.cliExport.medianSeconds, 3)}; it fetched ${c0?.bytesFetched ?? 0} bytes in ${c0?.stats?.requests ?? 0} requests (${c0?.stats?.readAheadChunks ?? 0} chunks read ahead), range latency p50 ${fixed(c0?.stats?.latencyMs.p50 ?? Number.NaN, 0)} ms, p99 ${fixed(c0?.stats?.latencyMs.p99 ?? Number.NaN, 0)} ms (first run)`,
		"",
	].join("\n");
}

export function formatSweep(r: RegistryBenchReport): string {
	if (r.sweep.length === 0) return "";
	return [
		"tuning sweep: lazy export (open + exportDisk), one setting changed at a time from the defaults; median of the runs",
		"",
		markdownTable(
			[
				"setting",
				"conc",
				"max req",
				"read-ahead",
				"memory",
				"depth",
				"run",
				"runs s",
				"median s",
				"disk MiB/s",
				"/ curl",
				"requests",
				"bytes fetched",
			],
			r.sweep.map((s) => [
				s.name,
				String(s.concurrency),
				`${s.maxRequestBytes >> 20}M`,
				s.readAhead ? `${s.readAheadMaxBytes >> 20}M` : "off",
				`${s.memoryBytes >> 20}M`,
				String(s.exportDepth),
				`${s.runBytes >> 20}M`,
				s.runs.map((x) => fixed(x, 2)).join(", "),
				fixed(s.medianSeconds, 2),
				fixed(s.diskMiBps, 0),
				fixed(s.lazyToCurl, 3),
				String(s.requests),
				String(s.bytesFetched),
			]),
			1,
		),
	].join("\n");
}

export function formatRegistryTargets(r: RegistryBenchReport): string {
	const t = r.targets;
	const met = (b: boolean): string => (b ? "MET" : "MISSED");
	return [
		`targets: start-up set fetched/read <= ${t.fetchedToRead.max}; sequential lazy/curl >= ${t.lazyToCurl.min}`,
		`  fetched/read ${fixed(t.fetchedToRead.value, 3)} ${met(t.fetchedToRead.met)}; CLI export/curl ${fixed(t.lazyToCurl.value, 3)} ${met(t.lazyToCurl.met)}${r.sequential.exportVerified ? "; exported disk matches the source (SHA-256)" : ""}`,
		"",
	].join("\n");
}
