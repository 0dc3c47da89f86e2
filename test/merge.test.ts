import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { EXTENT_ZERO } from "../src/format/constants.js";
import type { Extent } from "../src/format/extents.js";
import { findSegment, mergeLayers } from "../src/format/merge.js";

/** Random sorted, non-overlapping extents over `n` chunks, tagged so we can tell them apart. */
const layerArb = (n: number) =>
	fc
		.array(fc.oneof(fc.constant("."), fc.constant("d"), fc.constant("z")), {
			minLength: n,
			maxLength: n,
		})
		.map((plan) => {
			const extents: Extent[] = [];
			plan.forEach((k, chunk) => {
				if (k === ".") return;
				const flags = k === "z" ? EXTENT_ZERO : 0;
				const last = extents[extents.length - 1];
				if (last && last.first + last.count === chunk && last.flags === flags)
					last.count++;
				else
					extents.push({
						first: chunk,
						count: 1,
						offset: 0,
						storedLength: 0,
						flags,
					});
			});
			return extents;
		});

describe("merging layer indexes", () => {
	it("matches a per-chunk model: the topmost layer covering a chunk wins (property)", () => {
		fc.assert(
			fc.property(
				fc
					.integer({ min: 1, max: 40 })
					.chain((n) =>
						fc.tuple(
							fc.constant(n),
							fc.array(layerArb(n), { minLength: 1, maxLength: 5 }),
						),
					),
				fc.integer({ min: 1, max: 40 }),
				([n, layers], top) => {
					const chunkCount = Math.min(n, top);
					const view = mergeLayers(layers, chunkCount);
					// sorted, non-overlapping, inside the disk
					let end = 0;
					for (const s of view) {
						expect(s.first).toBeGreaterThanOrEqual(end);
						expect(s.count).toBeGreaterThan(0);
						end = s.first + s.count;
					}
					expect(end).toBeLessThanOrEqual(chunkCount);
					for (let c = 0; c < chunkCount; c++) {
						let want: { layer: number; extent: Extent } | undefined;
						for (let l = layers.length - 1; l >= 0 && !want; l--) {
							const e = (layers[l] as Extent[]).find(
								(x) => c >= x.first && c < x.first + x.count,
							);
							if (e) want = { layer: l, extent: e };
						}
						const s = findSegment(view, c);
						expect(s?.layer).toBe(want?.layer);
						expect(s?.extent).toBe(want?.extent);
					}
				},
			),
			{ numRuns: 500 },
		);
	});
});
