/**
 * `npm run bench:coldstart` (issue 18's headline benchmark): the time from nothing of the image
 * on the host to the first output of `python3 -c 'print(1)'` and `python3 -c 'import numpy;
 * print(1)'` in a real Debian + numpy image (bench/coldstart-image.ts), for each way of getting
 * an encrypted (or plain) image started (bench/coldstart-variants.ts), on an unshaped and a
 * 200 Mbit/s link to the registry (bench/coldstart-net.ts). Variants alternate within each
 * repetition; page caches are dropped before each run. See docs/benchmarks.md.
 *
 *   node dist/bench/coldstart.js [--reps N] [--quick] [--json] [--json-file FILE] [--charts DIR]
 *                                [--variants A,B,C,D,D2,E-convert,E-opt] [--links loopback,200mbit]
 *                                [--workloads print,numpy]
 */
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { cpus, loadavg, release, totalmem } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { prepareColdImage } from "./coldstart-image.js";
import { netMissing, startShapedRegistry } from "./coldstart-net.js";
import {
	type ColdstartReport,
	evaluateTargets,
	formatMarkdown,
	summarise,
} from "./coldstart-report.js";
import {
	type ColdRun,
	prepareVariants,
	VARIANT_LABELS,
	VARIANTS,
	type Variant,
	WORKLOADS,
	type Workload,
} from "./coldstart-variants.js";
import { groupedBarChart } from "./svg-chart.js";

const LINKS = {
	loopback: {
		mbit: null,
		description:
			"loopback (registry in a network namespace over an unshaped veth pair)",
	},
	"200mbit": {
		mbit: 200,
		description: "200 Mbit/s (tc tbf on the registry's end of the veth pair)",
	},
} as const;
type Link = keyof typeof LINKS;

export interface ColdstartOptions {
	repo: string;
	cacheDir: string;
	workDir: string;
	reps: number;
	variants: Variant[];
	links: Link[];
	workloads: Workload[];
	charts?: string;
	log: (line: string) => void;
	print: (line: string) => void;
}

export function coldstartMissing(): string | null {
	if (process.getuid?.() !== 0)
		return "needs root (chroot, mounts, netns, drop_caches)";
	for (const [cmd, pkg] of [
		["skopeo", "skopeo"],
		["umoci", "umoci"],
		["openssl", "openssl"],
		["/usr/bin/time", "time"],
	] as const)
		if (spawnSync("sh", ["-c", `command -v ${cmd}`]).status !== 0)
			return `${cmd} not found (Debian: apt-get install ${pkg})`;
	return netMissing();
}

function chart(r: ColdstartReport, link: Link): string {
	const l = LINKS[link];
	return groupedBarChart({
		title: `Cold start to first output — ${link === "loopback" ? "loopback" : "200 Mbit/s"}`,
		subtitle: `Debian bookworm minbase + python3 + numpy, ${(r.image.layers.reduce((a, l) => a + l.gzipBytes, 0) / 1e6).toFixed(0)} MB gzip; median of ${r.reps} (whiskers min–max); ${r.date.slice(0, 10)}, load ${r.machine.loadavgBefore[0]?.toFixed(1)}`,
		axisLabel:
			"seconds from start to the workload's first output (lower is better)",
		groups: r.workloads
			? (Object.keys(r.workloads) as Workload[]).map((w) => ({
					title: `python3 -c '${WORKLOADS[w]}'`,
					bars: VARIANTS.filter(
						(v) =>
							r.skipped[v] !== undefined ||
							r.summary.some(
								(s) => s.link === link && s.workload === w && s.variant === v,
							),
					).map((v) => {
						const s = r.summary.find(
							(x) => x.link === link && x.workload === w && x.variant === v,
						);
						return s
							? {
									label: VARIANT_LABELS[v],
									median: s.firstOutput.median,
									min: s.firstOutput.min,
									max: s.firstOutput.max,
								}
							: {
									label: VARIANT_LABELS[v],
									median: 0,
									min: 0,
									max: 0,
									note: (r.skipped[v] ?? "not run")
										.split(" — ")[0]
										?.slice(0, 70),
								};
					}),
				}))
			: [],
	}).replace("</svg>", `<!-- ${l.description} -->\n</svg>`);
}

export async function runColdstartBench(
	o: ColdstartOptions,
): Promise<ColdstartReport> {
	const missing = coldstartMissing();
	if (missing) throw new Error(missing);
	const loadavgBefore = loadavg();
	const work = await mkdtemp(join(o.workDir, "dadi-coldstart-"));
	const image = await prepareColdImage({
		cacheDir: o.cacheDir,
		workDir: work,
		log: o.log,
	});
	o.log(`image: ${image.description}${image.cached ? " (cached)" : ""}`);
	const reg = await startShapedRegistry(join(work, "registry"), o.log);
	const runs: ColdRun[] = [];
	let prepared: Awaited<ReturnType<typeof prepareVariants>> | undefined;
	// Ctrl-C / SIGTERM: the step under way ends (its tools get the terminal's SIGINT too), then the
	// bench stops and the finally blocks take down what it started. A second signal kills at once.
	let interrupted: NodeJS.Signals | undefined;
	const onSignal = (sig: NodeJS.Signals) => {
		interrupted = sig;
		o.log(`${sig}: stopping after the current step and cleaning up`);
	};
	const checkpoint = () => {
		if (interrupted) throw new Error(`interrupted (${interrupted})`);
	};
	process.once("SIGINT", onSignal);
	process.once("SIGTERM", onSignal);
	try {
		prepared = await prepareVariants({
			repo: o.repo,
			cacheDir: o.cacheDir,
			work: join(work, "variants"),
			image,
			reg,
			workloads: o.workloads,
			want: new Set(o.variants),
			log: o.log,
			checkpoint,
		});
		const p = prepared;
		checkpoint();
		const active = o.variants.filter((v) => p.skipped[v] === undefined);
		for (const link of o.links) {
			reg.shape(LINKS[link].mbit);
			for (let rep = 0; rep < o.reps; rep++)
				for (const w of o.workloads)
					for (let i = 0; i < active.length; i++) {
						// Round robin, the starting variant rotating with the repetition.
						const v = active[(i + rep) % active.length] as Variant;
						checkpoint();
						try {
							const r = await p.runOne(v, w, link, rep);
							runs.push(r);
							o.log(
								`${link} ${w} ${v} #${rep + 1}: first output ${r.firstOutputSeconds.toFixed(2)} s (exit ${r.totalSeconds.toFixed(2)} s), ${(r.bytesFetched / 1e6).toFixed(1)} MB in ${r.requests} requests`,
							);
						} catch (e) {
							o.log(
								`${link} ${w} ${v} #${rep + 1} FAILED: ${(e as Error).message}`,
							);
							p.skipped[v] ??= `failed: ${(e as Error).message.slice(0, 300)}`;
						}
					}
		}
		reg.shape(null);
		const summary = summarise(runs);
		const report: ColdstartReport = {
			schema: "dadi-bench-coldstart/1",
			date: new Date().toISOString(),
			machine: {
				cpu: cpus()[0]?.model ?? "unknown",
				cores: cpus().length,
				memoryBytes: totalmem(),
				kernel: release(),
				loadavgBefore,
				loadavgAfter: loadavg(),
			},
			image: { ...image },
			links: o.links.map((l) => ({
				name: l,
				description: LINKS[l].description,
			})),
			reps: o.reps,
			workloads: Object.fromEntries(o.workloads.map((w) => [w, WORKLOADS[w]])),
			bIncludes: p.bIncludes,
			skipped: p.skipped,
			runs,
			summary,
			targets: evaluateTargets(summary, o.links, o.workloads, p.skipped),
			notes: [
				"time to first output: from spawning the variant's first command to the first byte on its stdout; containerd and the stargz snapshotter (D2, E) are started before the clock, fresh for each run",
				"bytes and requests: the registry's access log (response bodies), start to exit; the key broker (B, C) is on the host's loopback and not counted",
				"peak memory: see each run's peakMemHow",
			],
		};
		o.print(formatMarkdown(report));
		if (o.charts) {
			await mkdir(o.charts, { recursive: true });
			for (const link of o.links) {
				const file = join(o.charts, `coldstart-${link}.svg`);
				await writeFile(file, chart(report, link));
				o.log(`chart: ${file}`);
			}
		}
		return report;
	} finally {
		process.off("SIGINT", onSignal);
		process.off("SIGTERM", onSignal);
		await prepared?.close();
		await reg.stop();
		await rm(work, { recursive: true, force: true });
	}
}

async function main(): Promise<void> {
	const { values } = parseArgs({
		options: {
			reps: { type: "string", default: "5" },
			quick: { type: "boolean", default: false },
			json: { type: "boolean", default: false },
			"json-file": { type: "string" },
			charts: { type: "string" },
			variants: { type: "string" },
			links: { type: "string" },
			workloads: { type: "string" },
			help: { type: "boolean", short: "h", default: false },
		},
	});
	if (values.help) {
		process.stdout.write(
			"usage: node dist/bench/coldstart.js [--reps N (5)] [--quick: print workload, loopback, 1 rep]\n" +
				"  [--json] [--json-file FILE] [--charts DIR] [--variants A,B,C,D,D2,E-convert,E-opt]\n" +
				"  [--links loopback,200mbit] [--workloads print,numpy]\n",
		);
		return;
	}
	const list = <T extends string>(
		s: string | undefined,
		all: readonly T[],
		def: T[],
	): T[] => {
		if (!s) return def;
		const xs = s.split(",") as T[];
		for (const x of xs)
			if (!all.includes(x))
				throw new Error(`unknown: ${x} (expected ${all.join(",")})`);
		return xs;
	};
	const quick = values.quick ?? false;
	const reps = Number(values.reps);
	if (!Number.isInteger(reps) || reps < 1)
		throw new Error("--reps: a positive integer");
	const repo = fileURLToPath(new URL("../..", import.meta.url));
	const log = (l: string) => process.stderr.write(`${l}\n`);
	const report = await runColdstartBench({
		repo,
		cacheDir: process.env.DADI_BENCH_CACHE ?? join(repo, ".bench-cache"),
		workDir: process.env.TMPDIR ?? "/tmp",
		reps: quick && !process.argv.includes("--reps") ? 1 : reps,
		variants: list(values.variants, VARIANTS, [...VARIANTS]),
		links: list(
			values.links,
			Object.keys(LINKS) as Link[],
			quick ? ["loopback"] : ["loopback", "200mbit"],
		),
		workloads: list(
			values.workloads,
			Object.keys(WORKLOADS) as Workload[],
			quick ? ["print"] : ["print", "numpy"],
		),
		charts: values.charts,
		log,
		print: (l) => (values.json ? log(l) : process.stdout.write(`${l}\n`)),
	});
	const json = `${JSON.stringify(report, null, 2)}\n`;
	if (values["json-file"]) await writeFile(values["json-file"], json);
	if (values.json) process.stdout.write(json);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1])
	main().catch((e) => {
		process.stderr.write(`coldstart: ${(e as Error).stack ?? e}\n`);
		process.exitCode = 1;
	});
