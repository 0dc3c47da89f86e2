/**
 * Turning measurements into the report: ratios against the baselines of the same run, a Markdown
 * table (readable in a terminal, pasteable into docs/benchmarks.md) and a JSON document.
 */
import type { AesLimit, GzipResult, Timing } from "./baseline.js";
import { mibPerSecond } from "./baseline.js";
import type { TestImage } from "./image.js";
import type { ConfigResult } from "./measure.js";

/** What the issue asks of the default configuration. */
export const TARGETS = {
	/** Stored size with compression at most this many times gzip -6 of the image. */
	maxStoredToGzip: 1.1,
	/** Export throughput at least this share of the AES-256-GCM decrypt limit. */
	minExportToAes: 0.5,
	defaultChunkSize: 64 << 10,
	defaultCompression: "zstd",
} as const;

export interface Machine {
	nproc: number;
	cpu: string;
	node: string;
	openssl: string;
	platform: string;
}

export interface Row {
	compression: string;
	chunkSize: number;
	sealMiBps: number;
	/** Against the one-call AES-GCM limit (the issue's baseline). */
	sealToAes: number;
	/** Against AES-GCM streamed in 64 KiB update() calls (no large buffer to fault in). */
	sealToStream: number;
	/** Against `openssl speed` AES-256-GCM (the CPU's AES ceiling); null without openssl. */
	sealToOpenssl: number | null;
	exportMiBps: number;
	exportToAes: number;
	exportToStream: number;
	exportToOpenssl: number | null;
	layerBytes: number;
	storedToGzip: number | null;
	storedChunks: number;
	extents: number;
	seal: Timing;
	export: Timing;
}

export interface BenchReport {
	schema: "dadi-bench/1";
	date: string;
	quick: boolean;
	machine: Machine;
	image: TestImage & { sha256: string };
	workDir: string;
	limits: {
		aesGcmEncrypt: Timing & { MiBps: number };
		aesGcmDecrypt: Timing & { MiBps: number };
		aesGcmStreamEncrypt: Timing & { MiBps: number };
		aesGcmStreamDecrypt: Timing & { MiBps: number };
		firstTouchWrite: Timing & { MiBps: number };
		opensslSpeed: { encryptMiBps: number; decryptMiBps: number } | null;
		perChunkAesEncrypt: { chunkSize: number; MiBps: number; timing: Timing }[];
		gzip6: (GzipResult & { MiBps: number }) | null;
	};
	rows: Row[];
}

export function toRow(
	r: ConfigResult,
	aes: AesLimit,
	gzip: GzipResult | null,
	openssl: BenchReport["limits"]["opensslSpeed"],
): Row {
	const sealMiBps = mibPerSecond(r.seal);
	const exportMiBps = mibPerSecond(r.export);
	const ratio = (n: number, d: number | undefined): number | null =>
		d === undefined ? null : n / d;
	return {
		compression: r.compression,
		chunkSize: r.chunkSize,
		sealMiBps,
		sealToAes: sealMiBps / mibPerSecond(aes.encrypt),
		sealToStream: sealMiBps / mibPerSecond(aes.streamEncrypt),
		sealToOpenssl: ratio(sealMiBps, openssl?.encryptMiBps),
		exportMiBps,
		exportToAes: exportMiBps / mibPerSecond(aes.decrypt),
		exportToStream: exportMiBps / mibPerSecond(aes.streamDecrypt),
		exportToOpenssl: ratio(exportMiBps, openssl?.decryptMiBps),
		layerBytes: r.layerBytes,
		storedToGzip: gzip === null ? null : r.layerBytes / gzip.bytes,
		storedChunks: r.storedChunks,
		extents: r.extents,
		seal: r.seal,
		export: r.export,
	};
}

export function formatChunk(n: number): string {
	return n >= 1 << 20 ? `${n >> 20} MiB` : `${n >> 10} KiB`;
}

const mib = (n: number): string => (n / 2 ** 20).toFixed(1);
const fixed = (n: number, d: number): string => n.toFixed(d);
const opt = (n: number | null): string => (n === null ? "-" : fixed(n, 3));
const speed = (t: Timing & { MiBps: number }): string =>
	`${fixed(t.MiBps, 0)} MiB/s (median ${fixed(t.bytes / 2 ** 20 / t.medianSeconds, 0)})`;

/** The header section: image, machine and the limits every ratio is computed against. */
export function formatLimits(rep: BenchReport): string {
	const l = rep.limits;
	const lines = [
		`machine: ${rep.machine.cpu}, ${rep.machine.nproc} CPUs, node ${rep.machine.node}, OpenSSL ${rep.machine.openssl}`,
		`image:   ${mib(rep.image.size)} MiB, ${rep.image.description}${rep.image.cached ? " (cached)" : ""}`,
		...(rep.image.note === undefined ? [] : [`NOTE:    ${rep.image.note}`]),
		`work:    ${rep.workDir}`,
		"",
		`AES-256-GCM limit, node:crypto, one cipher call over the whole image in memory (best of ${l.aesGcmEncrypt.reps}):`,
		`  encrypt ${speed(l.aesGcmEncrypt)}, decrypt ${speed(l.aesGcmDecrypt)}`,
		`AES-256-GCM, one cipher object, the image streamed in 64 KiB update() calls:`,
		`  encrypt ${speed(l.aesGcmStreamEncrypt)}, decrypt ${speed(l.aesGcmStreamDecrypt)}`,
		`writing into freshly allocated memory (what the one-call output buffer costs): ${speed(l.firstTouchWrite)}`,
		l.opensslSpeed === null
			? "openssl speed: unavailable; the OpenSSL columns are left blank"
			: `openssl speed -evp aes-256-gcm, 64 KiB buffers (AES ceiling of this CPU): encrypt ${fixed(l.opensslSpeed.encryptMiBps, 0)} MiB/s, decrypt ${fixed(l.opensslSpeed.decryptMiBps, 0)} MiB/s`,
		`AES-256-GCM, one cipher object per chunk, all chunks, no I/O: ${l.perChunkAesEncrypt
			.map((p) => `${formatChunk(p.chunkSize)} ${fixed(p.MiBps, 0)}`)
			.join(", ")} MiB/s`,
		l.gzip6 === null
			? "gzip -6: unavailable (gzip did not run); stored/gzip left blank"
			: `gzip -6 of the image: ${l.gzip6.bytes} bytes (${mib(l.gzip6.bytes)} MiB, ${fixed(l.gzip6.bytes / rep.image.size, 3)} of the image), ${fixed(l.gzip6.MiBps, 0)} MiB/s`,
	];
	return `${lines.join("\n")}\n`;
}

/** The main table, one row per compression x chunk size. */
export function formatTable(rows: Row[]): string {
	const head = [
		"compression",
		"chunk",
		"seal MiB/s",
		"seal / AES enc",
		"seal / OpenSSL",
		"export MiB/s",
		"export / AES dec",
		"export / OpenSSL",
		"stored bytes",
		"stored / gzip",
	];
	const body = rows.map((r) => [
		r.compression,
		formatChunk(r.chunkSize),
		fixed(r.sealMiBps, 0),
		fixed(r.sealToAes, 3),
		opt(r.sealToOpenssl),
		fixed(r.exportMiBps, 0),
		fixed(r.exportToAes, 3),
		opt(r.exportToOpenssl),
		String(r.layerBytes),
		opt(r.storedToGzip),
	]);
	const widths = head.map((h, i) =>
		Math.max(h.length, ...body.map((b) => (b[i] as string).length)),
	);
	const line = (cells: string[]): string =>
		`| ${cells.map((c, i) => (i < 2 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number))).join(" | ")} |`;
	const rule = `|${widths.map((w, i) => (i < 2 ? `-${"-".repeat(w)}-` : `-${"-".repeat(w)}:`)).join("|")}|`;
	return `${[line(head), rule, ...body.map(line)].join("\n")}\n`;
}

/** The targets, checked on the default configuration, and which configurations meet both. */
export function formatTargets(rows: Row[]): string {
	const t = TARGETS;
	const meets = (r: Row): boolean =>
		r.storedToGzip !== null &&
		r.storedToGzip <= t.maxStoredToGzip &&
		r.exportToAes >= t.minExportToAes;
	const def = rows.find(
		(r) =>
			r.chunkSize === t.defaultChunkSize &&
			r.compression === t.defaultCompression,
	);
	const out = [
		`targets: stored <= ${t.maxStoredToGzip}x gzip -6 (with compression); export >= ${t.minExportToAes}x the AES-GCM decrypt limit at ${formatChunk(t.defaultChunkSize)}`,
	];
	if (def === undefined)
		out.push(
			`  default (${t.defaultCompression}, ${formatChunk(t.defaultChunkSize)}) not measured in this run`,
		);
	else {
		const size =
			def.storedToGzip === null
				? "stored/gzip unknown"
				: `stored/gzip ${fixed(def.storedToGzip, 3)} ${def.storedToGzip <= t.maxStoredToGzip ? "MET" : "MISSED"}`;
		const exp = `export/AES ${fixed(def.exportToAes, 3)} ${def.exportToAes >= t.minExportToAes ? "MET" : "MISSED"}; export/OpenSSL ${opt(def.exportToOpenssl)}`;
		out.push(
			`  default (${t.defaultCompression}, ${formatChunk(t.defaultChunkSize)}): ${size}; ${exp}`,
		);
	}
	const ok = rows.filter(meets);
	out.push(
		`  configurations meeting both: ${ok.length === 0 ? "none" : ok.map((r) => `${r.compression}/${formatChunk(r.chunkSize)}`).join(", ")}`,
	);
	return `${out.join("\n")}\n`;
}

/** A markdown table; the first `leftColumns` columns left-aligned, the rest right-aligned. */
export function markdownTable(
	head: string[],
	rows: string[][],
	leftColumns: number,
): string {
	const widths = head.map((h, i) =>
		Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)),
	);
	const line = (cells: string[]): string =>
		`| ${cells
			.map((c, i) =>
				i < leftColumns
					? c.padEnd(widths[i] as number)
					: c.padStart(widths[i] as number),
			)
			.join(" | ")} |`;
	const rule = `|${widths
		.map((w, i) =>
			i < leftColumns ? `-${"-".repeat(w)}-` : `-${"-".repeat(w)}:`,
		)
		.join("|")}|`;
	return `${[line(head), rule, ...rows.map(line)].join("\n")}\n`;
}
