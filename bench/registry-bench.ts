/**
 * The registry section of `npm run bench` (`--registry` runs only this): a realistic disk sealed
 * with the defaults (64 KiB chunks, zstd), pushed to a real docker-registry on loopback, then read
 * lazily with openRemoteSealedImage:
 *
 * 1. a start-up set: 5% of the disk read as files would be (scattered extents, sizes log-uniform
 *    from 4 KiB to 2 MiB, each read sequentially in 128 KiB requests, 4 files at a time), from a
 *    new reader each run; against curl of the whole sealed image;
 * 2. the whole disk read sequentially: `dadi-seal export docker://…` (the command `dadi-guest
 *    export` shares) in a new process, exportDisk and a disk.read loop in this one, and an export
 *    of the local layout for reference; against `curl -o /dev/null` of the layer blob.
 *
 * Optionally (--registry-sweep) the in-process export with one tuning setting changed at a time.
 *
 * See docs/benchmarks.md, "Registry: lazy reads".
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, rmSync } from "node:fs";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { availableParallelism, loadavg } from "node:os";
import { dirname, join } from "node:path";
import {
	generateImageKey,
	type ImageKey,
	toJwk,
} from "../src/crypto/image-key.js";
import { DadiError } from "../src/errors.js";
import { exportDisk } from "../src/image/export.js";
import {
	DEFAULT_CONCURRENCY,
	DEFAULT_MEMORY_BYTES,
	openRemoteSealedImage,
	type RemoteImage,
	type RemoteOpenOptions,
} from "../src/lazy/open-remote.js";
import { DEFAULT_TUNING } from "../src/lazy/remote-blob.js";
import type { LazyStatsJson } from "../src/lazy/stats.js";
import type { DockerReference } from "../src/oci/docker-reference.js";
import { RegistryClient } from "../src/registry/client.js";
import { copyImage } from "../src/registry/copy.js";
import { LayoutEndpoint, RegistryEndpoint } from "../src/registry/endpoints.js";
import { sealDisk } from "../src/seal/seal-disk.js";
import type { VirtualDisk } from "../src/storage/virtual-disk.js";
import { startRegistry } from "../test/registry/harness.js";
import { prepareImage, prng } from "./image.js";
import { which } from "./image-measure.js";
import {
	formatRegistryHeader,
	formatRegistryTargets,
	formatSequential,
	formatStartup,
	formatSweep,
	median,
	REGISTRY_TARGETS,
	type RegistryBenchReport,
	type StartupReport,
	type StartupRun,
	type SweepRow,
	summarize,
	type TransferRun,
} from "./registry-report.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 4 * KiB;

/** The start-up set's shape. */
const STARTUP = {
	fraction: 0.05,
	minFileBytes: 4 * KiB,
	maxFileBytes: 2 * MiB,
	requestBytes: 128 * KiB,
	filesInFlight: 4,
	seed: 0x5eed_d4d1,
} as const;
/** Zero gaps up to this long inside data still count as data-bearing (sparse files, slack). */
const DATA_GAP = 64 * KiB;
/** The sequential read loop: plaintext bytes per disk.read, and reads in flight. */
const READ_LOOP = { requestBytes: 4 * MiB, inFlight: 4 } as const;
const REPO_NAME = "bench/rootfs";
const TAG = "v1";

export interface RegistryBenchOptions {
	/** The repository root (for dist/src/cli/dadi-guest.js). */
	repo: string;
	cacheDir: string;
	/** Scratch directory (removed by the caller); this section works in a subdirectory. */
	workDir: string;
	workDirDescription: string;
	reps: number;
	quick: boolean;
	synthetic: boolean;
	/** Also run the tuning sweep of the lazy export. */
	sweep: boolean;
	log: (line: string) => void;
	print: (text: string) => void;
}

/** Why the section cannot run here, or null. */
export function registryBenchMissing(): string | null {
	for (const [tool, pkg] of [
		["docker-registry", "docker-registry"],
		["curl", "curl"],
	] as const)
		if (which(tool) === null)
			return `${tool} not found (Debian: apt-get install ${pkg})`;
	return null;
}

function version(cmd: string, args: string[], re: RegExp): string {
	const r = spawnSync(cmd, args, { encoding: "utf8" });
	return re.exec(`${r.stdout ?? ""}${r.stderr ?? ""}`)?.[1] ?? "?";
}

const seconds = (since: number): number => (performance.now() - since) / 1000;

export async function runRegistryBench(
	o: RegistryBenchOptions,
): Promise<RegistryBenchReport> {
	const started = performance.now();
	const loadStart = loadavg();
	const size = (o.quick ? 256 : 1024) * MiB;
	const work = join(o.workDir, "registry");
	await mkdir(work, { recursive: true });
	const image = await prepareImage({
		cacheDir: o.cacheDir,
		workDir: work,
		size,
		forceSynthetic: o.synthetic,
		log: o.log,
	});
	o.log(
		`registry: scanning the ${size / MiB} MiB disk for data (and its SHA-256)...`,
	);
	const { regions, dataBytes, sha256 } = await scanDisk(image.path);

	o.log("registry: starting docker-registry...");
	const reg = await startRegistry();
	// run.ts exits on Ctrl-C: the harness kills the registry then; its directory goes here.
	const regDir = dirname(reg.storageDir);
	const removeRegistryDir = (): void =>
		rmSync(regDir, { recursive: true, force: true });
	process.on("exit", removeRegistryDir);
	process.on("unhandledRejection", onLateStore);
	lateStores = 0;
	try {
		const key = generateImageKey();
		const layoutDir = join(work, "layout");
		o.log("registry: sealing (64 KiB chunks, zstd) and pushing...");
		let t = performance.now();
		const sealed = await sealDisk({
			disk: image.path,
			dest: { transport: "oci", dir: layoutDir, tag: TAG },
			key,
		});
		const sealSeconds = seconds(t);
		const ref: DockerReference = {
			transport: "docker",
			registry: reg.host,
			repository: REPO_NAME,
			tag: TAG,
		};
		const client = new RegistryClient(reg.host, { insecure: true });
		let pushBytes: number;
		t = performance.now();
		try {
			const r = await copyImage(
				await LayoutEndpoint.source({ dir: layoutDir, tag: TAG }),
				new RegistryEndpoint(client, ref),
			);
			pushBytes = r.bytesCopied;
		} finally {
			await client.close();
		}
		const pushSeconds = seconds(t);
		o.log(
			`  seal ${sealSeconds.toFixed(2)} s, push ${pushSeconds.toFixed(2)} s (${pushBytes} bytes)`,
		);
		const blobs = await manifestBlobs(reg.host, ref);
		const layerBytes = sealed.layer.size;
		const layerUrl = `${reg.url}/v2/${REPO_NAME}/blobs/${sealed.layer.digest}`;
		const imageUrls = [
			`${reg.url}/v2/${REPO_NAME}/manifests/${TAG}`,
			...blobs.map((b) => `${reg.url}/v2/${REPO_NAME}/blobs/${b}`),
		];

		// 1. The start-up set, alternating with curl of the whole image.
		const files = startupFiles(regions, size, STARTUP.fraction, STARTUP.seed);
		const startupRuns: StartupRun[] = [];
		const fullRuns: TransferRun[] = [];
		for (let i = 0; i < o.reps; i++) {
			fullRuns.push(curl(imageUrls));
			const r = await startupOnce(ref, key, files);
			startupRuns.push(r);
			o.log(
				`  start-up set, run ${i + 1}: first block ${(r.firstBlockSeconds * 1000).toFixed(0)} ms, total ${r.totalSeconds.toFixed(2)} s, fetched ${r.stats.bytesFetched} for ${r.bytesRead} read; curl of the image ${fullRuns[i]?.seconds.toFixed(2)} s`,
			);
		}

		// 2. Sequential, alternating: curl; `dadi-seal export` from the registry (a new process, what
		// users run; the same command as `dadi-guest export`); exportDisk and a disk.read loop in this
		// process; `dadi-seal export` from the local layout (no HTTP) for reference.
		const keyFile = join(work, "image.jwk");
		await writeFile(keyFile, `${JSON.stringify(toJwk(key))}\n`);
		const cli = join(o.repo, "dist/src/cli/dadi-seal.js");
		const remoteRef = `docker://${reg.host}/${REPO_NAME}:${TAG}`;
		const localRef = `oci:${layoutDir}:${TAG}`;
		const out = join(work, "export.img");
		const curlRuns: TransferRun[] = [];
		const cliRuns: TransferRun[] = [];
		const exportRuns: TransferRun[] = [];
		const loopRuns: TransferRun[] = [];
		const localRuns: TransferRun[] = [];
		let exportVerified = false;
		for (let i = 0; i < o.reps; i++) {
			curlRuns.push(curl([layerUrl]));
			const c = cliExport(cli, remoteRef, keyFile, out);
			cliRuns.push(c);
			if (i === 0) {
				const got = await sha256File(out);
				if (got !== sha256)
					throw new Error(
						`the lazily exported disk differs from the source (SHA-256 ${got}, expected ${sha256})`,
					);
				exportVerified = true;
			}
			await rm(out, { force: true });
			const e = await lazyExportOnce(ref, key, out, {});
			exportRuns.push(e);
			await rm(out, { force: true });
			const l = await readLoopOnce(ref, key);
			loopRuns.push(l);
			const local = cliExport(cli, localRef, keyFile, out);
			localRuns.push(local);
			await rm(out, { force: true });
			o.log(
				`  sequential, run ${i + 1}: curl ${curlRuns[i]?.seconds.toFixed(2)} s, dadi-seal export ${c.seconds.toFixed(2)} s, in-process export ${e.seconds.toFixed(2)} s, read loop ${l.seconds.toFixed(2)} s, local export ${local.seconds.toFixed(2)} s`,
			);
		}
		const curlSum = summarize(
			"curl -o /dev/null of the layer blob",
			curlRuns,
			layerBytes,
			size,
		);
		const cliSum = summarize(
			"dadi-seal/dadi-guest export docker://… (a new process: what users run)",
			cliRuns,
			layerBytes,
			size,
		);
		const exportSum = summarize(
			"openRemoteSealedImage + exportDisk in this process",
			exportRuns,
			layerBytes,
			size,
		);
		const loopSum = summarize(
			`openRemoteSealedImage + disk.read loop, ${READ_LOOP.requestBytes / MiB} MiB x ${READ_LOOP.inFlight} in flight`,
			loopRuns,
			layerBytes,
			size,
		);
		const localSum = summarize(
			"reference: dadi-seal export oci:… from the local layout (no HTTP)",
			localRuns,
			layerBytes,
			size,
		);

		const sweep = o.sweep
			? await runSweep(ref, key, out, o, curlSum.medianSeconds, size)
			: [];

		const startup = startupReport(
			files.length,
			dataBytes,
			startupRuns,
			fullRuns,
		);
		const lazyToCurl = curlSum.medianSeconds / cliSum.medianSeconds;
		const report: RegistryBenchReport = {
			schema: "dadi-bench-registry/1",
			date: new Date().toISOString(),
			quick: o.quick,
			reps: o.reps,
			image: { ...image, sha256 },
			tools: {
				node: process.version,
				"docker-registry": version(
					"docker-registry",
					["--version"],
					/distribution (\S+)/,
				),
				curl: version("curl", ["--version"], /^curl (\S+)/),
			},
			nproc: availableParallelism(),
			workDir: o.workDirDescription,
			registryStorage: `${reg.storageDir} (served from the page cache once pushed)`,
			loadAverage: { start: loadStart, end: loadavg() },
			sealed: {
				chunkSize: sealed.config.chunkSize,
				compression: sealed.layer.compression,
				sealSeconds,
				layerBytes,
				imageBytes: startup.fullDownload.bytes,
				storedChunks: sealed.layer.storedChunks,
			},
			push: {
				seconds: pushSeconds,
				bytes: pushBytes,
				MiBps: pushBytes / MiB / pushSeconds,
			},
			startup,
			sequential: {
				curl: curlSum,
				cliExport: cliSum,
				lazyExport: exportSum,
				lazyReadLoop: loopSum,
				localExport: localSum,
				lazyToCurl,
				inProcessToCurl: curlSum.medianSeconds / exportSum.medianSeconds,
				readLoopToCurl: curlSum.medianSeconds / loopSum.medianSeconds,
				exportVerified,
				readLoop: { ...READ_LOOP },
			},
			sweep,
			lateCacheStoresAfterClose: lateStores,
			targets: {
				fetchedToRead: {
					value: startup.median.fetchedToRead,
					max: REGISTRY_TARGETS.maxFetchedToRead,
					met:
						startup.median.fetchedToRead <= REGISTRY_TARGETS.maxFetchedToRead,
				},
				lazyToCurl: {
					value: lazyToCurl,
					min: REGISTRY_TARGETS.minLazyToCurl,
					met: lazyToCurl >= REGISTRY_TARGETS.minLazyToCurl,
				},
			},
		};
		o.print(`\n${formatRegistryHeader(report)}\n`);
		o.print(`${formatStartup(report)}\n`);
		o.print(`${formatSequential(report)}\n`);
		if (sweep.length) o.print(`${formatSweep(report)}\n`);
		o.print(formatRegistryTargets(report));
		o.log(`registry section took ${seconds(started).toFixed(0)} s`);
		return report;
	} finally {
		await reg.stop();
		process.off("exit", removeRegistryDir);
		process.off("unhandledRejection", onLateStore);
		await rm(work, { recursive: true, force: true });
	}
}

/**
 * A read-ahead fetch that completes after its image was closed stores into the closed memory
 * cache, which throws in a promise nobody awaits (src/lazy/remote-blob.ts #fetch): an unhandled
 * rejection that would end the process. The bench lets reads settle before closing (settle()),
 * and counts any that still slip through instead of dying; every other rejection is rethrown.
 */
let lateStores = 0;
function onLateStore(e: unknown): void {
	if (
		e instanceof DadiError &&
		e.code === "USAGE" &&
		/used after close\(\)/.test(e.message)
	) {
		lateStores++;
		return;
	}
	throw e;
}

/** Waits until the reader's requests stop changing (read-ahead still in flight), at most 5 s. */
async function settle(image: RemoteImage): Promise<void> {
	const deadline = performance.now() + 5000;
	let last = -1;
	let quiet = 0;
	while (quiet < 4 && performance.now() < deadline) {
		const n = image.stats.requests + image.stats.chunksFetched;
		quiet = n === last ? quiet + 1 : 0;
		last = n;
		await new Promise((r) => setTimeout(r, 50));
	}
}

// --- the disk --------------------------------------------------------------------------------

interface Region {
	start: number;
	end: number;
}

/**
 * Where the disk holds data: maximal runs of non-zero 4 KiB blocks, gaps of up to DATA_GAP
 * merged; also the bytes in non-zero blocks and the disk's SHA-256 (to check exports).
 */
export async function scanDisk(
	path: string,
): Promise<{ regions: Region[]; dataBytes: number; sha256: string }> {
	const zero = Buffer.alloc(BLOCK);
	const regions: Region[] = [];
	const hash = createHash("sha256");
	let dataBytes = 0;
	let pos = 0;
	for await (const piece of createReadStream(path, {
		highWaterMark: 8 * MiB,
	}) as AsyncIterable<Buffer>) {
		hash.update(piece);
		for (let at = 0; at < piece.length; at += BLOCK) {
			const block = piece.subarray(at, at + BLOCK);
			if (!block.equals(zero.subarray(0, block.length))) {
				const start = pos + at;
				const last = regions[regions.length - 1];
				if (last && start - last.end <= DATA_GAP)
					last.end = start + block.length;
				else regions.push({ start, end: start + block.length });
				dataBytes += block.length;
			}
		}
		pos += piece.length;
	}
	return { regions, dataBytes, sha256: hash.digest("hex") };
}

async function sha256File(path: string): Promise<string> {
	const hash = createHash("sha256");
	for await (const piece of createReadStream(path, {
		highWaterMark: 8 * MiB,
	}) as AsyncIterable<Buffer>)
		hash.update(piece);
	return hash.digest("hex");
}

/** mulberry32: a small seeded PRNG, so every run reads the same files. */

interface FileExtent {
	offset: number;
	length: number;
}

/**
 * The start-up set: "files" of log-uniform sizes (whole 4 KiB blocks) at random block offsets in
 * the data-bearing regions (weighted by their size), cut at their region's end, never overlapping,
 * until `fraction` of the disk is covered (the last file is shortened to hit it exactly).
 */
export function startupFiles(
	regions: readonly Region[],
	diskSize: number,
	fraction: number,
	seed: number,
): FileExtent[] {
	const rand = prng(seed);
	const target = Math.floor((diskSize * fraction) / BLOCK) * BLOCK;
	const cumulative: number[] = [];
	let total = 0;
	for (const r of regions) {
		total += r.end - r.start;
		cumulative.push(total);
	}
	if (total < target)
		throw new Error(
			`the disk has ${total} data-bearing bytes, fewer than the ${target} to read`,
		);
	const lnMin = Math.log(STARTUP.minFileBytes);
	const lnMax = Math.log(STARTUP.maxFileBytes);
	const files: FileExtent[] = [];
	let covered = 0;
	for (let attempts = 0; covered < target; attempts++) {
		if (attempts > 100_000)
			throw new Error("could not place the start-up set's files");
		const wanted = Math.exp(lnMin + rand() * (lnMax - lnMin));
		let length = Math.max(BLOCK, Math.ceil(wanted / BLOCK) * BLOCK);
		// A data byte chosen uniformly, then its region and block.
		const at = rand() * total;
		let lo = 0;
		let hi = cumulative.length - 1;
		while (lo < hi) {
			const mid = (lo + hi) >>> 1;
			if ((cumulative[mid] as number) <= at) lo = mid + 1;
			else hi = mid;
		}
		const region = regions[lo] as Region;
		const before = lo === 0 ? 0 : (cumulative[lo - 1] as number);
		const offset = region.start + Math.floor((at - before) / BLOCK) * BLOCK;
		length = Math.min(length, region.end - offset, target - covered);
		if (length <= 0) continue;
		const end = offset + length;
		if (files.some((f) => offset < f.offset + f.length && f.offset < end))
			continue;
		files.push({ offset, length });
		covered += length;
	}
	return files;
}

// --- the registry ----------------------------------------------------------------------------

/** Digests of the config and layer blobs the tag's manifest names. */
async function manifestBlobs(
	host: string,
	ref: DockerReference,
): Promise<string[]> {
	const client = new RegistryClient(host, { insecure: true });
	try {
		const { bytes } = await client.getManifest(
			ref.repository,
			ref.tag ?? "latest",
		);
		const doc = JSON.parse(bytes.toString("utf8")) as {
			config: { digest: string };
			layers: { digest: string }[];
		};
		return [doc.config.digest, ...doc.layers.map((l) => l.digest)];
	} finally {
		await client.close();
	}
}

/** curl of the URLs to /dev/null on one connection; wall time (process start included). */
function curl(urls: string[]): TransferRun {
	const args = ["-s", "-S", "-f", "-w", "%{size_download}\\n"];
	for (const u of urls)
		args.push(
			"-H",
			"Accept: application/vnd.oci.image.manifest.v1+json",
			"-o",
			"/dev/null",
			u,
		);
	const t = performance.now();
	const r = spawnSync("curl", args, { encoding: "utf8" });
	const s = seconds(t);
	if (r.error !== undefined || r.status !== 0)
		throw new Error(
			`curl ${urls.join(" ")} failed: ${r.error?.message ?? r.stderr}`,
		);
	const bytes = r.stdout
		.trim()
		.split("\n")
		.reduce((n, l) => n + Number(l), 0);
	return { seconds: s, bytesFetched: bytes };
}

/**
 * `dadi-seal export REF --out FILE --json` in a new process (export-command.ts, shared with
 * `dadi-guest export`): wall time (node start-up included, as for a user), and the fetch
 * statistics it reports for registry images.
 */
function cliExport(
	cli: string,
	ref: string,
	keyFile: string,
	out: string,
): TransferRun {
	const args = [cli, "export", ref, "--key", keyFile, "--out", out];
	args.push("--force", "--json", "--quiet");
	if (ref.startsWith("docker://")) args.push("--insecure");
	const t = performance.now();
	const r = spawnSync(process.execPath, args, {
		encoding: "utf8",
		maxBuffer: 16 << 20,
	});
	const s = seconds(t);
	let doc: { ok?: boolean; fetched?: LazyStatsJson } = {};
	try {
		doc = JSON.parse(r.stdout) as typeof doc;
	} catch {
		// no JSON: reported below
	}
	// The export succeeded but the process died afterwards on the late read-ahead store (see
	// onLateStore): count it, keep the measurement.
	if (
		r.status !== 0 &&
		doc.ok === true &&
		/used after close\(\)/.test(r.stderr)
	)
		lateStores++;
	else if (r.error !== undefined || r.status !== 0 || doc.ok !== true)
		throw new Error(
			`dadi-seal export ${ref} failed (status ${r.status}): ${r.error?.message ?? r.stderr.slice(-2000)}`,
		);
	return {
		seconds: s,
		bytesFetched: doc.fetched?.bytesFetched ?? 0,
		...(doc.fetched ? { stats: doc.fetched } : {}),
	};
}

// --- lazy reads ------------------------------------------------------------------------------

function openOptions(extra: RemoteOpenOptions): RemoteOpenOptions {
	return { insecure: true, ...extra };
}

/** A new reader (no disk cache): first block, then the whole start-up set. */
async function startupOnce(
	ref: DockerReference,
	key: ImageKey,
	files: readonly FileExtent[],
): Promise<StartupRun> {
	const first = files[0] as FileExtent;
	const t0 = performance.now();
	const image = await openRemoteSealedImage(ref, key, openOptions({}));
	try {
		const openSeconds = seconds(t0);
		await image.disk.read(first.offset, BLOCK);
		const firstBlockSeconds = seconds(t0);
		const bytesRead = BLOCK + (await readFiles(image.disk, files));
		const totalSeconds = seconds(t0);
		// Read-ahead still in flight is fetched anyway: count it.
		await settle(image);
		return {
			firstBlockSeconds,
			openSeconds,
			totalSeconds,
			bytesRead,
			stats: image.stats.toJSON(),
			touched: touchedChunks(image.disk, files),
		};
	} finally {
		await image.close();
	}
}

/** Reads each file sequentially in 128 KiB requests, a few files at a time, like a booting guest. */
async function readFiles(
	disk: VirtualDisk,
	files: readonly FileExtent[],
): Promise<number> {
	let next = 0;
	let bytes = 0;
	const worker = async (): Promise<void> => {
		for (;;) {
			const f = files[next++];
			if (f === undefined) return;
			const end = f.offset + f.length;
			for (let off = f.offset; off < end; off += STARTUP.requestBytes) {
				const len = Math.min(STARTUP.requestBytes, end - off);
				await disk.read(off, len);
				bytes += len;
			}
		}
	};
	await Promise.all(Array.from({ length: STARTUP.filesInFlight }, worker));
	return bytes;
}

/**
 * The data chunks the set touches (each once) and their stored bytes: what a reader that fetched
 * every touched chunk exactly once, and nothing else, would fetch.
 */
function touchedChunks(
	disk: VirtualDisk,
	files: readonly FileExtent[],
): { chunks: number; storedBytes: number } {
	const cs = disk.chunkSize;
	const seen = new Set<number>();
	let storedBytes = 0;
	for (const f of files)
		for (
			let c = Math.floor(f.offset / cs);
			c <= Math.floor((f.offset + f.length - 1) / cs);
			c++
		) {
			if (seen.has(c)) continue;
			for (const run of disk.runs(c, c + 1))
				if (run.kind === "data") {
					seen.add(c);
					storedBytes += run.pieces[0]?.extent.storedLength ?? 0;
				}
		}
	return { chunks: seen.size, storedBytes };
}

interface LazyVariant {
	concurrency?: number;
	maxRequestBytes?: number;
	readAheadMaxBytes?: number;
	readAheadAfter?: number;
	memoryBytes?: number;
	exportDepth?: number;
	runBytes?: number;
}

async function lazyExportOnce(
	ref: DockerReference,
	key: ImageKey,
	out: string,
	v: LazyVariant,
): Promise<TransferRun> {
	const t0 = performance.now();
	const image = await openRemoteSealedImage(
		ref,
		key,
		openOptions({
			concurrency: v.concurrency,
			memoryBytes: v.memoryBytes,
			tuning: {
				...(v.readAheadAfter === undefined
					? {}
					: { readAheadAfter: v.readAheadAfter }),
				...(v.maxRequestBytes === undefined
					? {}
					: { maxRequestBytes: v.maxRequestBytes }),
				...(v.readAheadMaxBytes === undefined
					? {}
					: { readAheadMaxBytes: v.readAheadMaxBytes }),
			},
		}),
	);
	try {
		const openSeconds = seconds(t0);
		await exportDisk(image.disk, out, {
			force: true,
			depth: v.exportDepth,
			runBytes: v.runBytes,
		});
		const s = seconds(t0);
		await settle(image);
		const stats = image.stats.toJSON();
		return {
			seconds: s,
			bytesFetched: stats.bytesFetched,
			stats,
			openSeconds,
		};
	} finally {
		await image.close();
	}
}

async function readLoopOnce(
	ref: DockerReference,
	key: ImageKey,
): Promise<TransferRun> {
	const t0 = performance.now();
	const image = await openRemoteSealedImage(ref, key, openOptions({}));
	try {
		const openSeconds = seconds(t0);
		const disk = image.disk;
		let next = 0;
		const worker = async (): Promise<void> => {
			while (next < disk.size) {
				const off = next;
				const len = Math.min(READ_LOOP.requestBytes, disk.size - off);
				next += len;
				await disk.read(off, len);
			}
		};
		await Promise.all(Array.from({ length: READ_LOOP.inFlight }, worker));
		const s = seconds(t0);
		await settle(image);
		const stats = image.stats.toJSON();
		return {
			seconds: s,
			bytesFetched: stats.bytesFetched,
			stats,
			openSeconds,
		};
	} finally {
		await image.close();
	}
}

/** One setting changed at a time from the defaults; `reps` runs each (at least 2). */
async function runSweep(
	ref: DockerReference,
	key: ImageKey,
	out: string,
	o: RegistryBenchOptions,
	curlSeconds: number,
	diskSize: number,
): Promise<SweepRow[]> {
	const variants: [string, LazyVariant][] = [
		["defaults", {}],
		["concurrency 2", { concurrency: 2 }],
		["concurrency 4", { concurrency: 4 }],
		["concurrency 16", { concurrency: 16 }],
		["maxRequestBytes 1M", { maxRequestBytes: 1 * MiB }],
		["maxRequestBytes 16M", { maxRequestBytes: 16 * MiB }],
		["readAheadMaxBytes 4M", { readAheadMaxBytes: 4 * MiB }],
		["readAheadMaxBytes 64M", { readAheadMaxBytes: 64 * MiB }],
		[
			"readAheadMaxBytes 64M, memoryBytes 256M",
			{ readAheadMaxBytes: 64 * MiB, memoryBytes: 256 * MiB },
		],
		["read-ahead off", { readAheadAfter: Number.MAX_SAFE_INTEGER }],
		["export depth 1", { exportDepth: 1 }],
		["export depth 16", { exportDepth: 16 }],
		["export runBytes 1M", { runBytes: 1 * MiB }],
		["export runBytes 16M", { runBytes: 16 * MiB, maxRequestBytes: 16 * MiB }],
	];
	const reps = Math.max(2, o.reps);
	// Round-robin (every setting once, then again), so drifting load spreads over all settings.
	const results = variants.map(() => ({
		runs: [] as number[],
		requests: 0,
		bytesFetched: 0,
	}));
	for (let i = 0; i < reps; i++)
		for (const [k, [name, v]] of variants.entries()) {
			const r = await lazyExportOnce(ref, key, out, v);
			await rm(out, { force: true });
			const res = results[k] as (typeof results)[number];
			res.runs.push(r.seconds);
			res.requests = r.stats?.requests ?? 0;
			res.bytesFetched = r.bytesFetched;
			o.log(`  sweep round ${i + 1}, ${name}: ${r.seconds.toFixed(2)} s`);
		}
	const rows: SweepRow[] = variants.map(([name, v], k) => {
		const { runs, requests, bytesFetched } = results[
			k
		] as (typeof results)[number];
		const m = median(runs);
		return {
			name,
			readAhead: v.readAheadAfter === undefined,
			memoryBytes: v.memoryBytes ?? DEFAULT_MEMORY_BYTES,
			concurrency: v.concurrency ?? DEFAULT_CONCURRENCY,
			maxRequestBytes: v.maxRequestBytes ?? DEFAULT_TUNING.maxRequestBytes,
			readAheadMaxBytes:
				v.readAheadMaxBytes ?? DEFAULT_TUNING.readAheadMaxBytes,
			exportDepth: v.exportDepth ?? 4,
			runBytes: v.runBytes ?? 4 * MiB,
			runs,
			medianSeconds: m,
			diskMiBps: diskSize / MiB / m,
			lazyToCurl: curlSeconds / m,
			requests,
			bytesFetched,
		};
	});
	return rows;
}

function startupReport(
	files: number,
	dataBytes: number,
	runs: StartupRun[],
	fullRuns: TransferRun[],
): StartupReport {
	const med = (f: (r: StartupRun) => number): number => median(runs.map(f));
	const bytesRead = med((r) => r.bytesRead);
	const bytesFetched = med((r) => r.stats.bytesFetched);
	const chunkBytesFetched = med((r) => r.stats.chunkBytesFetched);
	const touched = runs[0]?.touched ?? { chunks: 0, storedBytes: 0 };
	return {
		params: {
			fraction: STARTUP.fraction,
			minFileBytes: STARTUP.minFileBytes,
			maxFileBytes: STARTUP.maxFileBytes,
			requestBytes: STARTUP.requestBytes,
			filesInFlight: STARTUP.filesInFlight,
			seed: STARTUP.seed,
			concurrency: DEFAULT_CONCURRENCY,
		},
		files,
		dataBytes,
		runs,
		median: {
			firstBlockSeconds: med((r) => r.firstBlockSeconds),
			totalSeconds: med((r) => r.totalSeconds),
			bytesRead,
			bytesFetched,
			chunkBytesFetched,
			metadataBytesFetched: med((r) => r.stats.metadataBytesFetched),
			fetchedToRead: bytesFetched / bytesRead,
			chunkFetchedToRead: chunkBytesFetched / bytesRead,
			touchedChunks: touched.chunks,
			touchedStoredBytes: touched.storedBytes,
			chunkFetchedToTouched: chunkBytesFetched / touched.storedBytes,
			readAheadChunks: med((r) => r.stats.readAheadChunks),
			chunksFetched: med((r) => r.stats.chunksFetched),
			requests: med((r) => r.stats.requests),
			rangeRequests: med((r) => r.stats.rangeRequests),
			latencyMs: {
				p50: med((r) => r.stats.latencyMs.p50),
				p90: med((r) => r.stats.latencyMs.p90),
				p99: med((r) => r.stats.latencyMs.p99),
				max: med((r) => r.stats.latencyMs.max),
			},
		},
		fullDownload: {
			runs: fullRuns,
			medianSeconds: median(fullRuns.map((r) => r.seconds)),
			bytes: fullRuns[0]?.bytesFetched ?? 0,
		},
	};
}
