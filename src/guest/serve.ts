/**
 * `dadi-guest serve`: one sealed image's virtual disk exposed as an NBD export and/or a FUSE file,
 * optionally loop-mounted, with metrics. Everything started is recorded on a stack and undone in
 * reverse order on close — also when a later step fails during start-up.
 */
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DadiError } from "../errors.js";
import type { LazyStats } from "../lazy/stats.js";
import { writeFileAtomic } from "../oci/layout.js";
import type { BlockSource } from "./block-source.js";
import { FuseServer } from "./fuse/server.js";
import { loopMount } from "./loop-mount.js";
import { GuestMetrics, meteredSource } from "./metrics.js";
import { NbdServer } from "./nbd/server.js";

export type Listen = { unix: string } | { host: string; port: number };

/**
 * `unix:PATH` or `tcp:HOST:PORT` (IPv6 hosts in brackets; port 0 picks a free one); where unix
 * sockets are allowed, a bare path (starting with / or .) is one too.
 */
export function parseListen(text: string, what: string, unix = true): Listen {
	if (unix && text.startsWith("unix:") && text.length > 5)
		return { unix: text.slice(5) };
	if (unix && /^\.{0,2}\//.test(text)) return { unix: text };
	const m = /^tcp:(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text);
	const port = Number(m?.[2]);
	if (!m || port > 65535)
		throw new DadiError(
			"USAGE",
			`${what} "${text}": expected ${unix ? "unix:PATH or " : ""}tcp:HOST:PORT`,
		);
	return { host: (m[1] as string).replace(/^\[|\]$/g, ""), port };
}

/** 127.0.0.0/8, ::1 and "localhost": addresses only this machine (this sandbox) can reach. */
export function isLoopbackHost(host: string): boolean {
	const h = host.toLowerCase();
	return (
		h === "localhost" ||
		h === "::1" ||
		/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) ||
		/^::ffff:127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h)
	);
}

/**
 * The NBD export is the decrypted disk, with no authentication or encryption on the wire: on a
 * TCP address other machines can reach it would hand the plaintext image to anyone there. Refused
 * unless the operator says the network is private (`--nbd-allow-remote`).
 */
export function checkNbdExposure(
	listen: Listen,
	text: string,
	allowRemote: boolean,
): void {
	if ("unix" in listen || allowRemote || isLoopbackHost(listen.host)) return;
	throw new DadiError(
		"USAGE",
		`--nbd "${text}": refusing to serve the decrypted disk on a non-loopback address: NBD has no authentication or encryption, so anyone who can reach ${listen.host} would read the plaintext image; use unix:PATH (or a path), a loopback address (127.0.0.1, ::1), or pass --nbd-allow-remote if only trusted peers can reach that network`,
	);
}

export interface ServeOptions {
	source: BlockSource;
	/** The lazy reader's statistics (registry images). */
	lazy?: LazyStats;
	/** For NBD_INFO_DESCRIPTION and logs. */
	name: string;
	nbd?: Listen;
	fuse?: string;
	mountAt?: string;
	metrics?: { host: string; port: number };
	statsFile?: string;
	statsIntervalMs?: number;
	/** Extra members of --stats (trace replay and recording). */
	extraStats?: GuestMetrics["extra"];
	log: (line: string) => void;
}

export interface Serving {
	nbd?: string;
	fuse?: string;
	mountedAt?: string;
	loopDevice?: string;
	metrics?: string;
	/** How long each step took (ms): the NBD listener, the FUSE mount, the loop attach + mount. */
	readonly timingsMs: { nbd?: number; fuse?: number; mount?: number };
	readonly metricsState: GuestMetrics;
	/** Undoes everything, in reverse order; idempotent. */
	close(): Promise<void>;
}

export async function startServing(o: ServeOptions): Promise<Serving> {
	if (!o.nbd && !o.fuse && !o.mountAt)
		throw new DadiError(
			"USAGE",
			"nothing to serve: give --nbd unix:PATH|tcp:HOST:PORT, --fuse DIR or --mount-at DIR",
		);
	const metrics = new GuestMetrics(o.lazy);
	metrics.extra = o.extraStats;
	const source = meteredSource(o.source, metrics);
	const undo: { what: string; fn: () => Promise<void> }[] = [];
	let closing: Promise<void> | undefined;
	const close = (): Promise<void> => {
		closing ??= (async () => {
			for (const step of undo.reverse())
				try {
					await step.fn();
				} catch (e) {
					o.log(`cleanup (${step.what}) failed: ${(e as Error).message}`);
				}
			if (o.statsFile) await writeStats(o.statsFile, metrics).catch(() => {});
		})();
		return closing;
	};
	const serving: Serving = { metricsState: metrics, close, timingsMs: {} };
	let t = performance.now();
	const took = (): number => {
		const now = performance.now();
		const d = Math.round((now - t) * 10) / 10;
		t = now;
		return d;
	};
	try {
		if (o.nbd) {
			const nbd = new NbdServer({
				source,
				description: o.name,
				log: (l) => o.log(`nbd: ${l}`),
			});
			const { address } = await nbd.listen(o.nbd);
			undo.push({ what: "NBD server", fn: () => nbd.close() });
			serving.nbd = address;
			serving.timingsMs.nbd = took();
		}
		let fuseDir = o.fuse;
		if (o.mountAt && !fuseDir) {
			// The loop device needs a file: serve FUSE in a private directory for it.
			const dir = await mkdtemp(join(tmpdir(), "dadi-fuse-"));
			undo.push({
				what: "private FUSE directory",
				fn: () => rm(dir, { recursive: true, force: true }),
			});
			fuseDir = dir;
		}
		if (fuseDir) {
			const fuse = await FuseServer.mount(fuseDir, {
				source,
				log: o.log,
			});
			undo.push({ what: "FUSE mount", fn: () => fuse.close() });
			serving.fuse = fuse.path;
			serving.timingsMs.fuse = took();
			if (o.mountAt) {
				const m = await loopMount(fuse.path, o.mountAt);
				undo.push({ what: "loop mount", fn: () => m.release() });
				serving.mountedAt = m.dir;
				serving.loopDevice = m.device;
				serving.timingsMs.mount = took();
			}
		}
		if (o.metrics) {
			const server = http.createServer((req, res) => {
				if (req.method === "GET" && req.url === "/metrics")
					res
						.writeHead(200, {
							"content-type": "text/plain; version=0.0.4",
						})
						.end(metrics.toPrometheus());
				else res.writeHead(404).end();
			});
			await new Promise<void>((resolve, reject) => {
				server.once("error", (e) =>
					reject(
						new DadiError(
							"IO",
							`--metrics: cannot listen on ${o.metrics?.host}:${o.metrics?.port} (${e.message})`,
						),
					),
				);
				server.listen(o.metrics?.port, o.metrics?.host, () => resolve());
			});
			undo.push({
				what: "metrics endpoint",
				fn: () =>
					new Promise<void>((r) => {
						server.closeAllConnections();
						server.close(() => r());
					}),
			});
			const a = server.address();
			serving.metrics = `http://${o.metrics.host}:${typeof a === "object" && a ? a.port : o.metrics.port}/metrics`;
		}
		if (o.statsFile) {
			const file = o.statsFile;
			await writeStats(file, metrics);
			const timer = setInterval(
				() => void writeStats(file, metrics).catch(() => {}),
				o.statsIntervalMs ?? 5000,
			);
			timer.unref();
			undo.push({ what: "stats timer", fn: async () => clearInterval(timer) });
		}
		return serving;
	} catch (e) {
		await close();
		throw e;
	}
}

async function writeStats(file: string, metrics: GuestMetrics): Promise<void> {
	await writeFileAtomic(file, `${JSON.stringify(metrics.toJSON(), null, 2)}\n`);
}
