/**
 * PLACEHOLDER (issue 18): the trace-replay side calls `prefetchChunks`; the real scheduler is being
 * written on another branch and replaces this file at merge. This stand-in fetches nothing and
 * reports "done", so replay is wired end to end without warming anything.
 */
import type { VirtualDisk } from "../storage/virtual-disk.js";

/** layer index (0 = bottom), chunk index on the virtual disk */
export interface PrefetchItem {
	layer: number;
	chunk: number;
}
export interface PrefetchOptions {
	budgetBytes?: number;
	concurrency?: number;
	maxRequestBytes?: number;
	signal?: AbortSignal;
}
export interface PrefetchResult {
	chunks: number;
	bytes: number;
	requests: number;
	alreadyHad: number;
	stoppedBy: "done" | "budget" | "abort" | "error";
	ms: number;
	error?: string;
}

export async function prefetchChunks(
	_disk: VirtualDisk,
	_items: readonly PrefetchItem[],
	_o?: PrefetchOptions,
): Promise<PrefetchResult> {
	return {
		chunks: 0,
		bytes: 0,
		requests: 0,
		alreadyHad: 0,
		stoppedBy: "done",
		ms: 0,
	};
}
