/**
 * What `dadi-guest run` reports (pure): timings, the container's exit code, what was fetched, the
 * block device and file system, and the run's peak memory. One line on stderr,
 * `DADI-RUN {json}` (--json), easy to find in a serial console's stream, and/or a file (--report).
 * It holds no plaintext, key or env: only sizes, counts, times, names of devices and the image
 * reference.
 */

import type { MetadataPrefetchJson } from "../lazy/stats.js";
import type { TraceReplayJson } from "./trace-replay.js";

export const REPORT_PREFIX = "DADI-RUN ";

export interface RunTimings {
	/** Manifest, config and layer index fetches (and checks), without the broker exchange. */
	open?: number;
	/** Getting the image key: the broker exchange (auth, attest, resource) or the key file. */
	attest?: number;
	/** From attaching the device until the first read of the disk completed (the first chunk). */
	firstRead?: number;
	/** From the device being attached until the container's root was ready. */
	mount?: number;
	/** The container's process, from start to exit. */
	exec?: number;
	/** The whole command, start to report. */
	total?: number;
}

export interface RunReport {
	ok: boolean;
	image?: string;
	/** The container process's exit code (128 + N when signal N killed it). */
	exitCode?: number;
	block: "nbd" | "loop";
	blockDevice?: string;
	fsType?: string;
	timingsMs: RunTimings;
	/** Lazy fetch statistics of a registry image. */
	fetched?: { bytes: number; requests: number; chunks: number };
	/**
	 * What the guest kernel read from the disk (the block device's reads as they reached
	 * dadi-guest, mount and container together): plaintext bytes and reads. Against `fetched`,
	 * what the start cost in transfer per byte it used.
	 */
	read?: { bytes: number; reads: number };
	/** The metadata prefetch started at open (--prefetch-metadata), as it stood at the end. */
	metadataPrefetch?: MetadataPrefetchJson;
	/** Start-up trace replay (--prefetch): whether one was found, its entries, the prefetch. */
	trace?: TraceReplayJson;
	/** VmHWM of dadi-guest itself (not the container), bytes. */
	peakRssBytes?: number;
	error?: { code: string; message: string };
}

/** VmHWM (peak resident set) from the text of /proc/self/status, in bytes. */
export function peakRssFrom(status: string): number | undefined {
	const m = /^VmHWM:\s+(\d{1,15})\s+kB$/m.exec(status);
	return m ? Number(m[1]) * 1024 : undefined;
}

export function reportLine(r: RunReport): string {
	return `${REPORT_PREFIX}${JSON.stringify(r)}\n`;
}

/** Round to 0.1 ms. */
export function ms(n: number): number {
	return Math.round(n * 10) / 10;
}
