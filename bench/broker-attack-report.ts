/**
 * The report of the key broker "under attack" runs (bench/broker-attack-bench.ts): legitimate
 * guests' auth + attest + resource latency while each attack of the abuse review runs, beside the
 * quiet figure; refusals; the broker's memory and CPU. Targets: p99 under attack at most 5 times
 * the quiet p99, no legitimate request refused, broker RSS under 512 MiB. See docs/benchmarks.md,
 * "Key broker under attack".
 */
import type { AttackName, AttackStats } from "./broker-attacker.js";
import { markdownTable } from "./report.js";

export const ATTACK_TARGETS = {
	/** p99 under attack at most this many times the quiet p99. */
	maxP99Ratio: 5,
	maxRefused: 0,
	maxRssMiB: 512,
} as const;

export const ATTACKS: { name: AttackName; label: string; what: string }[] = [
	{
		name: "idle",
		label: "idle connections",
		what: "4,200 connections from 127.0.0.2 sending nothing, re-opened as they are closed",
	},
	{
		name: "bodies",
		label: "1 MiB bodies without a session",
		what: "8 parallel POST /kbs/v0/attest of 1 MiB of deeply nested JSON, no cookie, ~9/s from 127.0.0.2",
	},
	{
		name: "sessions",
		label: "session flood, 40 addresses",
		what: "POST /kbs/v0/auth as fast as the rate limit lets each of 127.0.0.2–41 (Retry-After honoured, 503 retried after 100 ms)",
	},
	{
		name: "slow",
		label: "slow bodies",
		what: "up to 128 TDX-session attests from each of 127.0.0.2–5, each declaring 1 MiB, sending 1 MiB − 1 byte, then stalling; re-opened as they are closed",
	},
];

export interface PhaseResult {
	attack: AttackName | "none";
	label: string;
	/** Seconds the attack ran before the timed window. */
	rampSeconds: number;
	/** The timed window, seconds. */
	seconds: number;
	roundTrips: number;
	/** Legitimate requests answered other than 200, or not answered. */
	refused: number;
	/** Those refusals by step and status ("auth 503", "attest net"). */
	refusals: Record<string, number>;
	latencyMs: { p50: number; p99: number; max: number };
	/** The broker's largest resident set sampled (every 100 ms) from the attack's start, MiB. */
	brokerRssPeakMiB: number;
	/** CPU of the broker process (all threads) in the window, cores. */
	brokerCores: number | null;
	attackerCores: number | null;
	attacker?: AttackStats;
}

export interface AttackBenchReport {
	schema: "dadi-bench-broker-attack/1";
	date: string;
	quick: boolean;
	legitClients: number;
	/** Round trips a second each legitimate client starts (at most). */
	legitRate: number;
	machine: { nproc: number; cpu: string; node: string; kernel: string };
	loadAverage: { start: number[]; end: number[] };
	quiet: PhaseResult;
	attacks: PhaseResult[];
	targets: {
		attack: AttackName;
		p99Ratio: number;
		p99Met: boolean;
		refusedMet: boolean;
		rssMet: boolean;
	}[];
	sectionSeconds: number;
}

const ms = (x: number): string =>
	Number.isFinite(x) ? x.toFixed(x < 10 ? 2 : 1) : "—";
const f2 = (x: number | null): string =>
	x !== null && Number.isFinite(x) ? x.toFixed(2) : "—";

function attackerCell(a: AttackStats | undefined): string {
	if (!a) return "";
	const answers = Object.entries(a.answers)
		.sort((x, y) => y[1] - x[1])
		.slice(0, 4)
		.map(([k, n]) => `${n.toLocaleString("en-US")}× ${k}`)
		.join(", ");
	const held = a.maxHeld ? `, held ≤ ${a.maxHeld}` : "";
	const closed = a.closedByBroker
		? `, ${a.closedByBroker.toLocaleString("en-US")} closed by the broker`
		: "";
	return `${a.sent.toLocaleString("en-US")} sent${answers ? ` (${answers})` : ""}${held}${closed}`;
}

export function formatAttackHeader(r: AttackBenchReport): string {
	const lines = [
		`key broker under attack: the broker with its default limits (bench/broker-server.ts --defaults: rate limit 50/s per client, 10,000 sessions, 256 per client, 4,096 connections, 128 per client) in its own process, a fresh one per run; the attacker in another process; ${r.legitClients} legitimate guests in this process, each from its own address (127.0.1.1–${r.legitClients}), each starting at most ${r.legitRate} round trips a second (auth → attest with sample evidence → resource, keep-alive)`,
		...ATTACKS.map((a) => `  ${a.label}: ${a.what}`),
		`  ${r.machine.cpu}, ${r.machine.nproc} CPUs, node ${r.machine.node}, kernel ${r.machine.kernel}; load average ${r.loadAverage.start.map(f2).join(" ")} at the start, ${r.loadAverage.end.map(f2).join(" ")} at the end`,
	];
	return `${lines.join("\n")}\n`;
}

export function formatAttackTable(r: AttackBenchReport): string {
	const row = (p: PhaseResult): string[] => [
		p.attack === "none" ? "quiet (no attack)" : p.label,
		p.roundTrips.toLocaleString("en-US"),
		p.refused === 0
			? "0"
			: `${p.refused} (${Object.entries(p.refusals)
					.map(([k, n]) => `${n}× ${k}`)
					.join(", ")})`,
		ms(p.latencyMs.p50),
		ms(p.latencyMs.p99),
		p.attack === "none" ? "1" : f2(p.latencyMs.p99 / r.quiet.latencyMs.p99),
		p.brokerRssPeakMiB.toFixed(0),
		f2(p.brokerCores),
		f2(p.attackerCores),
	];
	return `${markdownTable(
		[
			"run",
			"round trips",
			"refused",
			"p50 ms",
			"p99 ms",
			"p99 / quiet",
			"broker RSS peak MiB",
			"broker CPU, cores",
			"attacker CPU, cores",
		],
		[row(r.quiet), ...r.attacks.map(row)],
		1,
	)}what the attackers did:\n${r.attacks
		.map((p) => `  ${p.label}: ${attackerCell(p.attacker)}`)
		.join("\n")}\n`;
}

export function formatAttackTargets(r: AttackBenchReport): string {
	const word = (m: boolean) => (m ? "MET" : "MISSED");
	return [
		`targets: p99 under attack <= ${ATTACK_TARGETS.maxP99Ratio} x quiet; no legitimate request refused; broker RSS < ${ATTACK_TARGETS.maxRssMiB} MiB`,
		...r.targets.map((t) => {
			const p = r.attacks.find((a) => a.attack === t.attack) as PhaseResult;
			return `  ${p.label}: p99 ${f2(t.p99Ratio)} x quiet ${word(t.p99Met)}; refused ${p.refused} ${word(t.refusedMet)}; RSS ${p.brokerRssPeakMiB.toFixed(0)} MiB ${word(t.rssMet)}`;
		}),
		"",
	].join("\n");
}

export function attackTargets(
	quiet: PhaseResult,
	attacks: PhaseResult[],
): AttackBenchReport["targets"] {
	return attacks.map((p) => {
		const ratio = p.latencyMs.p99 / quiet.latencyMs.p99;
		return {
			attack: p.attack as AttackName,
			p99Ratio: ratio,
			p99Met: ratio <= ATTACK_TARGETS.maxP99Ratio,
			refusedMet: p.refused <= ATTACK_TARGETS.maxRefused,
			rssMet: p.brokerRssPeakMiB < ATTACK_TARGETS.maxRssMiB,
		};
	});
}
