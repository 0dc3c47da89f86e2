/**
 * The container-image section of `npm run bench` (`--images` runs only this): the two-layer OCI
 * image of image-oci.ts sealed with the dadi CLI and encrypted with skopeo/ocicrypt, interleaved,
 * on the same source, in the same run. See docs/benchmarks.md, "Sealing container images".
 */
import type { ChildProcess } from "node:child_process";
import { spawnSync } from "node:child_process";
import { mkdir, rm } from "node:fs/promises";
import { loadavg } from "node:os";
import { join } from "node:path";
import {
	type CopyResult,
	copyOnce,
	DEFAULT_VARIANT,
	gunzipSeconds,
	type ImageMeasureContext,
	measureSeal,
	OTHER_VARIANTS,
	type SealResult,
	SKOPEO_COMMAND,
	which,
	writeWrappers,
} from "./image-measure.js";
import { prepareOciImage, umociMissing } from "./image-oci.js";
import {
	formatImageHeader,
	formatImageTargets,
	formatPhases,
	formatSizes,
	formatTimes,
	type ImageBenchReport,
	ratiosOf,
} from "./image-report.js";

export interface ImageBenchOptions {
	repo: string;
	cacheDir: string;
	/** Scratch directory (removed by the caller); this section works in a subdirectory. */
	workDir: string;
	workDirDescription: string;
	reps: number;
	quick: boolean;
	log: (line: string) => void;
	print: (text: string) => void;
}

/** Why the section cannot run here, or null. */
export function imageBenchMissing(repo: string): string | null {
	if (process.getuid?.() !== 0)
		return "sealing a container image needs root (dadi-seal rebuilds owners and device nodes)";
	const u = umociMissing();
	if (u !== null) return u;
	for (const [tool, pkg] of [
		["skopeo", "skopeo"],
		["openssl", "openssl"],
		["gzip", "gzip"],
		["mke2fs", "e2fsprogs"],
		["debugfs", "e2fsprogs"],
	] as const)
		if (which(tool) === null)
			return `${tool} not found (Debian: apt-get install ${pkg})`;
	if (spawnSync(process.execPath, [cliPath(repo), "--help"]).status !== 0)
		return `${cliPath(repo)} does not run (npm run build)`;
	return null;
}

const cliPath = (repo: string): string =>
	join(repo, "dist/src/cli/dadi-seal.js");

function version(cmd: string, args: string[], re: RegExp): string {
	const r = spawnSync(cmd, args, { encoding: "utf8" });
	return re.exec(`${r.stdout ?? ""}${r.stderr ?? ""}`)?.[1] ?? "?";
}

function debVersion(pkg: string): string {
	// Default output: "NAME<TAB>VERSION".
	const r = spawnSync("dpkg-query", ["-W", pkg], { encoding: "utf8" });
	return (r.status === 0 && r.stdout.trim().split("\t")[1]) || "?";
}

export async function runImageBench(
	o: ImageBenchOptions,
): Promise<ImageBenchReport> {
	const started = performance.now();
	const loadStart = loadavg();
	const work = join(o.workDir, "images");
	await mkdir(work, { recursive: true });
	const live = new Set<ChildProcess>();
	// run.ts exits on Ctrl-C: stop what is still running (its scratch files go with workDir).
	const stopChildren = (): void => {
		for (const c of live) c.kill("SIGTERM");
	};
	process.on("exit", stopChildren);
	try {
		const image = await prepareOciImage({
			cacheDir: o.cacheDir,
			workDir: work,
			log: o.log,
		});
		const blobs = image.layers.map((l) =>
			join(image.dir, "blobs", "sha256", l.digest.slice(7)),
		);
		o.log("container images: keys, gzip -dc baseline...");
		const key = join(work, "image.jwk");
		const cli = cliPath(o.repo);
		run(process.execPath, [cli, "keygen", "--out", key]);
		const priv = join(work, "priv.pem");
		const pub = join(work, "pub.pem");
		run("openssl", ["genrsa", "-out", priv, "2048"]);
		run("openssl", ["rsa", "-in", priv, "-pubout", "-out", pub]);
		const wrapperDir = join(work, "bin");
		const toolLog = join(work, "tools.log");
		const missingTools = await writeWrappers(wrapperDir, toolLog);
		const ctx: ImageMeasureContext = {
			cli,
			source: { dir: image.dir, tag: image.tag },
			key,
			publicKeyPem: pub,
			workDir: work,
			wrapperDir,
			toolLog,
			live,
		};
		const gunzip = gunzipSeconds(blobs);

		// ocicrypt and dadi alternate: S D S D ..., on the same source, best of reps each.
		const copyTimes: number[] = [];
		const encSizes: number[] = [];
		const copy = async (): Promise<void> => {
			const i = copyTimes.length;
			copyTimes.push(await copyOnce(ctx, i, encSizes));
			o.log(
				`  skopeo copy --encryption-key, run ${i + 1}: ${copyTimes[i]?.toFixed(2)} s`,
			);
		};
		await copy();
		const seal = await measureSeal(ctx, DEFAULT_VARIANT, o.reps, {
			verify: true,
			between: copy,
		});
		o.log(
			`  dadi-seal seal (${DEFAULT_VARIANT.name}): ${seal.runs.map((r) => r.seconds.toFixed(2)).join(", ")} s`,
		);
		const ocicrypt: CopyResult = {
			command: SKOPEO_COMMAND,
			runs: copyTimes,
			bestSeconds: Math.min(...copyTimes),
			layerBytes: encSizes,
		};

		const variants: SealResult[] = [];
		if (!o.quick)
			for (const v of OTHER_VARIANTS) {
				if (v.fs === "erofs" && missingTools.includes("mkfs.erofs")) {
					o.log(`  ${v.name}: skipped, mkfs.erofs not found (erofs-utils)`);
					continue;
				}
				const r = await measureSeal(ctx, v, 1, { verify: false });
				variants.push(r);
				o.log(`  dadi-seal seal (${v.name}): ${r.best.seconds.toFixed(2)} s`);
			}

		const report: ImageBenchReport = {
			schema: "dadi-bench-images/1",
			date: new Date().toISOString(),
			quick: o.quick,
			reps: o.reps,
			image,
			tools: {
				node: process.version,
				umoci: image.umoci,
				skopeo: version("skopeo", ["--version"], /version (\S+)/),
				e2fsprogs: version(which("mke2fs") ?? "mke2fs", ["-V"], /mke2fs (\S+)/),
				"erofs-utils": debVersion("erofs-utils"),
				gzip: version("gzip", ["--version"], /gzip (\S+)/),
			},
			workDir: o.workDirDescription,
			loadAverage: { start: loadStart, end: loadavg() },
			gunzipSeconds: gunzip,
			ocicrypt,
			seal,
			variants,
			ratios: ratiosOf(image, seal, ocicrypt),
		};
		o.print(`\n${formatImageHeader(report)}\n`);
		o.print(`${formatTimes(report)}\n`);
		o.print(`${formatPhases(seal)}\n`);
		o.print(`${formatSizes(report)}\n`);
		o.print(formatImageTargets(report));
		o.log(
			`image section took ${((performance.now() - started) / 1000).toFixed(0)} s`,
		);
		return report;
	} finally {
		process.off("exit", stopChildren);
		stopChildren();
		await rm(work, { recursive: true, force: true });
	}
}

function run(cmd: string, args: string[]): void {
	const r = spawnSync(cmd, args, { encoding: "utf8" });
	if (r.error !== undefined || r.status !== 0)
		throw new Error(
			`${cmd} ${args.join(" ")} failed: ${r.error?.message ?? r.stderr}`,
		);
}
