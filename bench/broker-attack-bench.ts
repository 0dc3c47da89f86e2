/**
 * The key broker "under attack" section of `npm run bench` (`--broker-attack` runs only this): how
 * legitimate guests fare while each attack of the abuse review runs against a broker with its
 * default limits — their auth + attest + resource latency (p50/p99) beside the quiet figure, the
 * requests refused to them, and the broker's memory and CPU.
 *
 * Three kinds of process: the broker (bench/broker-server.ts --defaults, a fresh one per run), the
 * attacker (bench/broker-attacker.ts, from 127.0.0.2… ), and this one, whose guests run from
 * 127.0.1.1…, each on its own keep-alive connection at a bounded pace (a guest attests when its
 * sandbox starts; it does not hammer). Per run: the attack starts, runs `ramp` seconds (long
 * enough to fill what it fills), then the guests are timed for `seconds` while it goes on. The
 * broker's RSS is sampled every 100 ms from the attack's start; CPU from /proc/PID/stat. Every
 * process is killed on every way out. See docs/benchmarks.md, "Key broker under attack".
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { Agent, request } from "node:http";
import { availableParallelism, cpus, loadavg, release } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { reportDataDigest } from "../src/kbs/report-data.js";
import { generateEphemeralKey } from "../src/kbs/tee-pubkey.js";
import {
	ATTACKS,
	type AttackBenchReport,
	attackTargets,
	formatAttackHeader,
	formatAttackTable,
	formatAttackTargets,
	type PhaseResult,
} from "./broker-attack-report.js";
import type { AttackName, AttackStats } from "./broker-attacker.js";
import { BENCH_RESOURCE, quantile, type ServerHello } from "./broker-report.js";

const SERVER_JS = fileURLToPath(new URL("./broker-server.js", import.meta.url));
const ATTACKER_JS = fileURLToPath(
	new URL("./broker-attacker.js", import.meta.url),
);
const LEGIT_CLIENTS = 4;
/** Round trips a second each guest starts at most (3 requests each: under the 50/s limit). */
const LEGIT_RATE = 10;
const RAMP_SECONDS: Record<AttackName, number> = {
	idle: 3,
	bodies: 2,
	sessions: 8,
	slow: 4,
};

export interface AttackBenchOptions {
	/** Timed seconds of each run. */
	seconds: number;
	quick: boolean;
	workDir: string;
	log: (line: string) => void;
	print: (text: string) => void;
}

const children = new Set<ChildProcess>();
const killChildren = (): void => {
	for (const c of children)
		if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
};

export async function runBrokerAttackBench(
	o: AttackBenchOptions,
): Promise<AttackBenchReport> {
	const started = performance.now();
	process.on("exit", killChildren);
	try {
		const loadStart = loadavg();
		o.log(
			`key broker under attack: quiet, then ${ATTACKS.map((a) => a.name).join(", ")}; ${o.seconds} s timed each...`,
		);
		const quiet = await phase(o, undefined);
		o.log(`  ${describe(quiet)}`);
		const attacks: PhaseResult[] = [];
		for (const a of ATTACKS) {
			const p = await phase(o, a.name);
			o.log(`  ${describe(p)}`);
			attacks.push(p);
		}
		const report: AttackBenchReport = {
			schema: "dadi-bench-broker-attack/1",
			date: new Date().toISOString(),
			quick: o.quick,
			legitClients: LEGIT_CLIENTS,
			legitRate: LEGIT_RATE,
			machine: {
				nproc: availableParallelism(),
				cpu: cpuModel(),
				node: process.version,
				kernel: release(),
			},
			loadAverage: { start: loadStart, end: loadavg() },
			quiet,
			attacks,
			targets: attackTargets(quiet, attacks),
			sectionSeconds: (performance.now() - started) / 1000,
		};
		o.print(
			`\n${formatAttackHeader(report)}\n${formatAttackTable(report)}\n${formatAttackTargets(report)}`,
		);
		o.log(
			`key broker under attack section took ${report.sectionSeconds.toFixed(0)} s`,
		);
		return report;
	} finally {
		killChildren();
		process.off("exit", killChildren);
	}
}

function describe(p: PhaseResult): string {
	return `${p.attack === "none" ? "quiet" : p.label}: ${p.roundTrips} round trips, ${p.refused} refused, p50 ${p.latencyMs.p50.toFixed(1)} ms, p99 ${p.latencyMs.p99.toFixed(1)} ms, broker RSS peak ${p.brokerRssPeakMiB.toFixed(0)} MiB, broker ${p.brokerCores?.toFixed(2) ?? "?"} cores`;
}

// --- one run -------------------------------------------------------------------------------------

async function phase(
	o: AttackBenchOptions,
	attack: AttackName | undefined,
): Promise<PhaseResult> {
	const dir = await mkdtemp(
		join(o.workDir, `broker-attack-${attack ?? "quiet"}-`),
	);
	const server = await startProcess(
		"broker",
		[SERVER_JS, "--mode", "broker", "--dir", dir, "--defaults"],
		join(dir, "server.log"),
	);
	const hello = JSON.parse(await server.firstLine) as ServerHello;
	let attacker: Started | undefined;
	let peak = 0;
	const sampler = setInterval(() => {
		peak = Math.max(peak, rssBytes(hello.pid));
	}, 100);
	try {
		peak = rssBytes(hello.pid);
		const rampSeconds = attack ? RAMP_SECONDS[attack] : 0;
		if (attack) {
			attacker = await startProcess(
				"attacker",
				[ATTACKER_JS, "--attack", attack, "--url", hello.url],
				join(dir, "attacker.log"),
			);
			await sleep(rampSeconds * 1000);
		}
		const cpu0 = [procCpu(hello.pid), attacker ? procCpu(attacker.pid) : null];
		const t0 = performance.now();
		const timed = await legitimate(hello.url, o.seconds);
		const seconds = (performance.now() - t0) / 1000;
		const cpu1 = [procCpu(hello.pid), attacker ? procCpu(attacker.pid) : null];
		const cores = (i: number) => {
			const a = cpu0[i];
			const b = cpu1[i];
			return a === null || b === null || a === undefined || b === undefined
				? null
				: (b - a) / seconds;
		};
		let stats: AttackStats | undefined;
		if (attacker) {
			attacker.child.kill("SIGTERM");
			const line = await Promise.race([
				attacker.firstLine,
				sleep(10_000).then(() => ""),
			]);
			if (line) stats = JSON.parse(line) as AttackStats;
		}
		const sorted = Float64Array.from(timed.latencies).sort();
		const label =
			ATTACKS.find((a) => a.name === attack)?.label ?? "quiet (no attack)";
		return {
			attack: attack ?? "none",
			label,
			rampSeconds,
			seconds,
			roundTrips: timed.latencies.length,
			refused: Object.values(timed.refusals).reduce((a, b) => a + b, 0),
			refusals: timed.refusals,
			latencyMs: {
				p50: quantile(sorted, 0.5),
				p99: quantile(sorted, 0.99),
				max: sorted.length ? (sorted[sorted.length - 1] as number) : Number.NaN,
			},
			brokerRssPeakMiB: Math.max(peak, rssBytes(hello.pid)) / (1 << 20),
			brokerCores: cores(0),
			attackerCores: cores(1),
			...(stats ? { attacker: stats } : {}),
		};
	} catch (e) {
		throw new Error(
			`under attack (${attack ?? "quiet"}): ${(e as Error).message}${server.logTail()}${attacker?.logTail() ?? ""}`,
			{ cause: e },
		);
	} finally {
		clearInterval(sampler);
		await attacker?.stop();
		await server.stop();
	}
}

// --- the legitimate guests -----------------------------------------------------------------------

const KEY = generateEphemeralKey("ec");

async function legitimate(
	url: string,
	seconds: number,
): Promise<{ latencies: number[]; refusals: Record<string, number> }> {
	const latencies: number[] = [];
	const refusals: Record<string, number> = {};
	const until = performance.now() + seconds * 1000;
	const agents: Agent[] = [];
	await Promise.all(
		Array.from({ length: LEGIT_CLIENTS }, async (_, i) => {
			const agent = new Agent({
				keepAlive: true,
				maxSockets: 1,
				localAddress: `127.0.1.${i + 1}`,
			});
			agents.push(agent);
			// spread the guests' starts over one period
			await sleep((i * 1000) / LEGIT_RATE / LEGIT_CLIENTS);
			while (performance.now() < until) {
				const t0 = performance.now();
				const r = await roundTrip(url, agent);
				if (r.refused === undefined) latencies.push(performance.now() - t0);
				else refusals[r.refused] = (refusals[r.refused] ?? 0) + 1;
				await sleep(Math.max(0, 1000 / LEGIT_RATE - (performance.now() - t0)));
			}
		}),
	);
	for (const a of agents) a.destroy();
	return { latencies, refusals };
}

interface Reply {
	status: number;
	cookie?: string;
	text: string;
}

function call(
	url: string,
	agent: Agent,
	method: string,
	path: string,
	cookie: string | undefined,
	body?: string,
): Promise<Reply> {
	const u = new URL(url);
	return new Promise((resolve, reject) => {
		const req = request(
			{
				host: u.hostname,
				port: u.port,
				method,
				path,
				agent,
				headers: {
					accept: "application/json",
					...(body !== undefined ? { "content-type": "application/json" } : {}),
					...(cookie ? { cookie } : {}),
				},
			},
			(res) => {
				const chunks: Buffer[] = [];
				res.on("data", (c: Buffer) => chunks.push(c));
				res.on("end", () => {
					const set = res.headers["set-cookie"];
					const first = Array.isArray(set) ? set[0] : set;
					resolve({
						status: res.statusCode ?? 0,
						cookie: first?.split(";")[0],
						text: Buffer.concat(chunks).toString("utf8"),
					});
				});
				res.on("error", reject);
			},
		);
		req.setTimeout(30_000, () => req.destroy(new Error("timeout")));
		req.on("error", reject);
		req.end(body);
	});
}

/** One guest's exchange: undefined when every answer was 200, else "STEP STATUS". */
async function roundTrip(
	url: string,
	agent: Agent,
): Promise<{ refused?: string }> {
	let step = "auth";
	try {
		const auth = await call(
			url,
			agent,
			"POST",
			"/kbs/v0/auth",
			undefined,
			JSON.stringify({ version: "0.4.0", tee: "sample", "extra-params": "" }),
		);
		if (auth.status !== 200) return { refused: `auth ${auth.status}` };
		const nonce = (JSON.parse(auth.text) as { nonce: string }).nonce;
		const digest = reportDataDigest({ nonce, teePubKey: KEY.jwk });
		step = "attest";
		const attest = await call(
			url,
			agent,
			"POST",
			"/kbs/v0/attest",
			auth.cookie,
			JSON.stringify({
				"init-data": null,
				"runtime-data": { nonce, "tee-pubkey": KEY.jwk },
				"tee-evidence": {
					primary_evidence: {
						svn: "1",
						report_data: digest.toString("base64"),
						init_data: "",
					},
					additional_evidence: "",
				},
			}),
		);
		if (attest.status !== 200) return { refused: `attest ${attest.status}` };
		step = "resource";
		const res = await call(
			url,
			agent,
			"GET",
			`/kbs/v0/resource/${BENCH_RESOURCE}`,
			auth.cookie,
		);
		if (res.status !== 200) return { refused: `resource ${res.status}` };
		return {};
	} catch {
		return { refused: `${step} net` };
	}
}

// --- processes -----------------------------------------------------------------------------------

interface Started {
	child: ChildProcess;
	pid: number;
	/** The first line it prints on stdout. */
	firstLine: Promise<string>;
	stop(): Promise<void>;
	logTail(): string;
}

async function startProcess(
	what: string,
	args: string[],
	logFile: string,
): Promise<Started> {
	const fd = openSync(logFile, "w");
	let child: ChildProcess;
	try {
		child = spawn(process.execPath, args, { stdio: ["pipe", "pipe", fd] });
	} finally {
		closeSync(fd);
	}
	children.add(child);
	const exited = new Promise<void>((r) =>
		child.once("exit", () => {
			children.delete(child);
			r();
		}),
	);
	const firstLine = new Promise<string>((resolve, reject) => {
		let out = "";
		const timer = setTimeout(
			() => reject(new Error(`the ${what} did not start in time`)),
			30_000,
		);
		child.stdout?.on("data", (c: Buffer) => {
			out += c.toString("utf8");
			const nl = out.indexOf("\n");
			if (nl >= 0) {
				clearTimeout(timer);
				resolve(out.slice(0, nl));
			}
		});
		child.once("exit", (code, signal) => {
			clearTimeout(timer);
			reject(new Error(`the ${what} exited (${signal ?? `status ${code}`})`));
		});
	});
	firstLine.catch(() => {});
	let stopping: Promise<void> | undefined;
	return {
		child,
		pid: child.pid as number,
		firstLine,
		logTail: () => {
			try {
				const t = readFileSync(logFile, "utf8").trim();
				return t ? `\n${what} log (${logFile}):\n${t.slice(-2000)}` : "";
			} catch {
				return "";
			}
		},
		stop: () => {
			stopping ??= (async () => {
				if (child.exitCode !== null || child.signalCode !== null) return;
				child.kill("SIGTERM");
				const t = setTimeout(() => child.kill("SIGKILL"), 15_000);
				await exited;
				clearTimeout(t);
			})();
			return stopping;
		},
	};
}

const CLK_TCK = (() => {
	const r = spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" });
	const n = Number(r.stdout?.trim());
	return Number.isInteger(n) && n > 0 ? n : 100;
})();

function procCpu(pid: number): number | null {
	try {
		const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
		const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
		return (Number(f[11]) + Number(f[12])) / CLK_TCK;
	} catch {
		return null;
	}
}

function rssBytes(pid: number): number {
	try {
		const text = readFileSync(`/proc/${pid}/status`, "utf8");
		return Number(/^VmRSS:\s+(\d+) kB/m.exec(text)?.[1] ?? "0") * 1024;
	} catch {
		return 0;
	}
}

function cpuModel(): string {
	const lscpu = spawnSync("lscpu", { encoding: "utf8" });
	return (
		/^Model name:\s*(.+)$/m.exec(lscpu.stdout ?? "")?.[1]?.trim() ??
		cpus()[0]?.model ??
		"unknown"
	);
}

function sleep(ms: number): Promise<void> {
	return new Promise((r) => setTimeout(r, ms));
}
