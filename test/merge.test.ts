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
	it("matches a per-chunk model: each layer is the one below cut to its size, with its extents on top (property)", () => {
		fc.assert(
			fc.property(
				fc.integer({ min: 1, max: 40 }).chain((n) =>
					fc.tuple(
						fc.constant(n),
						fc.array(fc.tuple(layerArb(n), fc.integer({ min: 1, max: n })), {
							minLength: 1,
							maxLength: 5,
						}),
					),
				),
				([, spec]) => {
					// a layer's extents must lie inside its own disk
					const layers = spec.map(([extents, chunkCount]) => ({
						chunkCount,
						extents: extents
							.filter((e) => e.first < chunkCount)
							.map((e) => ({
								...e,
								count: Math.min(e.count, chunkCount - e.first),
							})),
					}));
					const view = mergeLayers(layers);
					const top = (layers[layers.length - 1] as (typeof layers)[number])
						.chunkCount;
					let end = 0;
					for (const s of view) {
						expect(s.first).toBeGreaterThanOrEqual(end);
						expect(s.count).toBeGreaterThan(0);
						end = s.first + s.count;
					}
					expect(end).toBeLessThanOrEqual(top);
					// the model: a per-chunk array rebuilt layer by layer
					let model: ({ layer: number; extent: Extent } | undefined)[] = [];
					layers.forEach(({ extents, chunkCount }, layer) => {
						const next = model.slice(0, chunkCount);
						while (next.length < chunkCount) next.push(undefined);
						for (const e of extents)
							for (let c = e.first; c < e.first + e.count; c++)
								next[c] = { layer, extent: e };
						model = next;
					});
					for (let c = 0; c < top; c++) {
						const s = findSegment(view, c);
						expect(s?.layer).toBe(model[c]?.layer);
						expect(s?.extent).toBe(model[c]?.extent);
					}
				},
			),
			{ numRuns: 1000 },
		);
	});
});
