/**
 * The container section (issue 13): how long a container takes from nothing on the host to its
 * first output — pull + start — for a sealed image through dadi-snapshotter (host mode: claimed
 * layers never downloaded, the image served lazily and decrypted on the host, runc through
 * dadi-runc) against the same image unsealed through containerd's own overlayfs snapshotter
 * (download, unpack, run). Real containerd 1.6, runc, the real registry on loopback; each run gets
 * a fresh containerd state and snapshotter root and dropped page caches (cold), plain and sealed
 * runs alternate. The image: the image bench's two-layer image (180 MB of real files from /usr)
 * plus a small third layer with a static busybox and the file the container prints.
 */
import { spawnSync } from "node:child_process";
import { copyFile, mkdir, rm, writeFile } from "node:fs/promises";
import { loadavg } from "node:os";
import { join } from "node:path";
import { readKeyFile } from "../src/cli/common.js";
import { startDaemon } from "../test/daemon.js";
import { startRegistry } from "../test/registry/harness.js";
import { startContainerd } from "../test/snapshotter/containerd.js";
import { prepareOciImage, umociMissing } from "./image-oci.js";

export interface ContainerBenchOptions {
	repo: string;
	cacheDir: string;
	workDir: string;
	reps: number;
	log: (line: string) => void;
	print: (line: string) => void;
}

export interface ContainerRun {
	mode: "plain" | "sealed";
	/** From the pull's start to the container's exit (its one line printed). */
	seconds: number;
	pullSeconds: number;
	runSeconds: number;
}

export interface ContainerBenchReport {
	image: string;
	runs: ContainerRun[];
	median: { plain: number; sealed: number };
	/** sealed / plain: below 1 is faster. */
	ratio: number;
	loadavg: number[];
}

const bin = (name: string) => (p: string) => join(p, "dist/src/cli", name);

/** What the section needs that may be missing here; null when it can run. */
export function containerBenchMissing(): string | null {
	if (process.getuid?.() !== 0) return "needs root (containerd, mounts)";
	for (const [cmd, pkg] of [
		["containerd", "containerd"],
		["ctr", "containerd"],
		["runc", "runc"],
		["skopeo", "skopeo"],
		["docker-registry", "docker-registry"],
	] as const)
		if (spawnSync("sh", ["-c", `command -v ${cmd}`]).status !== 0)
			return `${cmd} not found (Debian: apt-get install ${pkg})`;
	return umociMissing();
}

function run(cmd: string, args: string[]): string {
	const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 64 << 20 });
	if (r.status !== 0)
		throw new Error(
			`${cmd} ${args.join(" ")}: ${(r.stderr || r.stdout).trim().slice(-2000)}`,
		);
	return r.stdout;
}

function dropCaches(): void {
	spawnSync("sync");
	spawnSync("sh", ["-c", "echo 3 > /proc/sys/vm/drop_caches"]);
}

const median = (xs: number[]): number => {
	const s = [...xs].sort((a, b) => a - b);
	const m = s.length >> 1;
	return s.length % 2
		? (s[m] as number)
		: ((s[m - 1] as number) + (s[m] as number)) / 2;
};

export async function runContainerBench(
	o: ContainerBenchOptions,
): Promise<ContainerBenchReport> {
	const work = join(o.workDir, "containers");
	await rm(work, { recursive: true, force: true });
	await mkdir(work, { recursive: true });
	const base = await prepareOciImage({
		cacheDir: o.cacheDir,
		workDir: work,
		log: o.log,
	});
	// The runnable image: the cached two layers plus busybox and the file printed.
	const img = join(work, "oci");
	run("cp", ["-a", base.dir, img]);
	const bundle = join(work, "bundle");
	run("umoci", ["unpack", "--image", `${img}:${base.tag}`, bundle]);
	await mkdir(join(bundle, "rootfs/bin"), { recursive: true });
	await copyFile("/bin/busybox", join(bundle, "rootfs/bin/busybox"));
	await writeFile(join(bundle, "rootfs/hello"), "hello from the image\n");
	run("umoci", ["repack", "--image", `${img}:run`, bundle]);
	await rm(bundle, { recursive: true, force: true });
	const reg = await startRegistry();
	const keyDir = join(work, "keys");
	await mkdir(keyDir, { mode: 0o700 });
	try {
		const key = join(work, "image.jwk");
		run(process.execPath, [
			bin("dadi-seal.js")(o.repo),
			"keygen",
			"--out",
			key,
		]);
		const sealed = `${reg.host}/bench/app:sealed`;
		const plain = `${reg.host}/bench/app:plain`;
		o.log("sealing the image into the registry...");
		run(process.execPath, [
			bin("dadi-seal.js")(o.repo),
			"seal",
			`oci:${img}:run`,
			`docker://${sealed}`,
			"--key",
			key,
			"--insecure",
			"--quiet",
		]);
		// The snapshotter's serves find the key by the image's key id.
		await copyFile(key, join(keyDir, `${(await readKeyFile(key)).kid}.jwk`));
		run("skopeo", [
			"copy",
			"--dest-tls-verify=false",
			`oci:${img}:run`,
			`docker://${plain}`,
		]);
		const wrappers = join(work, "bin");
		await mkdir(wrappers);
		const runs: ContainerRun[] = [];
		for (let rep = 0; rep < o.reps; rep++)
			for (const mode of ["plain", "sealed"] as const) {
				const dir = join(work, `${mode}-${rep}`);
				const root = join(dir, "snapshotter");
				const socket = join(dir, "snapshotter.sock");
				await mkdir(dir, { recursive: true });
				run(process.execPath, [
					bin("dadi-snapshotter.js")(o.repo),
					"install-runtime",
					"--dir",
					wrappers,
					"--root",
					root,
				]);
				const snap = await startDaemon(bin("dadi-snapshotter.js")(o.repo), [
					"serve",
					"--root",
					root,
					"--address",
					`unix:${socket}`,
					"--mode",
					"host",
					"--key-dir",
					keyDir,
					"--insecure",
					"--json",
				]);
				const c = await startContainerd(join(dir, "containerd"), socket);
				try {
					await c.waitForSnapshotter();
					dropCaches();
					const t0 = performance.now();
					if (mode === "plain")
						await c.ctr(["images", "pull", "--plain-http", plain]);
					else
						run(process.execPath, [
							bin("dadi-snapshotter.js")(o.repo),
							"pull",
							`docker://${sealed}`,
							"--address",
							c.socket,
							"--snapshotter",
							"dadi",
							"--insecure",
							"--quiet",
						]);
					const t1 = performance.now();
					const out = await c.ctr([
						"run",
						"--rm",
						...(mode === "sealed"
							? [
									"--snapshotter",
									"dadi",
									"--runc-binary",
									join(wrappers, "dadi-runc"),
								]
							: []),
						mode === "plain" ? plain : sealed,
						`bench-${mode}-${rep}`,
						"/bin/busybox",
						"cat",
						"/hello",
					]);
					const t2 = performance.now();
					if (out !== "hello from the image\n")
						throw new Error(
							`${mode}: the container printed ${JSON.stringify(out)}`,
						);
					const r: ContainerRun = {
						mode,
						seconds: (t2 - t0) / 1000,
						pullSeconds: (t1 - t0) / 1000,
						runSeconds: (t2 - t1) / 1000,
					};
					runs.push(r);
					o.log(
						`containers ${mode} #${rep + 1}: ${r.seconds.toFixed(2)} s (pull ${r.pullSeconds.toFixed(2)} s, run ${r.runSeconds.toFixed(2)} s)`,
					);
					for (const ref of [plain, sealed])
						await c.ctr(["images", "rm", "--sync", ref]).catch(() => "");
				} finally {
					await c.stop();
					await snap.stop();
					// Serves outlive the snapshotter by design: stop this run's.
					spawnSync("pkill", ["-f", `--mount-at ${root}`]);
					spawnSync(process.execPath, [
						bin("dadi-guest.js")(o.repo),
						"cleanup",
					]);
				}
			}
		const med = (m: "plain" | "sealed") =>
			median(runs.filter((r) => r.mode === m).map((r) => r.seconds));
		const report: ContainerBenchReport = {
			image: `${base.description} + busybox (3 layers)`,
			runs,
			median: { plain: med("plain"), sealed: med("sealed") },
			ratio: med("sealed") / med("plain"),
			loadavg: loadavg(),
		};
		o.print(
			[
				"",
				"## Container start (pull + run to first output), containerd 1.6 + runc, cold",
				`image: ${report.image}; ${o.reps} run(s) each, alternating`,
				"",
				"| image | median s | runs (pull + run) |",
				"|---|---|---|",
				...(["plain", "sealed"] as const).map(
					(m) =>
						`| ${m === "plain" ? "plain, overlayfs (download + unpack)" : "sealed, dadi-snapshotter host mode (lazy)"} | ${report.median[m].toFixed(2)} | ${runs
							.filter((r) => r.mode === m)
							.map(
								(r) =>
									`${r.pullSeconds.toFixed(2)} + ${r.runSeconds.toFixed(2)}`,
							)
							.join("; ")} |`,
				),
				"",
				`sealed / plain: ${report.ratio.toFixed(2)} (below 1: the sealed image starts faster); load average ${report.loadavg.map((x) => x.toFixed(1)).join(" ")}`,
			].join("\n"),
		);
		return report;
	} finally {
		await reg.stop();
		await rm(work, { recursive: true, force: true });
	}
}
