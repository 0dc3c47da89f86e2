import type { LayerNumber } from "./layer-label.js";

/**
 * What long work reports as it goes. Core modules describe their progress as events and do no
 * output; the programs decide how to show them (a rewritten terminal line, log lines or JSON lines,
 * src/cli/progress.ts) and add a heartbeat when a phase stays quiet.
 */

export interface ProgressEvent {
	/** What is being done: "pulling", "applying", "building ext4", "sealing", "pushing", … */
	phase: string;
	/** The layer the phase works on (layer-label.ts): the source image's, from 1, bottom first. */
	layer?: LayerNumber;
	/** How much is done: bytes unless `unit` says otherwise; 0 before anything is measured. */
	done: number;
	/** The whole amount, or 0 when it is not known (then `done` is shown without a percentage). */
	total: number;
	/** What `done` and `total` count. */
	unit?: ProgressUnit;
	/** A push's blobs that were not sent: the registry had them, or mounted them from another repository. */
	skipped?: SkippedBlobs;
}

export type ProgressUnit = "bytes" | "commands";

export interface SkippedBlobs {
	exists: number;
	mounted: number;
	/** Their size: bytes not sent. */
	bytes: number;
}

export type OnProgress = (e: ProgressEvent) => void;

/** A phase with no measure of its own (yet): shown by name, then kept alive by heartbeats. */
export function announce(
	on: OnProgress | undefined,
	phase: string,
	layer?: ProgressEvent["layer"],
): void {
	on?.({ phase, done: 0, total: 0, ...(layer ? { layer } : {}) });
}

/** An OnProgress that puts every event of `on` in the given layer. */
export function inLayer(
	on: OnProgress | undefined,
	layer: LayerNumber,
): OnProgress | undefined {
	return on && ((e) => on({ ...e, layer }));
}
