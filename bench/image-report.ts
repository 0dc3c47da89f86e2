/**
 * The image benchmark's report: seal time against the ocicrypt copy, a phase breakdown of the
 * best dadi run, and sealed sizes per layer against the gzip layers of the source image.
 */

import type { CopyResult, PhaseTime, SealResult } from "./image-measure.js";
import type { OciTestImage } from "./image-oci.js";
import { markdownTable } from "./report.js";

export const IMAGE_TARGETS = {
	/** dadi seal wall time at most this many times the ocicrypt copy's. */
	maxSealToOcicrypt: 2,
	/** All sealed layer blobs at most this many times the source image's gzip layer blobs. */
	maxSealedToGzip: 1.2,
} as const;

export interface ImageBenchReport {
	schema: "dadi-bench-images/1";
	date: string;
	quick: boolean;
	reps: number;
	image: OciTestImage;
	tools: Record<string, string>;
	workDir: string;
	/** os.loadavg() when the section started and ended: other work on the machine skews times. */
	loadAverage: { start: number[]; end: number[] };
	/** `gzip -dc` of every source layer to /dev/null, one pass (also warms the page cache). */
	gunzipSeconds: number;
	ocicrypt: CopyResult;
	seal: SealResult;
	/** --flatten and erofs, one run each (none with --quick). */
	variants: SealResult[];
	ratios: {
		sealToOcicrypt: number;
		sealedToGzip: number;
		/** Sealed upper layer / its gzip layer: how much of the disk a small update moves. */
		upperToGzip: number;
		/** Chunks the upper layer stores / chunks the first layer stores. */
		upperChunksToBase: number;
	};
}

const fixed = (n: number, d: number): string =>
	Number.isFinite(n) ? n.toFixed(d) : "-";
const mb = (n: number): string => (n / 1e6).toFixed(1);

export function sealedTotal(r: SealResult): number {
	return r.layers.reduce((s, l) => s + l.storedBytes, 0);
}

export function ratiosOf(
	image: OciTestImage,
	seal: SealResult,
	ocicrypt: CopyResult,
): ImageBenchReport["ratios"] {
	const gzip = image.layers.reduce((s, l) => s + l.gzipBytes, 0);
	const upper = seal.layers[seal.layers.length - 1];
	const first = seal.layers[0];
	return {
		sealToOcicrypt: seal.best.seconds / ocicrypt.bestSeconds,
		sealedToGzip: sealedTotal(seal) / gzip,
		upperToGzip:
			upper === undefined || seal.layers.length < 2
				? Number.NaN
				: upper.storedBytes / upper.sourceBytes,
		upperChunksToBase:
			upper === undefined || first === undefined || seal.layers.length < 2
				? Number.NaN
				: upper.storedChunks / first.storedChunks,
	};
}

export function formatImageHeader(r: ImageBenchReport): string {
	const img = r.image;
	const gzip = img.layers.reduce((s, l) => s + l.gzipBytes, 0);
	return [
		`container image (${img.cached ? "cached" : "built in this run"}): ${img.description}`,
		`  ${img.dir}:${img.tag}: gzip layers ${img.layers.map((l) => l.gzipBytes).join(" + ")} = ${gzip} bytes; tar ${img.layers.map((l) => mb(l.tarBytes)).join(" + ")} MB`,
		`  tools: ${Object.entries(r.tools)
			.map(([k, v]) => `${k} ${v}`)
			.join(", ")}`,
		`  scratch: ${r.workDir}`,
		`  load average (1, 5, 15 min) at start ${r.loadAverage.start.map((x) => fixed(x, 2)).join(" ")}, at end ${r.loadAverage.end.map((x) => fixed(x, 2)).join(" ")}`,
		`gzip -dc of all source layers (one pass, also warms the page cache): ${fixed(r.gunzipSeconds, 2)} s`,
		"",
	].join("\n");
}

export function formatTimes(r: ImageBenchReport): string {
	const o = r.ocicrypt;
	const rows: string[][] = [
		[
			`dadi-seal seal, defaults (${r.seal.variant.name}, ${r.seal.chunkSize >> 10} KiB chunks, zstd): ${r.seal.layers.length} layers`,
			fixed(r.seal.best.seconds, 2),
			r.seal.runs.map((x) => fixed(x.seconds, 2)).join(", "),
			fixed(r.seal.best.cliSeconds, 2),
			fixed(r.seal.best.seconds / o.bestSeconds, 2),
		],
		[
			"skopeo copy --encryption-key jwe:pub.pem (ocicrypt)",
			fixed(o.bestSeconds, 2),
			o.runs.map((x) => fixed(x, 2)).join(", "),
			"",
			"1.00",
		],
		...r.variants.map((v) => [
			`dadi-seal seal, ${v.variant.name}: ${v.layers.length} layer${v.layers.length === 1 ? "" : "s"}`,
			fixed(v.best.seconds, 2),
			v.runs.map((x) => fixed(x.seconds, 2)).join(", "),
			fixed(v.best.cliSeconds, 2),
			fixed(v.best.seconds / o.bestSeconds, 2),
		]),
	];
	return `seal time: wall clock of the whole command, best of the runs listed\n\n${markdownTable(
		["command", "best s", "runs s", "CLI's own s", "/ ocicrypt"],
		rows,
		1,
	)}`;
}

const PHASE_ROWS: { key: string; label: string }[] = [
	{ key: "start-up", label: "start-up: node, modules, open the source" },
	{ key: "census", label: "census: gunzip, digests, tar scan of all layers" },
	{ key: "apply", label: "apply the layer to the staging directory" },
	{ key: "mke2fs", label: "mke2fs -d (build ext4 from staging)" },
	{
		key: "debugfs",
		label:
			"debugfs (first layer: inode times; upper layers: the in-place update)",
	},
	{ key: "mkfs.erofs", label: "mkfs.erofs (build erofs from staging)" },
	{ key: "other", label: "file-system build, rest (walks of staging)" },
	{ key: "seal", label: "seal: read disk, diff, zstd, AES-GCM, write" },
	{ key: "finish", label: "finish: config, manifest, clean-up, exit" },
];

function phaseKey(p: PhaseTime): { key: string; layer: number | null } {
	const m = /^layer (\d+): (.*)$/.exec(p.name);
	const layer = m ? Number(m[1]) : null;
	const what = m ? (m[2] as string) : p.name;
	if (p.kind === "fs-walk") return { key: "other", layer };
	if (p.kind === "mkfs") return { key: what, layer };
	return { key: p.kind, layer };
}

/** The best run's phases: one row per kind of work, one column per layer. */
export function formatPhases(s: SealResult): string {
	const layers = s.layers.length === 1 ? 0 : s.layers.length;
	const nLayers = Math.max(
		layers,
		...s.best.phases.map((p) => phaseKey(p).layer ?? 0),
	);
	const cells = new Map<string, number>();
	for (const p of s.best.phases) {
		const { key, layer } = phaseKey(p);
		const k = `${key}/${layer ?? "all"}`;
		cells.set(k, (cells.get(k) ?? 0) + p.seconds);
	}
	const total = s.best.seconds;
	const rows: string[][] = [];
	for (const row of PHASE_ROWS) {
		let sum = 0;
		const perLayer: string[] = [];
		let any = false;
		for (let l = 1; l <= nLayers; l++) {
			const v = cells.get(`${row.key}/${l}`);
			if (v !== undefined) {
				any = true;
				sum += v;
			}
			perLayer.push(v === undefined ? "" : fixed(v, 2));
		}
		const all = cells.get(`${row.key}/all`);
		if (all !== undefined) {
			any = true;
			sum += all;
		}
		if (!any) continue;
		rows.push([
			row.label,
			...perLayer,
			fixed(sum, 2),
			`${fixed((100 * sum) / total, 0)}%`,
		]);
	}
	const accounted = s.best.phases.reduce((a, p) => a + p.seconds, 0);
	rows.push([
		"total (wall clock)",
		...Array.from({ length: nLayers }, () => ""),
		fixed(total, 2),
		`${fixed((100 * accounted) / total, 0)}% in rows`,
	]);
	const head = [
		`phase, ${s.variant.name}, best run`,
		...Array.from({ length: nLayers }, (_, i) => `layer ${i + 1} s`),
		"total s",
		"share",
	];
	return `${markdownTable(head, rows, 1)}`;
}

export function formatSizes(r: ImageBenchReport): string {
	const rows: string[][] = [];
	const gzip = r.image.layers.reduce((s, l) => s + l.gzipBytes, 0);
	const add = (s: SealResult): void => {
		const chunks = Math.ceil(s.virtualSize / s.chunkSize);
		const n = s.layers.length;
		for (const [i, l] of s.layers.entries())
			rows.push([
				s.variant.name,
				n === 1
					? "1 (flattened)"
					: i === n - 1
						? `${i + 1} (upper)`
						: String(i + 1),
				String(l.sourceBytes),
				String(l.storedBytes),
				fixed(l.storedBytes / l.sourceBytes, 3),
				`${l.storedChunks} of ${chunks}`,
			]);
		if (n > 1)
			rows.push([
				s.variant.name,
				"all",
				String(gzip),
				String(sealedTotal(s)),
				fixed(sealedTotal(s) / gzip, 3),
				"",
			]);
	};
	add(r.seal);
	for (const v of r.variants) add(v);
	const enc = r.ocicrypt.layerBytes;
	for (const [i, l] of r.image.layers.entries())
		rows.push([
			"ocicrypt (skopeo)",
			String(i + 1),
			String(l.gzipBytes),
			String(enc[i] ?? ""),
			enc[i] === undefined ? "" : fixed((enc[i] as number) / l.gzipBytes, 3),
			"",
		]);
	return `sizes: stored blob bytes of each sealed layer against the gzip layer blob(s) it covers\n\n${markdownTable(
		[
			"variant",
			"layer",
			"OCI gzip bytes",
			"sealed bytes",
			"sealed / gzip",
			"stored chunks of top disk",
		],
		rows,
		2,
	)}`;
}

export function formatImageTargets(r: ImageBenchReport): string {
	const t = IMAGE_TARGETS;
	const x = r.ratios;
	const verdict = (ok: boolean): string => (ok ? "MET" : "MISSED");
	const lines = [
		`targets: dadi seal time <= ${t.maxSealToOcicrypt}x the ocicrypt copy; all sealed blobs <= ${t.maxSealedToGzip}x the gzip OCI layers`,
		`  defaults (${r.seal.variant.name}, ${r.seal.chunkSize >> 10} KiB, zstd): seal/ocicrypt ${fixed(x.sealToOcicrypt, 2)} ${verdict(x.sealToOcicrypt <= t.maxSealToOcicrypt)}; sealed/gzip ${fixed(x.sealedToGzip, 3)} ${verdict(x.sealedToGzip <= t.maxSealedToGzip)}`,
		`  allocation stability: upper layer sealed/gzip ${fixed(x.upperToGzip, 2)}; it stores ${fixed(100 * x.upperChunksToBase, 0)}% as many chunks as layer 1`,
	];
	for (const v of r.variants) {
		const gzip = r.image.layers.reduce((s, l) => s + l.gzipBytes, 0);
		const total = sealedTotal(v) / gzip;
		const upper = v.layers[v.layers.length - 1];
		lines.push(
			`  ${v.variant.name}: seal/ocicrypt ${fixed(v.best.seconds / r.ocicrypt.bestSeconds, 2)}; sealed/gzip ${fixed(total, 3)} ${verdict(total <= t.maxSealedToGzip)}${v.layers.length > 1 && upper ? `; upper layer sealed/gzip ${fixed(upper.storedBytes / upper.sourceBytes, 2)}` : ""}`,
		);
	}
	const checked = [r.seal, ...r.variants].filter(
		(s) => s.verified !== undefined,
	);
	if (checked.length > 0)
		lines.push(
			`  dadi-seal verify of the sealed output: ${checked.map((s) => `${s.variant.name} ${s.verified ? "ok" : "FAILED"}`).join(", ")}`,
		);
	return `${lines.join("\n")}\n`;
}
