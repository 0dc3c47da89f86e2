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

/** One layer as the merge sees it: its extents and how many chunks its disk has. */
export interface MergeLayer {
	extents: readonly Extent[];
	chunkCount: number;
}

function clip(view: Segment[], chunkCount: number): Segment[] {
	const out: Segment[] = [];
	for (const s of view) {
		if (s.first >= chunkCount) break;
		out.push(
			s.first + s.count > chunkCount
				? { ...s, count: chunkCount - s.first }
				: s,
		);
	}
	return out;
}

/**
 * Merges layers (index 0 = bottom) into one sorted view. Each layer's disk is the view below it,
 * cut to the layer's own chunk count, with the layer's extents on top: a layer that shrinks the
 * disk hides everything of the lower layers past its end, also when a later layer grows it again
 * (docs/format.md, "Overlay").
 */
export function mergeLayers(layers: readonly MergeLayer[]): Segment[] {
	let merged: Segment[] = [];
	layers.forEach(({ extents, chunkCount }, layer) => {
		merged = clip(
			overlay(
				clip(merged, chunkCount),
				extents.map((extent) => ({
					first: extent.first,
					count: extent.count,
					layer,
					extent,
				})),
			),
			chunkCount,
		);
	});
	return merged;
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
