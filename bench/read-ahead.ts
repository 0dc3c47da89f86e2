/**
 * Read-ahead request size: a 96 MiB disk (incompressible and text halves) sealed to a loopback
 * docker-registry, read front to back in 128 KiB reads (like the kernel's readahead through FUSE)
 * by a fresh reader per run, with read-ahead windows fetched as one request of up to 4 MiB or as
 * several parallel requests of 1 MiB or 512 KiB (LazyTuning.aheadRequestBytes); then the whole
 * disk prefetched (prefetchChunks, 4 at once) with requests of 256 KiB, 1 MiB and 4 MiB. Prints the
 * median time and requests per variant.
 *
 *   npm run build && node dist/bench/read-ahead.js [--runs N]
 */
import { openRemoteSealedImage } from "../src/lazy/open-remote.js";
import { prefetchChunks } from "../src/lazy/prefetch.js";
import { parseReference } from "../src/oci/reference.js";
import {
	cleanupTempDirs,
	prng,
	sealDiskToRegistry,
	texty,
} from "../test/helpers.js";
import { startRegistry } from "../test/registry/harness.js";

const MiB = 1 << 20;
const runsArg = process.argv.indexOf("--runs");
const runs = runsArg >= 0 ? Number(process.argv[runsArg + 1]) : 5;

async function main(): Promise<void> {
	const reg = await startRegistry();
	try {
		const size = 96 * MiB;
		const { key } = await sealDiskToRegistry(reg.host, "bench/ra:v1", size, [
			{ at: 0, bytes: prng("r", 48 * MiB) },
			{ at: 48 * MiB, bytes: texty("t", 48 * MiB) },
		]);
		const ref = parseReference(`docker://${reg.host}/bench/ra:v1`);
		if (ref.transport !== "docker") throw new Error("ref");
		const variants = [4 * MiB, 1 * MiB, 512 * 1024];
		const out = new Map<number, { ms: number; requests: number }[]>();
		for (let i = 0; i < runs; i++)
			for (const ahead of variants) {
				const image = await openRemoteSealedImage(ref, key, {
					insecure: true,
					tuning: { aheadRequestBytes: ahead },
				});
				try {
					const t0 = performance.now();
					for (let at = 0; at < size; at += 128 * 1024)
						await image.disk.read(at, 128 * 1024);
					const ms = performance.now() - t0;
					const s = image.stats.toJSON();
					const list = out.get(ahead) ?? [];
					list.push({ ms, requests: s.rangeRequests });
					out.set(ahead, list);
				} finally {
					await image.close();
				}
			}
		for (const [ahead, list] of out) {
			const ms = list.map((r) => r.ms).sort((a, b) => a - b);
			const med = ms[ms.length >> 1] ?? 0;
			const req = list.map((r) => r.requests).sort((a, b) => a - b);
			process.stdout.write(
				`aheadRequestBytes ${String(ahead / 1024).padStart(5)} KiB: ${med.toFixed(0)} ms median (${ms.map((m) => m.toFixed(0)).join(", ")}), ${(size / MiB / (med / 1000)).toFixed(0)} MiB/s, ${req[req.length >> 1]} range requests\n`,
			);
		}
		const pre = new Map<number, number[]>();
		for (let i = 0; i < runs; i++)
			for (const bytes of [256 * 1024, 1 * MiB, 4 * MiB]) {
				const image = await openRemoteSealedImage(ref, key, {
					insecure: true,
					memoryBytes: 256 * MiB,
				});
				try {
					const items = Array.from(
						{ length: image.disk.chunkCount },
						(_, chunk) => ({ layer: 0, chunk }),
					);
					const r = await prefetchChunks(image.disk, items, {
						maxRequestBytes: bytes,
					});
					const list = pre.get(bytes) ?? [];
					list.push(r.ms);
					pre.set(bytes, list);
					if (i === 0)
						process.stdout.write(
							`prefetch ${bytes / 1024} KiB requests: ${r.requests} requests, ${r.chunks} chunks\n`,
						);
				} finally {
					await image.close();
				}
			}
		for (const [bytes, list] of pre) {
			const ms = [...list].sort((a, b) => a - b);
			const med = ms[ms.length >> 1] ?? 0;
			process.stdout.write(
				`prefetch maxRequestBytes ${String(bytes / 1024).padStart(5)} KiB: ${med.toFixed(0)} ms median (${ms.map((m) => m.toFixed(0)).join(", ")}), ${(size / MiB / (med / 1000)).toFixed(0)} MiB/s of disk\n`,
			);
		}
	} finally {
		await reg.stop();
		await cleanupTempDirs();
	}
}

main().catch((e) => {
	process.stderr.write(`${(e as Error).stack}\n`);
	process.exitCode = 1;
});
