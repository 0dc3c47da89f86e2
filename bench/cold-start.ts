/**
 * Cold start through `dadi-guest serve --mount-at`, with and without metadata prefetch (issue 18):
 * a realistic root file system (the host's Python standard library and /etc: thousands of small
 * files in hundreds of directories) is put in a container image (umoci), sealed as ext4 with the
 * real `dadi-seal`, pushed to a docker-registry on loopback, then served by the real `dadi-guest
 * serve --mount-at` (FUSE + loop + ext4, no cache dir: every run is cold) and read by a start-up
 * like workload in a child shell: `ls -R`, then `find -type f -print0 | head -z -n 2000 | xargs -0 cat`. Each
 * variant runs `--runs` times (alternating); the figures are the workload's wall time and the
 * registry requests from `--stats`.
 *
 *   npm run build && node dist/bench/cold-start.js [--runs N] [--json FILE]
 *
 * Root only (FUSE, loop devices, mount). Everything it starts is stopped and its scratch removed.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startRegistry } from "../test/registry/harness.js";

const ROOT = join(import.meta.dirname, "..", "..");
const SEAL = join(ROOT, "dist/src/cli/dadi-seal.js");
const GUEST = join(ROOT, "dist/src/cli/dadi-guest.js");

function sh(cmd: string, args: string[], env?: NodeJS.ProcessEnv) {
	return new Promise<string>((resolve, reject) => {
		const p = spawn(cmd, args, {
			stdio: ["ignore", "pipe", "pipe"],
			env: { ...process.env, ...env },
		});
		let out = "";
		let err = "";
		p.stdout.on("data", (d) => {
			out += d;
		});
		p.stderr.on("data", (d) => {
			err += d;
		});
		p.on("close", (code) =>
			code === 0
				? resolve(out)
				: reject(new Error(`${cmd} ${args.join(" ")}: exit ${code}: ${err}`)),
		);
	});
}

const arg = (name: string, dflt: string) => {
	const i = process.argv.indexOf(name);
	return i >= 0 ? (process.argv[i + 1] ?? dflt) : dflt;
};

interface Run {
	variant: string;
	lsMs: number;
	catMs: number;
	totalMs: number;
	requests: number;
	rangeRequests: number;
	chunksFetched: number;
	prefetchRequests: number;
	prefetchChunks: number;
	prefetchUsed: number;
	demandJoinedSpeculative: number;
	demandPromoted: number;
	demandWaitedForSlot: { count: number; ms: number };
	metadataPrefetch?: unknown;
}

async function main(): Promise<void> {
	const runs = Number(arg("--runs", "3"));
	const scratch = await mkdtemp(join(tmpdir(), "dadi-cold-"));
	const mnt = await mkdtemp(join(tmpdir(), "dadi-cold-mnt-"));
	const reg = await startRegistry();
	let serve: ChildProcess | undefined;
	try {
		// 1. the image
		const img = join(scratch, "oci");
		await sh("umoci", ["init", "--layout", img]);
		await sh("umoci", ["new", "--image", `${img}:v1`]);
		const bundle = join(scratch, "bundle");
		await sh("umoci", ["unpack", "--image", `${img}:v1`, bundle]);
		const rootfs = join(bundle, "rootfs");
		await mkdir(join(rootfs, "usr/lib"), { recursive: true });
		for (const d of ["/usr/lib/python3", "/usr/lib/python3.11", "/etc"])
			await sh("cp", ["-a", d, join(rootfs, d.slice(1))]).catch(() => {});
		await sh("umoci", ["repack", "--image", `${img}:v1`, bundle]);
		await sh("node", [SEAL, "keygen", "--out", join(scratch, "key.jwk")]);
		const ref = `docker://${reg.host}/bench/cold:v1`;
		await sh("node", [
			SEAL,
			"seal",
			`oci:${img}:v1`,
			ref,
			"--key",
			join(scratch, "key.jwk"),
			"--insecure",
			"--quiet",
			"--fs",
			"ext4",
		]);
		const files = (await sh("find", [rootfs, "-type", "f"])).split("\n").length;
		process.stderr.write(`image: ${files} files, sealed as ext4 at ${ref}\n`);

		// 2. the runs
		const results: Run[] = [];
		for (let i = 0; i < runs; i++)
			for (const variant of ["no-prefetch", "prefetch-metadata"]) {
				const stats = join(scratch, `stats-${variant}-${i}.json`);
				serve = spawn(
					"node",
					[
						GUEST,
						"serve",
						ref,
						"--key",
						join(scratch, "key.jwk"),
						"--insecure",
						"--mount-at",
						mnt,
						"--stats",
						stats,
						"--json",
						variant === "no-prefetch"
							? "--no-prefetch-metadata"
							: "--prefetch-metadata",
					],
					{ stdio: ["ignore", "pipe", "inherit"] },
				);
				const proc = serve;
				await new Promise<void>((resolve, reject) => {
					let out = "";
					proc.stdout?.on("data", (d) => {
						out += d;
						if (out.includes("\n")) resolve();
					});
					proc.on("exit", (c) => reject(new Error(`serve exited ${c}`)));
				});
				const t0 = performance.now();
				await sh("sh", ["-c", `ls -R ${mnt} >/dev/null`]);
				const t1 = performance.now();
				await sh("sh", [
					"-c",
					`find ${mnt} -type f -print0 | head -z -n 2000 | xargs -0 cat >/dev/null`,
				]);
				const t2 = performance.now();
				const exited = new Promise((r) => proc.once("exit", r));
				proc.kill("SIGTERM");
				await exited;
				serve = undefined;
				const s = JSON.parse(await readFile(stats, "utf8"));
				const f = s.fetched ?? s;
				const r: Run = {
					variant,
					lsMs: Math.round(t1 - t0),
					catMs: Math.round(t2 - t1),
					totalMs: Math.round(t2 - t0),
					requests: f.requests,
					rangeRequests: f.rangeRequests,
					chunksFetched: f.chunksFetched,
					prefetchRequests: f.prefetchRequests,
					prefetchChunks: f.prefetchChunks,
					prefetchUsed: f.prefetchUsed,
					demandJoinedSpeculative: f.demandJoinedSpeculative,
					demandPromoted: f.demandPromoted,
					demandWaitedForSlot: f.demandWaitedForSlot,
					metadataPrefetch: f.metadataPrefetch,
				};
				results.push(r);
				process.stderr.write(`${JSON.stringify(r)}\n`);
			}
		const json = arg("--json", "");
		if (json) await writeFile(json, `${JSON.stringify(results, null, 2)}\n`);
		for (const v of ["no-prefetch", "prefetch-metadata"]) {
			const rs = results.filter((r) => r.variant === v);
			const med = (f: (r: Run) => number) =>
				rs.map(f).sort((a, b) => a - b)[rs.length >> 1];
			process.stdout.write(
				`${v.padEnd(18)} ls -R ${med((r) => r.lsMs)} ms, cat 2000 files ${med((r) => r.catMs)} ms, total ${med((r) => r.totalMs)} ms; requests ${med((r) => r.requests)} (range ${med((r) => r.rangeRequests)}, prefetch ${med((r) => r.prefetchRequests)}), chunks ${med((r) => r.chunksFetched)}, prefetch used ${med((r) => r.prefetchUsed)}, promoted ${med((r) => r.demandPromoted)}, demand waits ${med((r) => r.demandWaitedForSlot.count)} (median of ${rs.length})\n`,
			);
		}
	} finally {
		if (serve) {
			const p = serve;
			const exited = new Promise((r) => p.once("exit", r));
			p.kill("SIGTERM");
			await exited;
		}
		await reg.stop();
		await rm(scratch, { recursive: true, force: true });
		await rm(mnt, { recursive: true, force: true }).catch(() => {});
	}
}

main().catch((e) => {
	process.stderr.write(`${(e as Error).stack}\n`);
	process.exitCode = 1;
});
