/**
 * The key-broker section of `npm run bench` (`--broker` runs only this): how many KBS round trips
 * — POST /kbs/v0/auth, POST /kbs/v0/attest with sample evidence, GET /kbs/v0/resource/… — the
 * real broker answers per second for 64 concurrent clients on loopback, with p50/p99 latency, as
 * a ratio against a bare node:http echo server doing the same three exchanges with bodies of the
 * same sizes (the framework ceiling).
 *
 * Each server runs in its own process (bench/broker-server.ts, a fresh one per run) and this
 * process generates the load: 64 client loops over an undici Pool of 64 keep-alive connections.
 * On this 2-CPU machine that keeps the clients off the server's core, for both modes alike. Each
 * client makes one P-256 key pair up front and reuses it as its tee-pubkey (the broker still does
 * all its per-round-trip work: a fresh session and nonce, report_data binding, verification, a
 * signed token, a fresh JWE), and decrypts and checks only its first release of each run.
 *
 * Runs: 1 s of warm-up, then `seconds` timed; the modes alternate (broker, echo; then echo, broker;
 * …) so drifting load spreads over both; the report gives medians and ranges. The server's CPU
 * comes from /proc/PID/stat (all its threads). With a profile directory, one more run of each
 * mode profiles the server's main thread during the timed window (V8 CPU profiler).
 *
 * Every server process is killed on every way out (error, signal, exit). See docs/benchmarks.md,
 * "Key broker".
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createHash, type KeyObject, randomBytes } from "node:crypto";
import { closeSync, openSync, readFileSync, statfsSync } from "node:fs";
import { mkdir, mkdtemp, readFile } from "node:fs/promises";
import { availableParallelism, cpus, loadavg, release } from "node:os";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Pool } from "undici";
import { decryptFromBroker, parseFlattenedJwe } from "../src/kbs/jwe.js";
import {
	KBS_PROTOCOL_VERSION,
	SELECTED_HASH_KEY,
	SESSION_COOKIE,
	SUPPORTED_HASHES_KEY,
} from "../src/kbs/protocol.js";
import {
	type HashAlgorithm,
	reportDataDigest,
} from "../src/kbs/report-data.js";
import { generateEphemeralKey } from "../src/kbs/tee-pubkey.js";
import {
	BENCH_RESOURCE,
	BROKER_TARGETS,
	type BrokerBenchReport,
	type BrokerMode,
	formatBrokerHeader,
	formatBrokerProfiles,
	formatBrokerTable,
	formatBrokerTargets,
	type ModeRun,
	type ProfileEntry,
	type ProfileSummary,
	quantile,
	type ServerHello,
	STEPS,
	spread,
	summarizeMode,
} from "./broker-report.js";

const WARMUP_SECONDS = 1;
const SERVER_JS = fileURLToPath(new URL("./broker-server.js", import.meta.url));
const HELLO_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;
const TMPFS_MAGIC = 0x01021994;

export interface BrokerBenchOptions {
	/** Timed seconds of each run (after a 1 s warm-up). */
	seconds: number;
	/** Concurrent clients (and connections). */
	clients: number;
	/** Runs of each mode; medians and ranges are reported. */
	reps: number;
	quick: boolean;
	/** Scratch directory (removed by the caller); the servers' directories go below it. */
	workDir: string;
	/** Also profile each server once (main thread) and write .cpuprofile files here. */
	profileDir?: string;
	log: (line: string) => void;
	print: (text: string) => void;
}

interface ClientKey {
	privateKey: KeyObject;
	jwk: unknown;
}

/** Live server processes, killed on any exit of this process. */
const children = new Set<ChildProcess>();
const killChildren = (): void => {
	for (const c of children)
		if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
};

export async function runBrokerBench(
	o: BrokerBenchOptions,
): Promise<BrokerBenchReport> {
	const started = performance.now();
	process.on("exit", killChildren);
	try {
		return await bench(o, started);
	} finally {
		killChildren();
		process.off("exit", killChildren);
	}
}

async function bench(
	o: BrokerBenchOptions,
	started: number,
): Promise<BrokerBenchReport> {
	const loadStart = loadavg();
	o.log(
		`key broker: ${o.clients} clients, ${o.seconds} s per run, ${o.reps} run(s) of each mode...`,
	);
	const keys: ClientKey[] = Array.from({ length: o.clients }, () =>
		generateEphemeralKey("ec"),
	);
	const runs: ModeRun[] = [];
	const ratios: number[] = [];
	const cpuRatios: number[] = [];
	let decrypted = 0;
	let valueSha256 = "";
	for (let rep = 1; rep <= o.reps; rep++) {
		const order: BrokerMode[] =
			rep % 2 === 1 ? ["broker", "echo"] : ["echo", "broker"];
		const pair: Partial<Record<BrokerMode, ModeRun>> = {};
		for (const mode of order) {
			const r = await runMode(o, mode, rep, keys);
			decrypted += r.decrypted;
			if (r.valueSha256) valueSha256 = r.valueSha256;
			pair[mode] = r.run;
			runs.push(r.run);
			o.log(`  run ${rep}, ${describeRun(r.run)}`);
		}
		const b = pair.broker as ModeRun;
		const e = pair.echo as ModeRun;
		ratios.push(b.roundTripsPerSecond / e.roundTripsPerSecond);
		if (
			b.server.cpuUsPerRoundTrip !== null &&
			e.server.cpuUsPerRoundTrip !== null
		)
			cpuRatios.push(b.server.cpuUsPerRoundTrip / e.server.cpuUsPerRoundTrip);
	}
	const profiles: ProfileSummary[] = [];
	if (o.profileDir !== undefined) {
		await mkdir(o.profileDir, { recursive: true });
		for (const mode of ["broker", "echo"] as const) {
			const file = join(o.profileDir, `broker-server-${mode}.cpuprofile`);
			o.log(`  profiling the ${mode} server into ${file}...`);
			const r = await runMode(o, mode, 0, keys, file);
			decrypted += r.decrypted;
			profiles.push(
				summarizeProfile(
					mode,
					file,
					JSON.parse(await readFile(file, "utf8")) as CpuProfile,
					r.profiledRoundTrips,
					r.run.roundTripsPerSecond,
				),
			);
		}
	}
	const broker = summarizeMode(runs.filter((r) => r.mode === "broker"));
	const echo = summarizeMode(runs.filter((r) => r.mode === "echo"));
	const ratio = spread(ratios);
	const report: BrokerBenchReport = {
		schema: "dadi-bench-broker/1",
		date: new Date().toISOString(),
		quick: o.quick,
		clients: o.clients,
		connections: o.clients,
		warmupSeconds: WARMUP_SECONDS,
		seconds: o.seconds,
		reps: o.reps,
		machine: {
			nproc: availableParallelism(),
			cpu: cpuModel(),
			node: process.version,
			kernel: release(),
		},
		loadAverage: { start: loadStart, end: loadavg() },
		stateDir: describeStateDir(o.workDir),
		verified: { decrypted, valueSha256 },
		runs,
		ratios,
		cpuRatios,
		broker,
		echo,
		ratio,
		cpuRatio: cpuRatios.length === o.reps ? spread(cpuRatios) : null,
		targets: {
			ratio: {
				value: ratio.median,
				min: BROKER_TARGETS.minRatio,
				met: ratio.median >= BROKER_TARGETS.minRatio,
			},
			p99: {
				valueMs: broker.p99Ms.median,
				maxMs: BROKER_TARGETS.maxP99Ms,
				met: broker.p99Ms.median < BROKER_TARGETS.maxP99Ms,
			},
		},
		profiles,
		sectionSeconds: (performance.now() - started) / 1000,
	};
	o.print(
		`\n${formatBrokerHeader(report)}\n${formatBrokerTable(report)}\n${formatBrokerTargets(report)}`,
	);
	const prof = formatBrokerProfiles(report);
	if (prof) o.print(`\n${prof}`);
	o.log(`key broker section took ${report.sectionSeconds.toFixed(0)} s`);
	return report;
}

function describeRun(r: ModeRun): string {
	return `${r.mode}: ${Math.round(r.roundTripsPerSecond)} round trips/s, p50 ${r.latencyMs.p50.toFixed(1)} ms, p99 ${r.latencyMs.p99.toFixed(1)} ms, server ${r.server.cpuUsPerRoundTrip === null ? "?" : r.server.cpuUsPerRoundTrip.toFixed(0)} µs CPU/round trip (${r.server.cores?.toFixed(2) ?? "?"} cores), client ${r.client.cpuUsPerRoundTrip.toFixed(0)} µs (${r.client.cores.toFixed(2)} cores), other load ${r.otherCores?.toFixed(2) ?? "?"} cores`;
}

function cpuModel(): string {
	const lscpu = spawnSync("lscpu", { encoding: "utf8" });
	return (
		/^Model name:\s*(.+)$/m.exec(lscpu.stdout ?? "")?.[1]?.trim() ??
		cpus()[0]?.model ??
		"unknown"
	);
}

function describeStateDir(dir: string): string {
	let tmpfs = false;
	try {
		tmpfs = statfsSync(dir).type === TMPFS_MAGIC;
	} catch {
		// unknown: say disk
	}
	return tmpfs
		? `${dir} (tmpfs: the audit log's fsync before each release costs almost nothing)`
		: `${dir} (not tmpfs: each release waits for the audit log's group-committed fsync)`;
}

// --- one run ------------------------------------------------------------------------------------

interface RunResult {
	run: ModeRun;
	/** JWEs decrypted and checked (broker mode). */
	decrypted: number;
	valueSha256?: string;
	/** Round trips completed between the profiler's start and the end of the run. */
	profiledRoundTrips: number;
}

async function runMode(
	o: BrokerBenchOptions,
	mode: BrokerMode,
	rep: number,
	keys: ClientKey[],
	profileFile?: string,
): Promise<RunResult> {
	const dir = await mkdtemp(join(o.workDir, `broker-${mode}-`));
	const server = await startServer(mode, dir, profileFile);
	try {
		const r = await drive(
			o,
			mode,
			rep,
			keys,
			server,
			profileFile !== undefined,
		);
		await server.stop();
		return r;
	} catch (e) {
		throw new Error(`${mode} run: ${(e as Error).message}${server.logTail()}`, {
			cause: e,
		});
	} finally {
		await server.stop();
	}
}

interface StartedServer {
	hello: ServerHello;
	child: ChildProcess;
	/** SIGTERM, then SIGKILL after a while; resolves when the process is gone. */
	stop(): Promise<void>;
	logTail(): string;
}

async function startServer(
	mode: BrokerMode,
	dir: string,
	profileFile: string | undefined,
): Promise<StartedServer> {
	const logFile = join(dir, "server.log");
	const fd = openSync(logFile, "w");
	let child: ChildProcess;
	try {
		child = spawn(
			process.execPath,
			[
				SERVER_JS,
				"--mode",
				mode,
				"--dir",
				dir,
				...(profileFile === undefined ? [] : ["--profile", profileFile]),
			],
			// stdin stays open: the server stops when it closes (this process gone).
			{ stdio: ["pipe", "pipe", fd] },
		);
	} finally {
		closeSync(fd);
	}
	children.add(child);
	const exited = new Promise<void>((resolve) => {
		child.once("exit", () => {
			children.delete(child);
			resolve();
		});
	});
	const logTail = (): string => {
		try {
			const text = readFileSync(logFile, "utf8").trim();
			return text ? `\nserver log (${logFile}):\n${text.slice(-2000)}` : "";
		} catch {
			return "";
		}
	};
	let stopping: Promise<void> | undefined;
	const stop = (): Promise<void> => {
		stopping ??= (async () => {
			if (child.exitCode !== null || child.signalCode !== null) return;
			child.kill("SIGTERM");
			let timer: NodeJS.Timeout | undefined;
			const timedOut = await Promise.race([
				exited.then(() => false),
				new Promise<boolean>((r) => {
					timer = setTimeout(() => r(true), STOP_TIMEOUT_MS);
				}),
			]);
			clearTimeout(timer);
			if (timedOut) {
				child.kill("SIGKILL");
				await exited;
			}
		})();
		return stopping;
	};
	try {
		const hello = await new Promise<ServerHello>((resolve, reject) => {
			let out = "";
			const timer = setTimeout(
				() => reject(new Error(`the ${mode} server did not start in time`)),
				HELLO_TIMEOUT_MS,
			);
			child.stdout?.on("data", (c: Buffer) => {
				out += c.toString("utf8");
				const nl = out.indexOf("\n");
				if (nl >= 0) {
					clearTimeout(timer);
					try {
						resolve(JSON.parse(out.slice(0, nl)) as ServerHello);
					} catch {
						reject(
							new Error(`the ${mode} server printed ${out.slice(0, 200)}`),
						);
					}
				}
			});
			child.once("exit", (code, signal) => {
				clearTimeout(timer);
				reject(
					new Error(
						`the ${mode} server exited (${signal ?? `status ${code}`}) before it was ready`,
					),
				);
			});
			child.once("error", (e) => {
				clearTimeout(timer);
				reject(e);
			});
		});
		return { hello, child, stop, logTail };
	} catch (e) {
		await stop();
		throw new Error(`${(e as Error).message}${logTail()}`, { cause: e });
	}
}

/** Per round trip: end time, latency, the three exchanges' times, body bytes. */
interface Sample {
	end: number;
	total: number;
	steps: [number, number, number];
	sent: number;
	received: number;
}

async function drive(
	o: BrokerBenchOptions,
	mode: BrokerMode,
	rep: number,
	keys: ClientKey[],
	server: StartedServer,
	profiling: boolean,
): Promise<RunResult> {
	const pool = new Pool(server.hello.url, {
		connections: o.clients,
		pipelining: 1,
		keepAliveTimeout: 30_000,
	});
	const samples: Sample[] = [];
	let stop = false;
	let decrypted = 0;
	let profileFrom = Number.POSITIVE_INFINITY;
	const loop = async (key: ClientKey): Promise<void> => {
		let first = mode === "broker";
		try {
			while (!stop) {
				const s = await roundTrip(pool, mode, key, first, server.hello);
				if (first) decrypted++;
				first = false;
				samples.push(s);
			}
		} catch (e) {
			stop = true;
			throw e;
		}
	};
	const loops = Promise.all(keys.map((k) => loop(k)));
	// A failing loop ends the wait early; its error surfaces at `await loops`.
	const wait = (ms: number) =>
		Promise.race([loops.then(() => {}), sleep(ms)]).catch(() => {});
	try {
		await wait(WARMUP_SECONDS * 1000);
		const t0 = performance.now();
		const server0 = procCpuSeconds(server.hello.pid);
		const client0 = process.cpuUsage();
		const machine0 = machineBusySeconds();
		if (profiling && server.child.exitCode === null) {
			// --profile: the server starts its profiler now.
			profileFrom = t0;
			server.child.kill("SIGUSR2");
		}
		await wait(o.seconds * 1000);
		const t1 = performance.now();
		const server1 = procCpuSeconds(server.hello.pid);
		const client = process.cpuUsage(client0);
		const machine1 = machineBusySeconds();
		stop = true;
		await loops;
		const window = samples.filter((s) => s.end >= t0 && s.end <= t1);
		const seconds = (t1 - t0) / 1000;
		const n = window.length;
		if (n === 0) throw new Error("no round trip completed in the timed window");
		const totals = Float64Array.from(window, (s) => s.total).sort();
		const stepQ = (i: number) => {
			const xs = Float64Array.from(window, (s) => s.steps[i] as number).sort();
			return { p50: quantile(xs, 0.5), p99: quantile(xs, 0.99) };
		};
		const serverCpu =
			server0 === null || server1 === null ? null : server1 - server0;
		const clientCpu = (client.user + client.system) / 1e6;
		const run: ModeRun = {
			mode,
			rep,
			seconds,
			roundTrips: n,
			roundTripsPerSecond: n / seconds,
			requestsPerSecond: (3 * n) / seconds,
			latencyMs: {
				p50: quantile(totals, 0.5),
				p90: quantile(totals, 0.9),
				p99: quantile(totals, 0.99),
				max: totals[totals.length - 1] as number,
				mean: totals.reduce((a, x) => a + x, 0) / n,
			},
			stepsMs: {
				[STEPS[0]]: stepQ(0),
				[STEPS[1]]: stepQ(1),
				[STEPS[2]]: stepQ(2),
			} as ModeRun["stepsMs"],
			bodyBytes: {
				request: Math.round(window.reduce((a, s) => a + s.sent, 0) / n),
				response: Math.round(window.reduce((a, s) => a + s.received, 0) / n),
			},
			server: {
				cpuSeconds: serverCpu,
				cpuUsPerRoundTrip: serverCpu === null ? null : (serverCpu * 1e6) / n,
				cores: serverCpu === null ? null : serverCpu / seconds,
			},
			client: {
				cpuSeconds: clientCpu,
				cpuUsPerRoundTrip: (clientCpu * 1e6) / n,
				cores: clientCpu / seconds,
			},
			otherCores:
				machine0 === null || machine1 === null || serverCpu === null
					? null
					: Math.max(0, machine1 - machine0 - serverCpu - clientCpu) / seconds,
		};
		return {
			run,
			decrypted,
			...(server.hello.valueSha256 === undefined
				? {}
				: { valueSha256: server.hello.valueSha256 }),
			profiledRoundTrips: samples.filter((s) => s.end >= profileFrom).length,
		};
	} finally {
		stop = true;
		await loops.catch(() => {});
		await pool.destroy();
	}
}

// --- the round trip ------------------------------------------------------------------------------

const AUTH_BODY = JSON.stringify({
	version: KBS_PROTOCOL_VERSION,
	tee: "sample",
	"extra-params": { [SUPPORTED_HASHES_KEY]: ["sha384", "sha512", "sha256"] },
});
const RESOURCE_PATH = `/kbs/v0/resource/${BENCH_RESOURCE}`;
const COOKIE_RE = new RegExp(`^${SESSION_COOKIE}=([^;]*)`);

interface Answer {
	text: string;
	cookie: string | undefined;
}

async function exchange(
	pool: Pool,
	method: "GET" | "POST",
	path: string,
	cookie: string | undefined,
	body: string | undefined,
): Promise<Answer> {
	const headers: Record<string, string> = { accept: "application/json" };
	if (body !== undefined) headers["content-type"] = "application/json";
	if (cookie !== undefined) headers.cookie = cookie;
	const res = await pool.request({ method, path, headers, body });
	const text = await res.body.text();
	if (res.statusCode !== 200)
		throw new Error(
			`${method} ${path} answered ${res.statusCode}: ${text.slice(0, 300)}`,
		);
	const set = res.headers["set-cookie"];
	let found: string | undefined;
	for (const c of Array.isArray(set) ? set : set ? [set] : []) {
		const m = COOKIE_RE.exec(c);
		if (m) found = `${SESSION_COOKIE}=${m[1]}`;
	}
	return { text, cookie: found };
}

/**
 * One auth → attest → resource exchange. Broker mode: the broker's nonce and selected hash; echo
 * mode: a nonce made here of the broker's size (the echo server answers with the request), so the
 * client does the same work and sends the same bytes in both modes.
 */
async function roundTrip(
	pool: Pool,
	mode: BrokerMode,
	key: ClientKey,
	check: boolean,
	hello: ServerHello,
): Promise<Sample> {
	const t0 = performance.now();
	const auth = await exchange(
		pool,
		"POST",
		"/kbs/v0/auth",
		undefined,
		AUTH_BODY,
	);
	const t1 = performance.now();
	const challenge = JSON.parse(auth.text) as {
		nonce?: unknown;
		"extra-params"?: Record<string, unknown> | string;
	};
	let nonce: string;
	let hash: HashAlgorithm = "sha384";
	if (mode === "broker") {
		if (typeof challenge.nonce !== "string")
			throw new Error("the challenge has no nonce");
		nonce = challenge.nonce;
		const extra = challenge["extra-params"];
		const selected =
			typeof extra === "object" ? extra[SELECTED_HASH_KEY] : undefined;
		if (selected === "sha256" || selected === "sha384" || selected === "sha512")
			hash = selected;
		if (auth.cookie === undefined)
			throw new Error("the auth answer set no session cookie");
	} else nonce = randomBytes(32).toString("base64");
	const digest = reportDataDigest({ nonce, teePubKey: key.jwk, hash });
	const attestBody = JSON.stringify({
		"init-data": null,
		"runtime-data": { nonce, "tee-pubkey": key.jwk },
		"tee-evidence": {
			primary_evidence: {
				svn: "1",
				report_data: digest.toString("base64"),
				init_data: "",
			},
			additional_evidence: "",
		},
	});
	const attest = await exchange(
		pool,
		"POST",
		"/kbs/v0/attest",
		auth.cookie,
		attestBody,
	);
	const t2 = performance.now();
	const attested = JSON.parse(attest.text) as { token?: unknown };
	if (mode === "broker" && typeof attested.token !== "string")
		throw new Error("the attest answer has no token");
	const resource = await exchange(
		pool,
		"GET",
		RESOURCE_PATH,
		auth.cookie,
		undefined,
	);
	const t3 = performance.now();
	if (check) {
		const jwe = parseFlattenedJwe(
			JSON.parse(resource.text),
			"the broker's response",
		);
		const value = await decryptFromBroker(jwe, key.privateKey);
		const sha = createHash("sha256").update(value).digest("hex");
		value.fill(0);
		if (sha !== hello.valueSha256)
			throw new Error(
				`the released value does not match the stored one (sha256 ${sha})`,
			);
	}
	return {
		end: t3,
		total: t3 - t0,
		steps: [t1 - t0, t2 - t1, t3 - t2],
		sent: AUTH_BODY.length + attestBody.length,
		received: auth.text.length + attest.text.length + resource.text.length,
	};
}

// --- helpers ------------------------------------------------------------------------------------

const CLK_TCK = (() => {
	const r = spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" });
	const n = Number(r.stdout?.trim());
	return Number.isInteger(n) && n > 0 ? n : 100;
})();

/** utime + stime of a process (all its threads), seconds; null when /proc cannot tell. */
function procCpuSeconds(pid: number): number | null {
	try {
		const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
		// Fields after the command name (which may hold spaces) start with the state (field 3).
		const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
		const utime = Number(f[11]);
		const stime = Number(f[12]);
		return Number.isFinite(utime) && Number.isFinite(stime)
			? (utime + stime) / CLK_TCK
			: null;
	} catch {
		return null;
	}
}

/** Busy time of all CPUs together (/proc/stat: everything but idle and iowait), seconds. */
function machineBusySeconds(): number | null {
	try {
		const line = readFileSync("/proc/stat", "utf8").split("\n", 1)[0] ?? "";
		const f = line.trim().split(/\s+/).slice(1, 9).map(Number);
		if (f.length < 8 || f.some((x) => !Number.isFinite(x))) return null;
		const [user, nice, system, , , irq, softirq, steal] = f as number[];
		return (
			((user as number) +
				(nice as number) +
				(system as number) +
				(irq as number) +
				(softirq as number) +
				(steal as number)) /
			CLK_TCK
		);
	} catch {
		return null;
	}
}

function sleep(ms: number): Promise<void> {
	return new Promise((r) => setTimeout(r, ms));
}

// --- profiles -----------------------------------------------------------------------------------

interface CpuProfileNode {
	id: number;
	callFrame: {
		functionName: string;
		url: string;
		lineNumber: number;
	};
	children?: number[];
}

interface CpuProfile {
	nodes: CpuProfileNode[];
	startTime: number;
	endTime: number;
	samples: number[];
	timeDeltas: number[];
}

const REPO_URL = new URL("../../", import.meta.url).href;

/** What a frame's code is for: the project file, or a family of Node's internals. */
function kindOf(url: string): string | undefined {
	if (url === "") return undefined;
	if (url.startsWith(REPO_URL)) {
		const rel = url.slice(REPO_URL.length).replace(/^dist\//, "");
		if (rel.startsWith("node_modules/"))
			return `package ${rel.split("/")[1] ?? "?"}`;
		return rel.replace(/\.js$/, "");
	}
	if (!url.startsWith("node:")) return "other";
	const m = url.slice(5);
	if (/^(_http_|internal\/http)/.test(m)) return "node:http";
	if (
		/^(net|internal\/net|internal\/stream_base_commons|internal\/dns)/.test(m)
	)
		return "node:net";
	if (/^(stream|internal\/streams)/.test(m)) return "node:streams";
	if (/^(crypto|internal\/crypto)/.test(m)) return "node:crypto";
	if (/^(buffer|internal\/buffer)/.test(m)) return "node:buffer";
	if (/^(fs|internal\/fs)/.test(m)) return "node:fs";
	if (/^(events|internal\/event_target)/.test(m)) return "node:events";
	if (/^(timers|internal\/timers|internal\/process\/task_queues)/.test(m))
		return "node:timers, microtasks";
	if (/^(url|internal\/url|querystring)/.test(m)) return "node:url";
	return "node:other";
}

/** A readable name for a frame: function, file and line. */
function frameName(n: CpuProfileNode): string {
	const f = n.callFrame;
	const fn = f.functionName || "(anonymous)";
	if (f.url === "") return fn;
	const file = f.url.startsWith(REPO_URL)
		? f.url.slice(REPO_URL.length).replace(/^dist\//, "")
		: f.url.startsWith("node:")
			? f.url
			: basename(f.url);
	return `${fn} ${file}:${f.lineNumber + 1}`;
}

export function summarizeProfile(
	mode: BrokerMode,
	file: string,
	p: CpuProfile,
	roundTrips: number,
	roundTripsPerSecond: number,
): ProfileSummary {
	const byId = new Map(p.nodes.map((n) => [n.id, n]));
	const parent = new Map<number, number>();
	for (const n of p.nodes)
		for (const c of n.children ?? []) parent.set(c, n.id);
	const parentOf = (x: CpuProfileNode): CpuProfileNode | undefined => {
		const up = parent.get(x.id);
		return up === undefined ? undefined : byId.get(up);
	};
	// Self time per node, µs: each sample's share is the time until the next sample.
	const self = new Map<number, number>();
	const n = p.samples.length;
	const avg = n > 0 ? (p.endTime - p.startTime) / n : 0;
	for (let i = 0; i < n; i++) {
		const id = p.samples[i] as number;
		const dt = i + 1 < n ? (p.timeDeltas[i + 1] as number) : avg;
		self.set(id, (self.get(id) ?? 0) + Math.max(0, dt));
	}
	const kinds = new Map<string, number>();
	const selfByName = new Map<string, number>();
	const inclusive = new Map<string, number>();
	let total = 0;
	let idle = 0;
	const add = (m: Map<string, number>, k: string, us: number) =>
		m.set(k, (m.get(k) ?? 0) + us);
	for (const [id, us] of self) {
		const node = byId.get(id);
		if (node === undefined) continue;
		total += us;
		const fn = node.callFrame.functionName;
		if (fn === "(idle)") {
			idle += us;
			continue;
		}
		let kind: string | undefined;
		let name = frameName(node);
		if (fn === "(garbage collector)") kind = "garbage collection";
		else if (fn === "(program)") kind = "V8/native, unattributed";
		else if (fn === "(root)") kind = "other";
		else {
			// Native frames (no URL) count for the nearest caller that has one.
			let a: CpuProfileNode | undefined = node;
			for (; a !== undefined; a = parentOf(a)) {
				kind = kindOf(a.callFrame.url);
				if (kind !== undefined) break;
			}
			kind ??= "other";
			if (node.callFrame.url === "" && a !== undefined && a !== node)
				name = `${name} (native, from ${frameName(a)})`;
		}
		add(kinds, kind, us);
		add(selfByName, name, us);
		// Inclusive time of project functions: once per function per stack.
		const seen = new Set<string>();
		for (let a: CpuProfileNode | undefined = node; a; a = parentOf(a)) {
			const u = a.callFrame.url;
			if (u.startsWith(REPO_URL) && !u.includes("/node_modules/")) {
				const k = frameName(a);
				if (!seen.has(k)) {
					seen.add(k);
					add(inclusive, k, us);
				}
			}
		}
	}
	const busy = total - idle;
	const entries = (m: Map<string, number>): ProfileEntry[] =>
		[...m]
			.map(([name, us]) => ({
				name,
				ms: us / 1000,
				share: busy > 0 ? us / busy : 0,
				usPerRoundTrip: roundTrips > 0 ? us / roundTrips : 0,
			}))
			.sort((a, b) => b.ms - a.ms);
	return {
		mode,
		file,
		roundTrips,
		roundTripsPerSecond,
		sampledMs: total / 1000,
		idleMs: idle / 1000,
		categories: entries(kinds),
		topSelf: entries(selfByName).slice(0, 30),
		topInclusive: entries(inclusive).slice(0, 30),
	};
}
