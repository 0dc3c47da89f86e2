/**
 * Sealing the two-layer container image, as a user does it: `dadi-seal seal oci:SRC:TAG oci:DST:t`
 * (the real CLI, in a child process), against the ocicrypt peer `skopeo copy --encryption-key
 * jwe:PUB.pem`, both timed as wall time of the whole command. The dadi runs keep their progress
 * lines (stderr, one per phase and quarter) and time-stamp them on arrival for a phase breakdown;
 * mke2fs, debugfs and mkfs.erofs are reached through logging wrappers put first on PATH, which
 * split the file-system build into its tools.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { chmod, mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { layerDigests } from "./image-oci.js";

/** One variant of `dadi-seal seal` for a container image. */
export interface SealVariant {
	name: string;
	fs: "ext4" | "erofs";
	flatten: boolean;
}

export const DEFAULT_VARIANT: SealVariant = {
	name: "ext4",
	fs: "ext4",
	flatten: false,
};

export const OTHER_VARIANTS: SealVariant[] = [
	{ name: "ext4 --flatten", fs: "ext4", flatten: true },
	{ name: "erofs", fs: "erofs", flatten: false },
	{ name: "erofs --flatten", fs: "erofs", flatten: true },
];

export interface PhaseTime {
	/** "start-up", "census", "layer 1: apply", "layer 1: mke2fs", ..., "finish". */
	name: string;
	/** What kind of work: start-up, census, apply, mkfs, fs-walk, seal, finish. */
	kind:
		| "start-up"
		| "census"
		| "apply"
		| "mkfs"
		| "fs-walk"
		| "seal"
		| "finish";
	seconds: number;
}

export interface SealLayerResult {
	digest: string;
	/** Stored (gzip) bytes of the source layers this sealed layer covers. */
	sourceBytes: number;
	storedBytes: number;
	storedChunks: number;
	zeroChunks: number;
}

export interface SealRun {
	/** Wall time of the command, from spawn to exit. */
	seconds: number;
	/** What the CLI itself reports (`seconds` in its JSON): no process start-up. */
	cliSeconds: number;
	phases: PhaseTime[];
}

export interface SealResult {
	variant: SealVariant;
	command: string;
	runs: SealRun[];
	best: SealRun;
	virtualSize: number;
	chunkSize: number;
	layers: SealLayerResult[];
	/** `dadi-seal verify` of the first run's output (untimed), when it was checked. */
	verified?: boolean;
}

export interface CopyResult {
	command: string;
	runs: number[];
	bestSeconds: number;
	/** Encrypted layer blob sizes in the destination. */
	layerBytes: number[];
}

/** Runs a command; returns its wall time, stdout and the stderr lines with arrival times. */
async function timed(
	cmd: string,
	args: string[],
	env: NodeJS.ProcessEnv,
	live: Set<ChildProcess>,
): Promise<{
	seconds: number;
	stdout: string;
	lines: { t: number; text: string }[];
}> {
	const t0 = performance.now();
	const child = spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"] });
	live.add(child);
	let stdout = "";
	let partial = "";
	const lines: { t: number; text: string }[] = [];
	child.stdout.setEncoding("utf8").on("data", (d: string) => {
		stdout += d;
	});
	child.stderr.setEncoding("utf8").on("data", (d: string) => {
		const t = (performance.now() - t0) / 1000;
		const parts = (partial + d).split("\n");
		partial = parts.pop() ?? "";
		for (const text of parts) lines.push({ t, text });
	});
	const code = await new Promise<number | null>((resolve, reject) => {
		child.on("error", reject);
		child.on("close", (c) => resolve(c));
	});
	live.delete(child);
	const seconds = (performance.now() - t0) / 1000;
	if (partial !== "") lines.push({ t: seconds, text: partial });
	if (code !== 0)
		throw new Error(
			`${cmd} ${args.join(" ")} failed (exit ${code}): ${lines
				.slice(-5)
				.map((l) => l.text)
				.join(" / ")}`,
		);
	return { seconds, stdout, lines };
}

export interface ImageMeasureContext {
	cli: string;
	source: { dir: string; tag: string };
	key: string;
	publicKeyPem: string;
	workDir: string;
	/** Directory of the logging wrappers, prepended to PATH. */
	wrapperDir: string;
	toolLog: string;
	live: Set<ChildProcess>;
}

/** The tools the file-system build runs, wrapped to log start and end (ns since the epoch). */
export const WRAPPED_TOOLS = ["mke2fs", "debugfs", "mkfs.erofs"];

/** Writes logging wrappers for WRAPPED_TOOLS into `dir`; returns the missing tools. */
export async function writeWrappers(
	dir: string,
	log: string,
): Promise<string[]> {
	await mkdir(dir, { recursive: true });
	const missing: string[] = [];
	for (const tool of WRAPPED_TOOLS) {
		const real = which(tool);
		if (real === null) {
			missing.push(tool);
			continue;
		}
		const script = `#!/bin/sh\ns=$(date +%s%N)\n'${real}' "$@"\nrc=$?\necho "${tool} $s $(date +%s%N) $rc" >> '${log}'\nexit $rc\n`;
		await writeFile(join(dir, tool), script);
		await chmod(join(dir, tool), 0o755);
	}
	return missing;
}

/** The absolute path of a program, also looked up in sbin directories. */
export function which(tool: string): string | null {
	const r = spawnSync("sh", ["-c", `command -v '${tool}'`], {
		encoding: "utf8",
		env: {
			...process.env,
			PATH: `${process.env.PATH ?? ""}:/usr/local/sbin:/usr/sbin:/sbin`,
		},
	});
	const p = r.stdout?.trim();
	return r.status === 0 && p ? p : null;
}

function variantArgs(v: SealVariant): string[] {
	return [
		...(v.fs === "ext4" ? [] : ["--fs", v.fs]),
		...(v.flatten ? ["--flatten"] : []),
	];
}

/** Seals the source `reps` times with one variant; removes the output after each run. */
export async function measureSeal(
	ctx: ImageMeasureContext,
	v: SealVariant,
	reps: number,
	opts: { verify: boolean; between?: () => Promise<void> },
): Promise<SealResult> {
	const runs: SealRun[] = [];
	let result: Omit<SealResult, "runs" | "best"> | undefined;
	for (let rep = 0; rep < reps; rep++) {
		const dest = join(ctx.workDir, `sealed-${rep}`);
		const work = join(ctx.workDir, "seal-work");
		await mkdir(work, { recursive: true });
		await rm(ctx.toolLog, { force: true });
		const args = [
			ctx.cli,
			"seal",
			`oci:${ctx.source.dir}:${ctx.source.tag}`,
			`oci:${dest}:t`,
			"--key",
			ctx.key,
			...variantArgs(v),
			"--work-dir",
			work,
			"--json",
		];
		try {
			const r = await timed(
				process.execPath,
				args,
				{
					...process.env,
					PATH: `${ctx.wrapperDir}:${process.env.PATH ?? ""}:/usr/sbin:/sbin`,
					TMPDIR: work,
				},
				ctx.live,
			);
			const out = JSON.parse(r.stdout) as {
				seconds: number;
				virtualSize: number;
				chunkSize: number;
				layers: SealLayerResult[];
			};
			const tools = await readToolLog(ctx.toolLog);
			runs.push({
				seconds: r.seconds,
				cliSeconds: out.seconds,
				phases: phasesOf(r.lines, r.seconds, tools),
			});
			if (result === undefined) {
				result = {
					variant: v,
					command: [
						"dadi-seal seal",
						`oci:SRC:${ctx.source.tag} oci:DST:t --key K`,
						...variantArgs(v),
						"--work-dir W --json",
					].join(" "),
					virtualSize: out.virtualSize,
					chunkSize: out.chunkSize,
					layers: out.layers.map((l) => ({
						digest: l.digest,
						sourceBytes: l.sourceBytes,
						storedBytes: l.storedBytes,
						storedChunks: l.storedChunks,
						zeroChunks: l.zeroChunks,
					})),
				};
				if (opts.verify) result.verified = verify(ctx, dest);
			}
		} finally {
			await rm(dest, { recursive: true, force: true });
			await rm(work, { recursive: true, force: true });
		}
		if (rep < reps - 1) await opts.between?.();
	}
	if (result === undefined) throw new Error("no runs");
	const best = runs.reduce((a, b) => (b.seconds < a.seconds ? b : a));
	return { ...result, runs, best };
}

function verify(ctx: ImageMeasureContext, dest: string): boolean {
	const r = spawnSync(
		process.execPath,
		[ctx.cli, "verify", `oci:${dest}:t`, "--key", ctx.key, "--json", "--quiet"],
		{ encoding: "utf8" },
	);
	try {
		return r.status === 0 && (JSON.parse(r.stdout) as { ok: boolean }).ok;
	} catch {
		return false;
	}
}

/** One `skopeo copy --encryption-key jwe:PUB` of the source; returns its wall time. */
export async function copyOnce(
	ctx: ImageMeasureContext,
	rep: number,
	sizes: number[],
): Promise<number> {
	const dest = join(ctx.workDir, `ocicrypt-${rep}`);
	try {
		const r = await timed(
			"skopeo",
			[
				"copy",
				"--insecure-policy",
				"--quiet",
				"--encryption-key",
				`jwe:${ctx.publicKeyPem}`,
				`oci:${ctx.source.dir}:${ctx.source.tag}`,
				`oci:${dest}:${ctx.source.tag}`,
			],
			{ ...process.env, TMPDIR: ctx.workDir },
			ctx.live,
		);
		if (sizes.length === 0)
			for (const d of await layerDigests(dest, ctx.source.tag))
				sizes.push(
					(await stat(join(dest, "blobs", "sha256", d.slice(7)))).size,
				);
		return r.seconds;
	} finally {
		await rm(dest, { recursive: true, force: true });
	}
}

export const SKOPEO_COMMAND =
	"skopeo copy --insecure-policy --quiet --encryption-key jwe:pub.pem oci:SRC:TAG oci:DST2:TAG";

interface ToolRun {
	tool: string;
	start: number;
	end: number;
}

async function readToolLog(path: string): Promise<ToolRun[]> {
	let text = "";
	try {
		text = await readFile(path, "utf8");
	} catch {
		return [];
	}
	return text
		.split("\n")
		.filter((l) => l.trim() !== "")
		.map((l) => {
			const [tool, s, e] = l.split(" ");
			return {
				tool: tool as string,
				start: Number(s) / 1e9,
				end: Number(e) / 1e9,
			};
		});
}

/** "PHASE: 42% (…)" for measured phases, "PHASE…" for announced ones. */
const PROGRESS_RE = /^(.*?)(?:: \d+% \(.*|…)$/;

/**
 * Phases from the CLI's progress lines: each phase runs from its first line to the first line of
 * the next; the last ends at its last line, and what follows (config, manifest, clean-up, exit) is
 * "finish". Before the first line: node start-up, loading, opening the source image. A build phase
 * is split into the wrapped tools it ran (in order) and the rest ("fs-walk": the CLI's own walks
 * of the staging directory, e.g. for the debugfs time script).
 */
export function phasesOf(
	lines: { t: number; text: string }[],
	total: number,
	tools: ToolRun[],
): PhaseTime[] {
	const firsts: { phase: string; t: number }[] = [];
	let lastT = 0;
	for (const l of lines) {
		const m = PROGRESS_RE.exec(l.text);
		if (m === null) continue;
		const raw = m[1] as string;
		const phase = raw.startsWith("checking layer") ? "checking layers" : raw;
		if (firsts[firsts.length - 1]?.phase !== phase)
			firsts.push({ phase, t: l.t });
		lastT = l.t;
	}
	const out: PhaseTime[] = [];
	if (firsts.length === 0)
		return [{ name: "total", kind: "finish", seconds: total }];
	out.push({
		name: "start-up",
		kind: "start-up",
		seconds: (firsts[0] as { t: number }).t,
	});
	const queue = [...tools];
	for (const [i, f] of firsts.entries()) {
		const end = firsts[i + 1]?.t ?? lastT;
		const seconds = end - f.t;
		const layer = /^layer (\d+)\/\d+: (.*)$/.exec(f.phase);
		if (layer === null) {
			out.push({
				name: f.phase === "checking layers" ? "census" : f.phase,
				kind: "census",
				seconds,
			});
			continue;
		}
		const [, n, what] = layer as unknown as [string, string, string];
		if (what.startsWith("building")) {
			// The wrapped tools run in this phase, in order: as many as the fs type needs.
			const fs = what.replace("building ", "");
			const mine =
				fs === "ext4"
					? takeTools(queue, ["mke2fs", "debugfs"])
					: takeTools(queue, ["mkfs.erofs"]);
			let rest = seconds;
			for (const t of mine) {
				out.push({
					name: `layer ${n}: ${t.tool}`,
					kind: "mkfs",
					seconds: t.end - t.start,
				});
				rest -= t.end - t.start;
			}
			out.push({
				name: `layer ${n}: ${fs} other`,
				kind: "fs-walk",
				seconds: Math.max(0, rest),
			});
		} else
			out.push({
				name: `layer ${n}: ${what === "applying" ? "apply" : what === "sealing" ? "seal" : what}`,
				kind: what === "applying" ? "apply" : "seal",
				seconds,
			});
	}
	out.push({ name: "finish", kind: "finish", seconds: total - lastT });
	return out;
}

function takeTools(queue: ToolRun[], names: string[]): ToolRun[] {
	const out: ToolRun[] = [];
	for (const name of names) {
		const i = queue.findIndex((t) => t.tool === name);
		if (i >= 0) out.push(...queue.splice(i, 1));
	}
	return out;
}

/** Time to decompress the source layers with `gzip -dc` to /dev/null (one pass each). */
export function gunzipSeconds(blobs: string[]): number {
	const t0 = performance.now();
	for (const b of blobs) {
		const r = spawnSync("sh", ["-c", `gzip -dc '${b}' > /dev/null`]);
		if (r.status !== 0) throw new Error(`gzip -dc ${b} failed`);
	}
	return (performance.now() - t0) / 1000;
}
