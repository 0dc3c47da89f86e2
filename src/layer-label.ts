/**
 * How layers are named to people, everywhere (progress, reports, errors): counted from 1, bottom
 * first, out of how many there are — "layer 2/3"; a sealed layer that holds several source layers
 * (--flatten, or a flattened base) is "layers 1–3/3". Machine output (--json) says its index base.
 */

export interface LayerNumber {
	/** 1-based, bottom first. */
	number: number;
	/** How many layers there are. */
	of: number;
	/** When the thing named spans layers `from`..`number` (1-based). */
	from?: number;
}

export function layerLabel(l: LayerNumber): string {
	return l.from !== undefined && l.from < l.number
		? `layers ${l.from}–${l.number}/${l.of}`
		: `layer ${l.number}/${l.of}`;
}

/** "layer 1/3" for the 0-based `index` of `count` layers. */
export function layerAt(index: number, count: number): string {
	return layerLabel({ number: index + 1, of: count });
}
