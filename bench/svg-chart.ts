/**
 * A small SVG chart generator for the benches: grouped horizontal bars (one group per category,
 * one bar per series) with the median as the bar and the spread (min–max) as a whisker, a labelled
 * linear value axis and a legend. Plain SVG 1.1, no scripts, no external resources.
 */

export interface BarDatum {
	/** The bar's label (inside its group). */
	label: string;
	median: number;
	min: number;
	max: number;
	/** A note printed after the bar instead of a value (e.g. "skipped"). */
	note?: string;
}

export interface BarGroup {
	title: string;
	bars: BarDatum[];
}

export interface ChartOptions {
	title: string;
	subtitle?: string;
	axisLabel: string;
	groups: BarGroup[];
	width?: number;
}

const PALETTE = [
	"#4e79a7",
	"#f28e2b",
	"#e15759",
	"#76b7b2",
	"#59a14f",
	"#edc948",
	"#b07aa1",
	"#9c755f",
];

export function escapeXml(s: string): string {
	return s
		.replace(/&/g, "&amp;")
		.replace(/</g, "&lt;")
		.replace(/>/g, "&gt;")
		.replace(/"/g, "&quot;");
}

/** A "nice" axis step for about `ticks` intervals up to `max`. */
function niceStep(max: number, ticks: number): number {
	const raw = max / ticks;
	const p = 10 ** Math.floor(Math.log10(raw));
	for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
	return 10 * p;
}

export function groupedBarChart(o: ChartOptions): string {
	const width = o.width ?? 860;
	const labelW = 300;
	const right = 90;
	const plotW = width - labelW - right;
	const barH = 16;
	const barGap = 4;
	const groupGap = 18;
	const top = o.subtitle ? 64 : 48;
	const labels = [
		...new Set(o.groups.flatMap((g) => g.bars.map((b) => b.label))),
	];
	const colour = (label: string) =>
		PALETTE[labels.indexOf(label) % PALETTE.length] as string;
	const values = o.groups.flatMap((g) =>
		g.bars.filter((b) => b.note === undefined).map((b) => b.max),
	);
	const vmax = Math.max(1e-9, ...values);
	const step = niceStep(vmax, 6);
	const axisMax = Math.ceil(vmax / step) * step;
	const x = (v: number) => labelW + (v / axisMax) * plotW;
	const out: string[] = [];
	let y = top;
	for (const g of o.groups) {
		out.push(
			`<text x="10" y="${y + 12}" font-weight="bold" font-size="13">${escapeXml(g.title)}</text>`,
		);
		y += 20;
		for (const b of g.bars) {
			const cy = y + barH / 2;
			out.push(
				`<text x="${labelW - 8}" y="${cy + 4}" text-anchor="end" font-size="12">${escapeXml(b.label)}</text>`,
			);
			if (b.note !== undefined) {
				out.push(
					`<text x="${labelW + 4}" y="${cy + 4}" font-size="11" fill="#777" font-style="italic">${escapeXml(b.note)}</text>`,
				);
			} else {
				const w = Math.max(1, x(b.median) - labelW);
				out.push(
					`<rect x="${labelW}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${colour(b.label)}"><title>${escapeXml(`${b.label}: median ${b.median.toFixed(2)} s (min ${b.min.toFixed(2)}, max ${b.max.toFixed(2)})`)}</title></rect>`,
					`<line x1="${x(b.min).toFixed(1)}" x2="${x(b.max).toFixed(1)}" y1="${cy}" y2="${cy}" stroke="#222" stroke-width="1.5"/>`,
					`<line x1="${x(b.min).toFixed(1)}" x2="${x(b.min).toFixed(1)}" y1="${cy - 5}" y2="${cy + 5}" stroke="#222" stroke-width="1.5"/>`,
					`<line x1="${x(b.max).toFixed(1)}" x2="${x(b.max).toFixed(1)}" y1="${cy - 5}" y2="${cy + 5}" stroke="#222" stroke-width="1.5"/>`,
					`<text x="${(x(b.max) + 6).toFixed(1)}" y="${cy + 4}" font-size="11">${b.median.toFixed(2)} s</text>`,
				);
			}
			y += barH + barGap;
		}
		y += groupGap;
	}
	const plotBottom = y - groupGap + 4;
	const axis: string[] = [
		`<line x1="${labelW}" x2="${labelW}" y1="${top - 4}" y2="${plotBottom}" stroke="#444"/>`,
		`<line x1="${labelW}" x2="${labelW + plotW}" y1="${plotBottom}" y2="${plotBottom}" stroke="#444"/>`,
	];
	for (let v = 0; v <= axisMax + step / 1e6; v += step) {
		const xv = x(v).toFixed(1);
		axis.push(
			`<line x1="${xv}" x2="${xv}" y1="${top - 4}" y2="${plotBottom}" stroke="#ddd"/>`,
			`<text x="${xv}" y="${plotBottom + 16}" text-anchor="middle" font-size="11">${Number(v.toPrecision(6))}</text>`,
		);
	}
	axis.push(
		`<text x="${labelW + plotW / 2}" y="${plotBottom + 36}" text-anchor="middle" font-size="12">${escapeXml(o.axisLabel)}</text>`,
	);
	const height = plotBottom + 50;
	return [
		'<?xml version="1.0" encoding="UTF-8"?>',
		`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif">`,
		`<rect width="${width}" height="${height}" fill="#fff"/>`,
		`<text x="10" y="22" font-size="16" font-weight="bold">${escapeXml(o.title)}</text>`,
		...(o.subtitle
			? [
					`<text x="10" y="42" font-size="12" fill="#444">${escapeXml(o.subtitle)}</text>`,
				]
			: []),
		...axis,
		...out,
		"</svg>",
		"",
	].join("\n");
}
