/**
 * Merging the indexes of a layer stack into one view of the virtual disk, done once at open time.
 * Upper layers shadow lower ones; holes fall through; what no layer covers reads as zero.
 */
import type { Extent } from "./extents.js";

export interface Segment {
	/** First virtual chunk of this segment. */
	first: number;
	/** Chunks in the segment. */
	count: number;
	/** Index of the layer in the stack (0 = bottom). */
	layer: number;
	/** The layer's extent that the segment is a piece of. */
	extent: Extent;
}

/**
 * Overlays `upper` (one layer's extents) on `lower` (an already-merged view), both sorted and
 * non-overlapping. Linear in the total number of pieces.
 */
export function overlay(
	lower: readonly Segment[],
	upper: readonly Segment[],
): Segment[] {
	const out: Segment[] = [];
	let li = 0;
	let cur: Segment | undefined = lower[0];
	const takeLower = (until: number): void => {
		// Emit lower pieces that start before `until`, clipped to it.
		while (cur !== undefined && cur.first < until) {
			const end = cur.first + cur.count;
			if (end <= until) {
				out.push(cur);
				cur = lower[++li];
			} else {
				out.push({ ...cur, count: until - cur.first });
				cur = { ...cur, first: until, count: end - until };
			}
		}
	};
	const skipLower = (until: number): void => {
		while (cur !== undefined && cur.first < until) {
			const end = cur.first + cur.count;
			if (end <= until) cur = lower[++li];
			else cur = { ...cur, first: until, count: end - until };
		}
	};
	for (const u of upper) {
		takeLower(u.first);
		out.push(u);
		skipLower(u.first + u.count);
	}
	while (cur !== undefined) {
		out.push(cur);
		cur = lower[++li];
	}
	return out;
}

/** Merges per-layer extents (index 0 = bottom) into one sorted view clipped to `chunkCount`. */
export function mergeLayers(
	layers: readonly (readonly Extent[])[],
	chunkCount: number,
): Segment[] {
	let merged: Segment[] = [];
	layers.forEach((extents, layer) => {
		merged = overlay(
			merged,
			extents.map((extent) => ({
				first: extent.first,
				count: extent.count,
				layer,
				extent,
			})),
		);
	});
	const clipped: Segment[] = [];
	for (const s of merged) {
		if (s.first >= chunkCount) break;
		clipped.push(
			s.first + s.count > chunkCount
				? { ...s, count: chunkCount - s.first }
				: s,
		);
	}
	return clipped;
}

/** The segment covering `chunk`, or undefined when it reads as zero. O(log n). */
export function findSegment(
	view: readonly Segment[],
	chunk: number,
): Segment | undefined {
	let lo = 0;
	let hi = view.length - 1;
	while (lo <= hi) {
		const mid = (lo + hi) >>> 1;
		const s = view[mid] as Segment;
		if (chunk < s.first) hi = mid - 1;
		else if (chunk >= s.first + s.count) lo = mid + 1;
		else return s;
	}
	return undefined;
}
