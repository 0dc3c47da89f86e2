/**
 * `npm run bench`: seal and export throughput and stored size of a realistic disk image at every
 * chunk size, with and without zstd, as ratios against baselines measured in the same run on the
 * same bytes (AES-256-GCM in one node:crypto call, the issue's limit; `openssl speed`, the CPU's AES
 * ceiling; gzip -6). Then, unless --no-images, the container-image section (bench/image-bench.ts):
 * a two-layer OCI image sealed with `dadi-seal seal` against `skopeo copy --encryption-key`. Then,
 * unless --no-registry, the registry section (bench/registry-bench.ts): lazy reads of a sealed
 * 1 GiB disk from a local docker-registry against curl downloads of the same blobs. Then, unless
 * --no-guest, the guest section (bench/guest-bench.ts): the sealed disk served as a block device
 * over NBD and FUSE (+ loop), read sequentially and at random with nbdcopy and fio, against the
 * plaintext disk and the AES-GCM decrypt limit. Then, unless --no-broker, the key-broker section
 * (bench/broker-bench.ts): KBS round trips (auth + attest + resource, sample verifier) per second
 * from 64 concurrent clients on loopback, against a bare HTTP echo server on the same stack; and,
 * unless --no-broker-attack, the key broker under attack (bench/broker-attack-bench.ts): guests'
 * latency while each attack of the abuse review runs, beside the quiet figure.
 * The cold-start section of issue 18 (bench/coldstart.ts, also `npm run bench:coldstart`) is NOT
 * part of the plain run: it builds a Debian + numpy image, converts it to eStargz, and times seven
 * variants × two workloads × two links × --reps (15–20 minutes at 5 reps); --coldstart runs it
 * (only it, with the other "only" flags those too); --no-coldstart is accepted and changes nothing.
 * See docs/benchmarks.md.
 *
 *   node dist/bench/run.js [--quick] [--json] [--json-file FILE] [--reps N]
 *                          [--chunk-sizes 16K,64K,...] [--synthetic] [--images | --no-images]
 *                          [--registry | --no-registry] [--registry-sweep]
 *                          [--guest | --no-guest] [--guest-seconds N] [--guest-profile DIR]
 *                          [--broker | --no-broker] [--broker-seconds N] [--broker-profile DIR]
 *                          [--broker-attack | --no-broker-attack] [--broker-attack-seconds N]
 *                          [--attest | --no-attest] [--coldstart | --no-coldstart]
 */

import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { constants, rmSync, statfsSync } from "node:fs";
import { access, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { availableParallelism, cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { generateImageKey } from "../src/crypto/image-key.js";
import type { CompressionName } from "../src/format/constants.js";
import {
	type AttestBenchReport,
	attestFixtures,
	runAttestBench,
} from "./attest-bench.js";
import {
	type AesLimit,
	type GzipResult,
	gzipSize,
	measureAesLimit,
	measureFirstTouch,
	measurePerChunkAes,
	mibPerSecond,
	opensslSpeed,
	type Timing,
} from "./baseline.js";
import { runBrokerAttackBench } from "./broker-attack-bench.js";
import type { AttackBenchReport } from "./broker-attack-report.js";
import { runBrokerBench } from "./broker-bench.js";
import type { BrokerBenchReport } from "./broker-report.js";
import { coldstartMissing, runColdstartBench } from "./coldstart.js";
import type { ColdstartReport } from "./coldstart-report.js";
import { VARIANTS } from "./coldstart-variants.js";
import {
	type ContainerBenchReport,
	containerBenchMissing,
	runContainerBench,
} from "./container-bench.js";
import { guestBenchMissing, runGuestBench } from "./guest-bench.js";
import type { GuestBenchReport } from "./guest-report.js";
import { prepareImage, type TestImage } from "./image.js";
import { imageBenchMissing, runImageBench } from "./image-bench.js";
import type { ImageBenchReport } from "./image-report.js";
import { type MeasureContext, measureConfig } from "./measure.js";
import { registryBenchMissing, runRegistryBench } from "./registry-bench.js";
import type { RegistryBenchReport } from "./registry-report.js";
import {
	type BenchReport,
	formatChunk,
	formatLimits,
	formatTable,
	formatTargets,
	type Machine,
	toRow,
} from "./report.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const ALL_CHUNK_SIZES = [4, 8, 16, 32, 64, 128, 256, 512, 1024].map(
	(k) => k * KiB,
);
const QUICK_CHUNK_SIZES = [4 * KiB, 64 * KiB, MiB];
const COMPRESSIONS: CompressionName[] = ["none", "zstd"];

interface Options {
	quick: boolean;
	json: boolean;
	jsonFile: string | undefined;
	reps: number;
	chunkSizes: number[];
	synthetic: boolean;
	/** Run only the container-image section. */
	images: boolean;
	/** Skip the container-image section. */
	noImages: boolean;
	/** Run only the registry section (with --images: those two). */
	registry: boolean;
	/** Skip the registry section. */
	noRegistry: boolean;
	/** Add the registry section's tuning sweep. */
	registrySweep: boolean;
	/** Run only the guest section (with --images/--registry: those too). */
	guest: boolean;
	/** Skip the guest section. */
	noGuest: boolean;
	/** Runtime of each random job of the guest section, seconds. */
	guestSeconds: number;
	/** Profile a few guest jobs and write .cpuprofile files here. */
	guestProfile: string | undefined;
	/** Run only the attestation section (with the other "only" flags: those too). */
	attest: boolean;
	/** Skip the attestation section. */
	noAttest: boolean;
	/** Run only the key-broker section (with the other "only" flags: those too). */
	broker: boolean;
	/** Skip the key-broker section. */
	noBroker: boolean;
	/** Timed seconds of each key-broker run. */
	brokerSeconds: number;
	/** Profile each key-broker server once and write .cpuprofile files here. */
	brokerProfile: string | undefined;
	/** Run only the container section (with the other "only" flags: those too). */
	containers: boolean;
	/** Skip the container section. */
	noContainers: boolean;
	/** Run only the key broker under attack section (with the other "only" flags: those too). */
	brokerAttack: boolean;
	/** Skip the key broker under attack section. */
	noBrokerAttack: boolean;
	/** Timed seconds of each run under attack. */
	brokerAttackSeconds: number;
	/** Run the cold-start section (not part of the plain run). */
	coldstart: boolean;
	/** --reps as given (the image section's default differs). */
	repsGiven: number | undefined;
}

const USAGE = `usage: node dist/bench/run.js [options]
  --quick              64 MiB image, chunk sizes 4K, 64K, 1M, one repetition (smoke test)
  --json               print the results as one JSON document on stdout (the table goes to stderr)
  --json-file FILE     also write the JSON results to FILE
  --reps N             repetitions per configuration, best kept (default 3, quick 1)
  --chunk-sizes LIST   e.g. 16K,64K,1M (default: 4K to 1M, every power of two)
  --synthetic          use the synthetic image even when mke2fs is available
  --images             run only the container-image section (dadi-seal seal of a two-layer OCI image
                       against skopeo copy --encryption-key; needs root, umoci, skopeo); best of 2,
                       --quick: one run and no --flatten/erofs variants; --reps N applies too
  --no-images          skip the container-image section
  --registry           run only the registry section (lazy reads of a sealed 1 GiB disk from a local
                       docker-registry against curl; needs docker-registry and curl); median of 3,
                       --quick: a 256 MiB disk, one run; --reps N applies too; with --images, both
  --no-registry        skip the registry section
  --registry-sweep     add a tuning sweep of the lazy export to the registry section (several minutes)
  --guest              run only the guest section (the sealed 1 GiB disk served over NBD and FUSE in
                       this process, read with nbdcopy and fio: sequential 1 MiB and random 4 KiB at
                       queue depth 16, against the plaintext disk; needs root, fio, nbdcopy, losetup);
                       median of 3, --quick: a 256 MiB disk, one run; with --images/--registry, those too
  --no-guest           skip the guest section
  --guest-seconds N    runtime of each random guest job, seconds (default 3)
  --guest-profile DIR  also profile six guest jobs once (main thread) into DIR/*.cpuprofile
  --broker             run only the key-broker section (auth + attest + resource round trips with the
                       sample verifier, 64 concurrent clients on loopback, against a bare HTTP echo
                       server; each server in its own process); median of 3, --quick: one run; --reps N
                       applies too; with --images/--registry/--guest, those too
  --no-broker          skip the key-broker section
  --broker-seconds N   timed seconds of each key-broker run, after 1 s of warm-up (default 5, quick 3)
  --broker-profile DIR also profile each key-broker server once (main thread) into DIR/*.cpuprofile
  --broker-attack      run only the key broker under attack section (4 guests' auth + attest + resource
                       latency while each attack runs — idle connections, 1 MiB bodies without a session,
                       a 40-address session flood, slow bodies — beside the quiet figure; default limits;
                       broker, attacker and guests in separate processes); with the other "only" flags,
                       those too
  --no-broker-attack   skip the key broker under attack section
  --broker-attack-seconds N  timed seconds of each run under attack (default 10, quick 4)
  --containers         run only the container section (pull + start to first output of a sealed image
                       through dadi-snapshotter vs the same image plain through containerd's overlayfs;
                       root, containerd, runc); with the other "only" flags, those too
  --no-containers      skip the container section
  --attest             run only the attestation section (SEV-SNP report and TDX quote verifications per
                       second on one core against the raw signature checks they contain; needs the
                       shared fixtures, $DADI_FIXTURES); with the other "only" flags, those too
  --no-attest          skip the attestation section
  --coldstart          run the cold-start section of issue 18 (time to first output of python3 in a
                       Debian + numpy image: ocicrypt, dadi, plain, eStargz; loopback and 200 Mbit/s;
                       root; 15–20 minutes at 5 reps; also npm run bench:coldstart); not part of
                       the plain run; with the other "only" flags, those too
  --no-coldstart       (the default) leave the cold-start section out
environment: DADI_BENCH_CACHE (image cache, default <repo>/.bench-cache),
             DADI_BENCH_TMP (scratch directory, default /dev/shm when it has room, else the OS tmpdir)
`;

function parseOptions(argv: string[]): Options {
	const { values } = parseArgs({
		args: argv,
		options: {
			quick: { type: "boolean", default: false },
			json: { type: "boolean", default: false },
			"json-file": { type: "string" },
			reps: { type: "string" },
			"chunk-sizes": { type: "string" },
			synthetic: { type: "boolean", default: false },
			images: { type: "boolean", default: false },
			"no-images": { type: "boolean", default: false },
			registry: { type: "boolean", default: false },
			"no-registry": { type: "boolean", default: false },
			"registry-sweep": { type: "boolean", default: false },
			guest: { type: "boolean", default: false },
			"no-guest": { type: "boolean", default: false },
			"guest-seconds": { type: "string" },
			"guest-profile": { type: "string" },
			broker: { type: "boolean", default: false },
			"no-broker": { type: "boolean", default: false },
			"broker-seconds": { type: "string" },
			"broker-profile": { type: "string" },
			"broker-attack": { type: "boolean", default: false },
			"no-broker-attack": { type: "boolean", default: false },
			"broker-attack-seconds": { type: "string" },
			attest: { type: "boolean", default: false },
			"no-attest": { type: "boolean", default: false },
			containers: { type: "boolean", default: false },
			"no-containers": { type: "boolean", default: false },
			coldstart: { type: "boolean", default: false },
			"no-coldstart": { type: "boolean", default: false },
			help: { type: "boolean", default: false },
		},
	});
	if (values.help) {
		process.stdout.write(USAGE);
		process.exit(0);
	}
	if (values.images && values["no-images"])
		throw new Error("--images and --no-images exclude each other");
	if (values.registry && values["no-registry"])
		throw new Error("--registry and --no-registry exclude each other");
	if (values.guest && values["no-guest"])
		throw new Error("--guest and --no-guest exclude each other");
	if (values.broker && values["no-broker"])
		throw new Error("--broker and --no-broker exclude each other");
	if (values["broker-attack"] && values["no-broker-attack"])
		throw new Error(
			"--broker-attack and --no-broker-attack exclude each other",
		);
	const quick = values.quick ?? false;
	const reps =
		values.reps === undefined ? (quick ? 1 : 3) : Number(values.reps);
	if (!Number.isInteger(reps) || reps < 1)
		throw new Error(`--reps must be a positive integer, got ${values.reps}`);
	const chunkSizes =
		values["chunk-sizes"] === undefined
			? quick
				? QUICK_CHUNK_SIZES
				: ALL_CHUNK_SIZES
			: values["chunk-sizes"].split(",").map(parseChunkSize);
	const guestSeconds =
		values["guest-seconds"] === undefined ? 3 : Number(values["guest-seconds"]);
	if (!Number.isInteger(guestSeconds) || guestSeconds < 1)
		throw new Error(
			`--guest-seconds must be a positive integer, got ${values["guest-seconds"]}`,
		);
	const brokerSeconds =
		values["broker-seconds"] === undefined
			? quick
				? 3
				: 5
			: Number(values["broker-seconds"]);
	if (!Number.isInteger(brokerSeconds) || brokerSeconds < 1)
		throw new Error(
			`--broker-seconds must be a positive integer, got ${values["broker-seconds"]}`,
		);
	const brokerAttackSeconds =
		values["broker-attack-seconds"] === undefined
			? quick
				? 4
				: 10
			: Number(values["broker-attack-seconds"]);
	if (!Number.isInteger(brokerAttackSeconds) || brokerAttackSeconds < 1)
		throw new Error(
			`--broker-attack-seconds must be a positive integer, got ${values["broker-attack-seconds"]}`,
		);
	return {
		quick,
		json: values.json ?? false,
		jsonFile: values["json-file"],
		reps,
		chunkSizes,
		synthetic: values.synthetic ?? false,
		images: values.images ?? false,
		noImages: values["no-images"] ?? false,
		registry: values.registry ?? false,
		noRegistry: values["no-registry"] ?? false,
		registrySweep: values["registry-sweep"] ?? false,
		guest: values.guest ?? false,
		noGuest: values["no-guest"] ?? false,
		guestSeconds,
		guestProfile: values["guest-profile"],
		broker: values.broker ?? false,
		noBroker: values["no-broker"] ?? false,
		attest: values.attest ?? false,
		noAttest: values["no-attest"] ?? false,
		containers: values.containers ?? false,
		noContainers: values["no-containers"] ?? false,
		coldstart:
			(values.coldstart ?? false) && !(values["no-coldstart"] ?? false),
		brokerSeconds,
		brokerProfile: values["broker-profile"],
		brokerAttack: values["broker-attack"] ?? false,
		noBrokerAttack: values["no-broker-attack"] ?? false,
		brokerAttackSeconds,
		repsGiven: values.reps === undefined ? undefined : reps,
	};
}

function parseChunkSize(text: string): number {
	const m = /^(\d+)([KM]?)$/i.exec(text.trim());
	const n = m
		? Number(m[1]) * (m[2]?.toUpperCase() === "M" ? MiB : m[2] ? KiB : 1)
		: Number.NaN;
	if (!ALL_CHUNK_SIZES.includes(n))
		throw new Error(
			`chunk size "${text}" must be a power of two from 4K to 1M`,
		);
	return n;
}

// --- environment -------------------------------------------------------------------------------

const REPO = fileURLToPath(new URL("../../", import.meta.url));

function machine(): Machine {
	const lscpu = spawnSync("lscpu", { encoding: "utf8" });
	const model = /^Model name:\s*(.+)$/m.exec(lscpu.stdout ?? "")?.[1]?.trim();
	return {
		nproc: availableParallelism(),
		cpu: model ?? cpus()[0]?.model ?? "unknown",
		node: process.version,
		openssl: process.versions.openssl ?? "unknown",
		platform: `${process.platform} ${process.arch}`,
	};
}

/** /dev/shm when it is writable and roomy (no disk I/O in the figures), else the OS tmpdir. */
async function scratchBase(need: number): Promise<string> {
	if (process.env.DADI_BENCH_TMP) return process.env.DADI_BENCH_TMP;
	try {
		await access("/dev/shm", constants.W_OK);
		const s = statfsSync("/dev/shm");
		if (s.bavail * s.bsize >= need) return "/dev/shm";
	} catch {
		// no tmpfs: fall through
	}
	return tmpdir();
}

function describeScratch(dir: string): string {
	const tmpfs = dir.startsWith("/dev/shm");
	return tmpfs
		? `${dir} (tmpfs: layouts and exports live in memory, fsync costs nothing; the source image is read through the page cache, warmed before timing)`
		: `${dir} (a disk-backed directory: seal and export include their fsync; the source image is read through the page cache, warmed before timing)`;
}

// --- main --------------------------------------------------------------------------------------

async function main(): Promise<void> {
	let opts: Options;
	try {
		opts = parseOptions(process.argv.slice(2));
	} catch (e) {
		process.stderr.write(`${(e as Error).message}\n${USAGE}`);
		process.exitCode = 2;
		return;
	}
	const size = (opts.quick ? 64 : 256) * MiB;
	const log = (line: string): void => {
		process.stderr.write(`${line}\n`);
	};
	const print = (text: string): void => {
		(opts.json ? process.stderr : process.stdout).write(text);
	};

	const workDir = await mkdtemp(
		// The registry section needs room for its sealed layout and a 1 GiB export, the guest
		// section for its sealed layout and the plaintext disk.
		join(
			await scratchBase(
				Math.max(
					4 * size,
					opts.noRegistry ? 0 : (opts.quick ? 640 : 2048) * MiB,
					opts.noGuest ? 0 : (opts.quick ? 384 : 1536) * MiB,
				),
			),
			"dadi-bench-",
		),
	);
	const cleanup = (): void => rmSync(workDir, { recursive: true, force: true });
	const onSignal = (sig: NodeJS.Signals): void => {
		cleanup();
		process.stderr.write(`\ninterrupted (${sig}); scratch files removed\n`);
		process.exit(130);
	};
	process.once("SIGINT", onSignal);
	process.once("SIGTERM", onSignal);
	process.once("exit", cleanup); // also after an uncaught error (e.g. EPIPE on stdout)
	try {
		const started = performance.now();
		// --images, --registry, --guest and --broker each select their section alone (together:
		// those).
		const only =
			opts.images ||
			opts.registry ||
			opts.guest ||
			opts.broker ||
			opts.brokerAttack ||
			opts.attest ||
			opts.containers ||
			opts.coldstart;
		const disk = only
			? undefined
			: await bench(opts, size, workDir, log, print);
		let images: ImageBenchReport | { skipped: string } | undefined;
		if (!opts.noImages && (!only || opts.images)) {
			const missing = imageBenchMissing(REPO);
			if (missing === null)
				images = await runImageBench({
					repo: REPO,
					cacheDir: process.env.DADI_BENCH_CACHE ?? join(REPO, ".bench-cache"),
					workDir,
					workDirDescription: describeScratch(workDir),
					reps: opts.repsGiven ?? (opts.quick ? 1 : 2),
					quick: opts.quick,
					log,
					print,
				});
			else {
				log(`container-image section skipped: ${missing}`);
				images = { skipped: missing };
				if (opts.images) process.exitCode = 1;
			}
		}
		let registry: RegistryBenchReport | { skipped: string } | undefined;
		if (!opts.noRegistry && (!only || opts.registry)) {
			const missing = registryBenchMissing();
			if (missing === null)
				registry = await runRegistryBench({
					repo: REPO,
					cacheDir: process.env.DADI_BENCH_CACHE ?? join(REPO, ".bench-cache"),
					workDir,
					workDirDescription: describeScratch(workDir),
					reps: opts.repsGiven ?? (opts.quick ? 1 : 3),
					quick: opts.quick,
					synthetic: opts.synthetic,
					sweep: opts.registrySweep,
					log,
					print,
				});
			else {
				log(`registry section skipped: ${missing}`);
				registry = { skipped: missing };
				if (opts.registry) process.exitCode = 1;
			}
		}
		let guest: GuestBenchReport | { skipped: string } | undefined;
		if (!opts.noGuest && (!only || opts.guest)) {
			const missing = guestBenchMissing();
			if (missing === null)
				guest = await runGuestBench({
					cacheDir: process.env.DADI_BENCH_CACHE ?? join(REPO, ".bench-cache"),
					workDir,
					workDirDescription: describeScratch(workDir),
					reps: opts.repsGiven ?? (opts.quick ? 1 : 3),
					quick: opts.quick,
					synthetic: opts.synthetic,
					randomSeconds: opts.guestSeconds,
					...(opts.guestProfile === undefined
						? {}
						: { profileDir: opts.guestProfile }),
					log,
					print,
				});
			else {
				log(`guest section skipped: ${missing}`);
				guest = { skipped: missing };
				if (opts.guest) process.exitCode = 1;
			}
		}
		let broker: BrokerBenchReport | undefined;
		if (!opts.noBroker && (!only || opts.broker))
			broker = await runBrokerBench({
				seconds: opts.brokerSeconds,
				clients: 64,
				reps: opts.repsGiven ?? (opts.quick ? 1 : 3),
				quick: opts.quick,
				workDir,
				...(opts.brokerProfile === undefined
					? {}
					: { profileDir: opts.brokerProfile }),
				log,
				print,
			});
		let brokerAttack: AttackBenchReport | undefined;
		if (!opts.noBrokerAttack && (!only || opts.brokerAttack))
			brokerAttack = await runBrokerAttackBench({
				seconds: opts.brokerAttackSeconds,
				quick: opts.quick,
				workDir,
				log,
				print,
			});
		let attest: AttestBenchReport | { skipped: string } | undefined;
		if (!opts.noAttest && (!only || opts.attest)) {
			const fixtures = attestFixtures(REPO);
			if (fixtures)
				attest = await runAttestBench({
					fixtures,
					seconds: opts.quick ? 3 : 6,
					log,
					print,
				});
			else {
				const why =
					"the shared attestation fixtures were not found (set DADI_FIXTURES)";
				log(`attestation section skipped: ${why}`);
				attest = { skipped: why };
				if (opts.attest) process.exitCode = 1;
			}
		}
		let containers: ContainerBenchReport | { skipped: string } | undefined;
		if (!opts.noContainers && (!only || opts.containers)) {
			const missing = containerBenchMissing();
			if (missing === null)
				containers = await runContainerBench({
					repo: REPO,
					cacheDir: process.env.DADI_BENCH_CACHE ?? join(REPO, ".bench-cache"),
					workDir,
					reps: opts.repsGiven ?? (opts.quick ? 1 : 3),
					log,
					print,
				});
			else {
				log(`container section skipped: ${missing}`);
				containers = { skipped: missing };
				if (opts.containers) process.exitCode = 1;
			}
		}
		let coldstart: ColdstartReport | { skipped: string } | undefined;
		if (opts.coldstart) {
			const missing = coldstartMissing();
			if (missing === null)
				coldstart = await runColdstartBench({
					repo: REPO,
					cacheDir: process.env.DADI_BENCH_CACHE ?? join(REPO, ".bench-cache"),
					// On a disk, not /dev/shm: unpacking is part of what is timed, and caches are dropped.
					workDir: process.env.DADI_BENCH_TMP ?? tmpdir(),
					reps: opts.repsGiven ?? (opts.quick ? 1 : 5),
					variants: [...VARIANTS],
					links: opts.quick ? ["loopback"] : ["loopback", "200mbit"],
					workloads: opts.quick ? ["print"] : ["print", "numpy"],
					log,
					print,
				});
			else {
				log(`cold-start section skipped: ${missing}`);
				coldstart = { skipped: missing };
				process.exitCode = 1;
			}
		}
		const sections = [
			disk,
			images,
			registry,
			guest,
			broker,
			brokerAttack,
			attest,
			containers,
			coldstart,
		].filter((x) => x !== undefined);
		if (sections.length > 1)
			log(
				`whole bench took ${((performance.now() - started) / 1000).toFixed(0)} s`,
			);
		// One document: the disk report with "images", "registry", "guest" and "broker" members;
		// without the disk section, the one section's report alone, or the sections under their names.
		const named = {
			...(images === undefined ? {} : { images }),
			...(registry === undefined ? {} : { registry }),
			...(guest === undefined ? {} : { guest }),
			...(broker === undefined ? {} : { broker }),
			...(brokerAttack === undefined ? {} : { brokerAttack }),
			...(attest === undefined ? {} : { attest }),
			...(containers === undefined ? {} : { containers }),
			...(coldstart === undefined ? {} : { coldstart }),
		};
		const report =
			disk !== undefined
				? { ...disk, ...named }
				: Object.keys(named).length === 1
					? Object.values(named)[0]
					: named;
		if (opts.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
		if (opts.jsonFile !== undefined) {
			await writeFile(opts.jsonFile, `${JSON.stringify(report, null, 2)}\n`);
			log(`results written to ${opts.jsonFile}`);
		}
	} finally {
		await rm(workDir, { recursive: true, force: true });
		process.off("SIGINT", onSignal);
		process.off("SIGTERM", onSignal);
		process.off("exit", cleanup);
	}
}

async function bench(
	opts: Options,
	size: number,
	workDir: string,
	log: (line: string) => void,
	print: (text: string) => void,
): Promise<BenchReport> {
	const started = performance.now();
	const image = await prepareImage({
		cacheDir: process.env.DADI_BENCH_CACHE ?? join(REPO, ".bench-cache"),
		workDir,
		size,
		forceSynthetic: opts.synthetic,
		log,
	});
	log("measuring baselines (AES-256-GCM, gzip -6, openssl speed)...");
	const base = await measureBaselines(image, opts.chunkSizes);
	const report: BenchReport = {
		schema: "dadi-bench/1",
		date: new Date().toISOString(),
		quick: opts.quick,
		machine: machine(),
		image: { ...image, sha256: base.sha256 },
		workDir: describeScratch(workDir),
		limits: base.limits,
		rows: [],
	};
	print(`${formatLimits(report)}\n`);

	const ctx: MeasureContext = {
		image,
		imageSha256: base.sha256,
		key: generateImageKey(),
		workDir,
		reps: opts.reps,
	};
	for (const compression of COMPRESSIONS)
		for (const chunkSize of opts.chunkSizes) {
			const r = await measureConfig(ctx, { compression, chunkSize });
			const row = toRow(r, base.aes, base.gzip, base.limits.opensslSpeed);
			report.rows.push(row);
			log(
				`  ${compression} ${formatChunk(chunkSize)}: seal ${row.seal.bestSeconds.toFixed(2)} s, export ${row.export.bestSeconds.toFixed(2)} s, ${row.layerBytes} bytes, ${row.storedChunks} chunks in ${row.extents} extents`,
			);
		}

	print(
		`seal and export, ${opts.reps === 1 ? "one run" : `best of ${opts.reps}`} each; MiB/s = ${size / MiB} MiB image / wall time; ratios against the limits above\n\n`,
	);
	print(`${formatTable(report.rows)}\n`);
	print(formatTargets(report.rows));
	log(`bench took ${((performance.now() - started) / 1000).toFixed(0)} s`);
	return report;
}

/**
 * Every baseline, on the image bytes held in memory (reading them also warms the page cache for
 * the library runs), then gzip -6 on the image file.
 */
async function measureBaselines(
	image: TestImage,
	chunkSizes: number[],
): Promise<{
	sha256: string;
	aes: AesLimit;
	gzip: GzipResult | null;
	limits: BenchReport["limits"];
}> {
	const data = await readFile(image.path);
	const sha256 = createHash("sha256").update(data).digest("hex");
	const aes = measureAesLimit(data, 5);
	const firstTouch = measureFirstTouch(data.length, 5);
	const perChunk = chunkSizes.map((chunkSize) => {
		const timing = measurePerChunkAes(data, chunkSize, 2);
		return { chunkSize, MiBps: mibPerSecond(timing), timing };
	});
	const gzip = await gzipSize(image.path);
	const sslEnc = opensslSpeed(false, 2);
	const sslDec = opensslSpeed(true, 2);
	const withSpeed = (t: Timing) => ({ ...t, MiBps: mibPerSecond(t) });
	return {
		sha256,
		aes,
		gzip,
		limits: {
			aesGcmEncrypt: withSpeed(aes.encrypt),
			aesGcmDecrypt: withSpeed(aes.decrypt),
			aesGcmStreamEncrypt: withSpeed(aes.streamEncrypt),
			aesGcmStreamDecrypt: withSpeed(aes.streamDecrypt),
			firstTouchWrite: withSpeed(firstTouch),
			opensslSpeed:
				sslEnc === null || sslDec === null
					? null
					: { encryptMiBps: sslEnc, decryptMiBps: sslDec },
			perChunkAesEncrypt: perChunk,
			gzip6:
				gzip === null
					? null
					: { ...gzip, MiBps: image.size / MiB / gzip.seconds },
		},
	};
}

main().catch((e: unknown) => {
	process.stderr.write(
		`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`,
	);
	process.exitCode = 1;
});
