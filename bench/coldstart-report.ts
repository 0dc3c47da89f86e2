/**
 * The cold-start bench's report (issue 18): per link, workload and variant the median and spread
 * of the time to first output, bytes fetched, requests and peak memory; ratios against A
 * (ocicrypt) and E-opt (optimized eStargz); the issue's targets as MET / MISSED / UNKNOWN.
 */
import type { ColdImage } from "./coldstart-image.js";
import {
	type ColdRun,
	VARIANT_LABELS,
	VARIANTS,
	type Variant,
	type Workload,
} from "./coldstart-variants.js";

const MB = (b: number) => (b / 1e6).toFixed(1);

export interface Spread {
	median: number;
	min: number;
	max: number;
	q1: number;
	q3: number;
	n: number;
}

export interface Summary {
	link: string;
	workload: Workload;
	variant: Variant;
	firstOutput: Spread;
	bytesFetched: number;
	requests: number;
	peakMemBytes: number | null;
	/** B, C: median bytes the start read from the disk (loop device), see ColdRun.demandBytes. */
	demandBytes: number | null;
	vsA: number | null;
	vsEopt: number | null;
}

export interface Target {
	what: string;
	status: "MET" | "MISSED" | "UNKNOWN";
	detail: string;
}

export interface ColdstartReport {
	schema: "dadi-bench-coldstart/1";
	date: string;
	machine: {
		cpu: string;
		cores: number;
		memoryBytes: number;
		kernel: string;
		loadavgBefore: number[];
		loadavgAfter: number[];
	};
	image: Omit<ColdImage, "packages"> & { packages: Record<string, string> };
	links: { name: string; description: string }[];
	reps: number;
	workloads: Record<string, string>;
	bIncludes: string;
	skipped: Partial<Record<Variant, string>>;
	runs: ColdRun[];
	summary: Summary[];
	targets: Target[];
	notes: string[];
}

function quantile(sorted: number[], q: number): number {
	const pos = (sorted.length - 1) * q;
	const lo = Math.floor(pos);
	const hi = Math.ceil(pos);
	const a = sorted[lo] as number;
	const b = sorted[hi] as number;
	return a + (b - a) * (pos - lo);
}

export function spread(xs: number[]): Spread {
	const s = [...xs].sort((a, b) => a - b);
	return {
		median: quantile(s, 0.5),
		min: s[0] as number,
		max: s[s.length - 1] as number,
		q1: quantile(s, 0.25),
		q3: quantile(s, 0.75),
		n: s.length,
	};
}

export function summarise(runs: ColdRun[]): Summary[] {
	const out: Summary[] = [];
	const keys = new Set(runs.map((r) => `${r.link}\0${r.workload}`));
	for (const k of keys) {
		const [link, workload] = k.split("\0") as [string, Workload];
		const here = runs.filter((r) => r.link === link && r.workload === workload);
		const med = (v: Variant) => {
			const rs = here.filter((r) => r.variant === v);
			return rs.length
				? spread(rs.map((r) => r.firstOutputSeconds)).median
				: null;
		};
		const a = med("A");
		const e = med("E-opt");
		for (const variant of VARIANTS) {
			const rs = here.filter((r) => r.variant === variant);
			if (!rs.length) continue;
			const fo = spread(rs.map((r) => r.firstOutputSeconds));
			const demand = rs
				.map((r) => r.demandBytes)
				.filter((d): d is number => d !== undefined);
			const mems = rs
				.map((r) => r.peakMemBytes)
				.filter((m): m is number => m !== null);
			out.push({
				link,
				workload,
				variant,
				firstOutput: fo,
				bytesFetched: spread(rs.map((r) => r.bytesFetched)).median,
				requests: spread(rs.map((r) => r.requests)).median,
				peakMemBytes: mems.length ? spread(mems).median : null,
				demandBytes: demand.length ? spread(demand).median : null,
				vsA: a ? fo.median / a : null,
				vsEopt: e ? fo.median / e : null,
			});
		}
	}
	return out;
}

export function evaluateTargets(
	summary: Summary[],
	links: string[],
	workloads: Workload[],
	skipped: Partial<Record<Variant, string>>,
): Target[] {
	const t: Target[] = [];
	const get = (l: string, w: Workload, v: Variant) =>
		summary.find((s) => s.link === l && s.workload === w && s.variant === v);
	const ratioTarget = (v: Variant, l: string, w: Workload, max: number) => {
		const s = get(l, w, v);
		const what = `${v} ≤ ${max} × A, ${w}, ${l}`;
		if (!s || s.vsA === null)
			t.push({
				what,
				status: "UNKNOWN",
				detail: skipped[v] ?? (s ? "A did not run" : `${v} did not run`),
			});
		else
			t.push({
				what,
				status: s.vsA <= max ? "MET" : "MISSED",
				detail: `${s.vsA.toFixed(3)} (${s.firstOutput.median.toFixed(2)} s vs ${(s.firstOutput.median / s.vsA).toFixed(2)} s)`,
			});
	};
	for (const l of links)
		for (const w of workloads) {
			ratioTarget("C", l, w, l === "loopback" ? 0.15 : 0.1);
			ratioTarget("B", l, w, 0.3);
			const c = get(l, w, "C");
			const e = get(l, w, "E-opt");
			const what = `C no slower than E-opt, ${w}, ${l}`;
			if (!c || !e)
				t.push({
					what,
					status: "UNKNOWN",
					detail: [
						!c && (skipped.C ?? "C did not run"),
						!e && (skipped["E-opt"] ?? "E-opt did not run"),
					]
						.filter(Boolean)
						.join("; "),
				});
			else
				t.push({
					what,
					status:
						c.firstOutput.median <= e.firstOutput.median ? "MET" : "MISSED",
					detail: `${c.firstOutput.median.toFixed(2)} s vs ${e.firstOutput.median.toFixed(2)} s`,
				});
		}
	// dadi-guest reports what it fetched but not what the start read; the bench reads that from
	// the loop device's counters (the file system's demand, kernel read-ahead included).
	for (const l of links)
		for (const w of workloads)
			for (const v of ["B", "C"] as const) {
				const s = get(l, w, v);
				const what = `${v}: bytes fetched ≤ 1.5 × bytes the start reads, ${w}, ${l}`;
				if (!s?.demandBytes)
					t.push({
						what,
						status: "UNKNOWN",
						detail: s
							? "the loop device's read counter was not seen"
							: (skipped[v] ?? `${v} did not run`),
					});
				else {
					const x = s.bytesFetched / s.demandBytes;
					t.push({
						what,
						status: x <= 1.5 ? "MET" : "MISSED",
						detail: `${x.toFixed(2)} (${MB(s.bytesFetched)} MB from the registry, all of it: manifest, config, metadata, chunks; ${MB(s.demandBytes)} MB the start read from the disk)`,
					});
				}
			}
	return t;
}

export function formatMarkdown(r: ColdstartReport): string {
	const lines: string[] = [
		"",
		"## Cold start (issue 18): time to first output, nothing of the image local",
		`image: ${r.image.description}; ${r.image.layers.map((l) => `${l.what}: ${MB(l.gzipBytes)} MB gzip, ${MB(l.unpackedBytes)} MB unpacked`).join("; ")}`,
		`machine: ${r.machine.cpu}, ${r.machine.cores} cores, ${(r.machine.memoryBytes / 2 ** 30).toFixed(1)} GiB, kernel ${r.machine.kernel}; load average before ${r.machine.loadavgBefore.map((x) => x.toFixed(2)).join(" ")}, after ${r.machine.loadavgAfter.map((x) => x.toFixed(2)).join(" ")}`,
		`${r.reps} rep(s), variants alternating; B: ${r.bIncludes}`,
	];
	for (const l of r.links) {
		for (const w of Object.keys(r.workloads) as Workload[]) {
			const rows = r.summary.filter(
				(s) => s.link === l.name && s.workload === w,
			);
			if (!rows.length) continue;
			lines.push(
				"",
				`### ${l.description}, \`python3 -c '${r.workloads[w]}'\``,
				"",
				"| variant | median s | min–max s | × A | × E-opt | MB fetched | requests | MB read (disk) | peak MB |",
				"|---|---|---|---|---|---|---|---|---|",
				...rows.map(
					(s) =>
						`| ${VARIANT_LABELS[s.variant]} | ${s.firstOutput.median.toFixed(2)} | ${s.firstOutput.min.toFixed(2)}–${s.firstOutput.max.toFixed(2)} | ${s.vsA === null ? "–" : s.vsA.toFixed(2)} | ${s.vsEopt === null ? "–" : s.vsEopt.toFixed(2)} | ${MB(s.bytesFetched)} | ${s.requests} | ${s.demandBytes === null ? "–" : MB(s.demandBytes)} | ${s.peakMemBytes === null ? "n/a" : MB(s.peakMemBytes)} |`,
				),
			);
		}
	}
	const sk = Object.entries(r.skipped);
	if (sk.length) lines.push("", ...sk.map(([v, why]) => `${v} ${why}`));
	lines.push(
		"",
		"Targets:",
		...r.targets.map((t) => `- ${t.status}: ${t.what} — ${t.detail}`),
	);
	if (r.notes.length) lines.push("", ...r.notes.map((n) => `note: ${n}`));
	return lines.join("\n");
}
