/**
 * The key-broker section's report: round trips per second (auth + attest + resource, the real KBS
 * exchange with the sample verifier) from 64 concurrent clients on loopback, p50/p99 latency, and
 * the ratio against a bare node:http echo server doing three exchanges of the same sizes (the
 * framework ceiling); the printed tables, the targets and the JSON document. See
 * docs/benchmarks.md, "Key broker".
 */
import { markdownTable } from "./report.js";

export const BROKER_TARGETS = {
	/** Broker round trips/s at least this share of the echo server's. */
	minRatio: 0.3,
	/** Broker round-trip latency p99 below this, ms. */
	maxP99Ms: 50,
} as const;

/** The resource the bench stores and fetches. */
export const BENCH_RESOURCE = "default/image-key/bench";
/** The size of the echo server's answer to a GET (about a flattened JWE of a 32-byte key JWK). */
export const ECHO_GET_BYTES = 600;

/** The one line bench/broker-server.ts prints when it is ready. */
export interface ServerHello {
	url: string;
	pid: number;
	/** broker mode: the stored resource and the SHA-256 (hex) of its value. */
	resource?: string;
	valueSha256?: string;
}

export type BrokerMode = "broker" | "echo";
export const STEPS = ["auth", "attest", "resource"] as const;
export type Step = (typeof STEPS)[number];

export interface Quantiles {
	p50: number;
	p99: number;
}

/** One timed run of one mode against a fresh server process. */
export interface ModeRun {
	mode: BrokerMode;
	rep: number;
	/** The timed window after the warm-up, seconds. */
	seconds: number;
	/** Round trips that ended in the window. */
	roundTrips: number;
	roundTripsPerSecond: number;
	/** HTTP requests per second (three per round trip). */
	requestsPerSecond: number;
	/** Round-trip latency (the three exchanges, one after the other), ms. */
	latencyMs: {
		p50: number;
		p90: number;
		p99: number;
		max: number;
		mean: number;
	};
	/** Each exchange's latency, ms. */
	stepsMs: Record<Step, Quantiles>;
	/** Body bytes per round trip (requests, responses). */
	bodyBytes: { request: number; response: number };
	/** The server process (all its threads): CPU seconds in the window (null when /proc is not readable). */
	server: {
		cpuSeconds: number | null;
		cpuUsPerRoundTrip: number | null;
		/** CPU seconds per second of the window: 1 = one core busy. */
		cores: number | null;
	};
	/** This (load-generating) process. */
	client: { cpuSeconds: number; cpuUsPerRoundTrip: number; cores: number };
	/**
	 * CPU the rest of the machine used in the window (all CPUs busy, from /proc/stat, minus the
	 * server and this process), cores: other work competing with the run; null without /proc.
	 */
	otherCores: number | null;
}

/** The median of the runs and their range. */
export interface Spread {
	median: number;
	min: number;
	max: number;
}

export interface ModeSummary {
	roundTripsPerSecond: Spread;
	requestsPerSecond: Spread;
	p50Ms: Spread;
	p99Ms: Spread;
	serverCpuUsPerRoundTrip: Spread | null;
	serverCores: Spread | null;
	clientCpuUsPerRoundTrip: Spread;
	clientCores: Spread;
	otherCores: Spread | null;
	/** Medians over the runs. */
	stepsMs: Record<Step, Quantiles>;
	bodyBytes: { request: number; response: number };
}

export interface ProfileEntry {
	name: string;
	ms: number;
	/** Of the busy (non-idle) sampled time. */
	share: number;
	/** Main-thread µs per round trip. */
	usPerRoundTrip: number;
}

/** A V8 CPU profile of one server process (main thread), taken outside the timed runs. */
export interface ProfileSummary {
	mode: BrokerMode;
	file: string;
	/** Round trips completed while the profiled run was timed. */
	roundTrips: number;
	roundTripsPerSecond: number;
	/** The whole profile (start-up and warm-up included), ms. */
	sampledMs: number;
	idleMs: number;
	/** Self time by what it was for. */
	categories: ProfileEntry[];
	/** Self time by function. */
	topSelf: ProfileEntry[];
	/** Time in a function and everything it called, for project functions (src/, bench/). */
	topInclusive: ProfileEntry[];
}

export interface BrokerBenchReport {
	schema: "dadi-bench-broker/1";
	date: string;
	quick: boolean;
	clients: number;
	connections: number;
	warmupSeconds: number;
	seconds: number;
	reps: number;
	machine: { nproc: number; cpu: string; node: string; kernel: string };
	loadAverage: { start: number[]; end: number[] };
	/** Where the broker's state directory (audit log, key store) lives. */
	stateDir: string;
	/** Each client's first round trip of each broker run: JWE decrypted, value checked. */
	verified: { decrypted: number; valueSha256: string };
	runs: ModeRun[];
	/** broker round trips/s / echo round trips/s, per repetition. */
	ratios: number[];
	/**
	 * broker server CPU per round trip / echo server CPU per round trip, per repetition: how many
	 * times the framework's own cost a broker round trip takes (robust against other load).
	 */
	cpuRatios: number[];
	broker: ModeSummary;
	echo: ModeSummary;
	ratio: Spread;
	cpuRatio: Spread | null;
	targets: {
		ratio: { value: number; min: number; met: boolean };
		p99: { valueMs: number; maxMs: number; met: boolean };
	};
	profiles: ProfileSummary[];
	sectionSeconds: number;
}

// --- statistics ---------------------------------------------------------------------------------

export function median(xs: readonly number[]): number {
	const s = [...xs].sort((a, b) => a - b);
	if (s.length === 0) return Number.NaN;
	const mid = s.length >> 1;
	return s.length % 2
		? (s[mid] as number)
		: ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

/** Nearest-rank quantile of an ascending array. */
export function quantile(sorted: ArrayLike<number>, q: number): number {
	if (sorted.length === 0) return Number.NaN;
	const i = Math.min(
		sorted.length - 1,
		Math.max(0, Math.ceil(q * sorted.length) - 1),
	);
	return sorted[i] as number;
}

export function spread(xs: readonly number[]): Spread {
	return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
}

export function summarizeMode(runs: ModeRun[]): ModeSummary {
	const sp = (f: (r: ModeRun) => number): Spread => spread(runs.map(f));
	const spOrNull = (f: (r: ModeRun) => number | null): Spread | null => {
		const xs = runs.map(f);
		return xs.every((x): x is number => x !== null) ? spread(xs) : null;
	};
	const steps = Object.fromEntries(
		STEPS.map((s) => [
			s,
			{
				p50: median(runs.map((r) => r.stepsMs[s].p50)),
				p99: median(runs.map((r) => r.stepsMs[s].p99)),
			},
		]),
	) as Record<Step, Quantiles>;
	return {
		roundTripsPerSecond: sp((r) => r.roundTripsPerSecond),
		requestsPerSecond: sp((r) => r.requestsPerSecond),
		p50Ms: sp((r) => r.latencyMs.p50),
		p99Ms: sp((r) => r.latencyMs.p99),
		serverCpuUsPerRoundTrip: spOrNull((r) => r.server.cpuUsPerRoundTrip),
		serverCores: spOrNull((r) => r.server.cores),
		clientCpuUsPerRoundTrip: sp((r) => r.client.cpuUsPerRoundTrip),
		clientCores: sp((r) => r.client.cores),
		otherCores: spOrNull((r) => r.otherCores),
		stepsMs: steps,
		bodyBytes: {
			request: median(runs.map((r) => r.bodyBytes.request)),
			response: median(runs.map((r) => r.bodyBytes.response)),
		},
	};
}

// --- formatting ---------------------------------------------------------------------------------

const thousands = (x: number): string =>
	Number.isFinite(x) ? Math.round(x).toLocaleString("en-US") : "—";
const ms = (x: number): string =>
	Number.isFinite(x) ? x.toFixed(x < 10 ? 2 : 1) : "—";
const f2 = (x: number): string => (Number.isFinite(x) ? x.toFixed(2) : "—");

/** "median (min–max)", or just the median for one run. */
function cell(s: Spread | null, fmt: (x: number) => string): string {
	if (s === null) return "—";
	return s.min === s.max
		? fmt(s.median)
		: `${fmt(s.median)} (${fmt(s.min)}–${fmt(s.max)})`;
}

export function formatBrokerHeader(r: BrokerBenchReport): string {
	const lines = [
		`key broker: ${r.clients} concurrent clients on loopback over ${r.connections} keep-alive connections (undici Pool in this process), ${r.warmupSeconds} s warm-up then ${r.seconds} s timed, ${r.reps === 1 ? "one run" : `${r.reps} runs`} of each mode, alternating; a fresh server process per run`,
		`  broker: the real dadi-broker (startBroker, --insecure-dev, policies/sample-dev.json, rate limit off) in its own process; round trip = POST /kbs/v0/auth → POST /kbs/v0/attest (sample evidence binding nonce and tee-pubkey) → GET /kbs/v0/resource/${BENCH_RESOURCE}; each client reuses one P-256 tee-pubkey; state directory on ${r.stateDir}`,
		`  echo: a bare node:http server (same listener options) in its own process; the same three exchanges with bodies of the same sizes, answered with the request body (POST) or ${ECHO_GET_BYTES} bytes of JSON (GET)`,
		`  checked: ${r.verified.decrypted} released JWEs (each client's first round trip of each broker run) decrypted to the stored value (sha256 ${r.verified.valueSha256.slice(0, 16)}…)`,
		`  ${r.machine.cpu}, ${r.machine.nproc} CPUs, node ${r.machine.node}, kernel ${r.machine.kernel}; load average ${r.loadAverage.start.map(f2).join(" ")} at the start, ${r.loadAverage.end.map(f2).join(" ")} at the end`,
	];
	const other = Math.max(
		r.broker.otherCores?.max ?? 0,
		r.echo.otherCores?.max ?? 0,
	);
	if (other > 0.25)
		lines.push(
			`NOTE: other processes kept up to ${f2(other)} of the ${r.machine.nproc} CPUs busy during some runs (column "other load"); those runs are disturbed, the broker (one busy thread) more than the echo server`,
		);
	return `${lines.join("\n")}\n`;
}

export function formatBrokerTable(r: BrokerBenchReport): string {
	const row = (label: string, s: ModeSummary): string[] => [
		label,
		cell(s.roundTripsPerSecond, thousands),
		cell(s.requestsPerSecond, thousands),
		cell(s.p50Ms, ms),
		cell(s.p99Ms, ms),
		cell(s.serverCpuUsPerRoundTrip, thousands),
		cell(s.serverCores, f2),
		cell(s.clientCpuUsPerRoundTrip, thousands),
		cell(s.otherCores, f2),
	];
	const head = [
		"mode",
		"round trips/s",
		"requests/s",
		"p50 ms",
		"p99 ms",
		"server CPU µs/round trip",
		"server CPU, cores",
		"client CPU µs/round trip",
		"other load, cores",
	];
	const rows = [
		row("broker: auth + attest + resource", r.broker),
		row("echo: 3 bare HTTP exchanges", r.echo),
		[
			"broker / echo",
			cell(r.ratio, f2),
			"",
			"",
			"",
			cell(r.cpuRatio, (x) => `${x.toFixed(1)}×`),
			"",
			"",
			"",
		],
	];
	const steps = markdownTable(
		["exchange", "broker p50 / p99 ms", "echo p50 / p99 ms"],
		STEPS.map((s) => [
			s,
			`${ms(r.broker.stepsMs[s].p50)} / ${ms(r.broker.stepsMs[s].p99)}`,
			`${ms(r.echo.stepsMs[s].p50)} / ${ms(r.echo.stepsMs[s].p99)}`,
		]),
		1,
	);
	return `${r.reps === 1 ? "one run per mode" : `median (range) of ${r.reps} runs per mode`}; a round trip is three HTTP exchanges; latency per round trip; server CPU from /proc/PID/stat (all its threads), client CPU = this process; other load = the rest of the machine's busy CPU (/proc/stat) during the run\n\n${markdownTable(head, rows, 1)}\nper exchange (medians of the runs)\n\n${steps}body bytes per round trip: broker ${r.broker.bodyBytes.request} sent / ${r.broker.bodyBytes.response} received, echo ${r.echo.bodyBytes.request} / ${r.echo.bodyBytes.response}\n`;
}

export function formatBrokerTargets(r: BrokerBenchReport): string {
	const t = r.targets;
	const word = (m: boolean) => (m ? "MET" : "MISSED");
	return [
		`targets: broker round trips/s >= ${BROKER_TARGETS.minRatio} x the echo ceiling; p99 < ${BROKER_TARGETS.maxP99Ms} ms`,
		`  broker / echo: ${f2(t.ratio.value)} (${f2(r.ratio.min)}–${f2(r.ratio.max)}) ${word(t.ratio.met)}`,
		`  p99 latency: ${ms(t.p99.valueMs)} ms (${ms(r.broker.p99Ms.min)}–${ms(r.broker.p99Ms.max)}) ${word(t.p99.met)}`,
		"",
	].join("\n");
}

export function formatBrokerProfiles(r: BrokerBenchReport): string {
	const out: string[] = [];
	const list = (xs: ProfileEntry[], n: number) =>
		xs
			.slice(0, n)
			.map(
				(e) =>
					`${e.name} ${(e.share * 100).toFixed(1)}% (${e.usPerRoundTrip.toFixed(0)} µs)`,
			)
			.join(", ");
	for (const p of r.profiles) {
		const busy = p.sampledMs - p.idleMs;
		out.push(
			`profile of the ${p.mode} server (main thread; ${thousands(p.roundTrips)} round trips timed at ${thousands(p.roundTripsPerSecond)}/s under the profiler; ${(p.sampledMs / 1000).toFixed(1)} s sampled, ${(busy / 1000).toFixed(1)} s busy; ${p.file}); shares of busy time, µs per round trip:`,
		);
		out.push(`  by kind: ${list(p.categories, 12)}`);
		out.push(`  top self time: ${list(p.topSelf, 15)}`);
		if (p.topInclusive.length)
			out.push(`  inclusive, project code: ${list(p.topInclusive, 15)}`);
	}
	return out.length ? `${out.join("\n")}\n` : "";
}
