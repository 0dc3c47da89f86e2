/**
 * The README's main job: generate a disk image, seal it, seal a modified version as a second
 * layer, then inspect, verify and export both and check every byte; finally show that a flipped
 * byte in the registry copy is caught; then start a key broker, let the guest attest for the key
 * of a small sealed root file system, serve it and read files from it (FUSE + loop when root,
 * else NBD). Everything runs in-process on an embedded default; nothing
 * outside a temporary directory is touched. `--keep DIR` keeps the artifacts there.
 */
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatBytes } from "../cli/common.js";
import { generateImageKey, toJwk } from "../crypto/image-key.js";
import { DadiError } from "../errors.js";
import { exportDisk } from "../image/export.js";
import { summarize } from "../image/inspect.js";
import { loadSealedImage, openSealedImage } from "../image/open-image.js";
import { verifyImage } from "../image/verify.js";
import { sealDisk } from "../seal/seal-disk.js";
import { generateDemoDisk, modifyDemoDisk } from "./disk.js";
import { serveStep } from "./serve-step.js";

const sha = (b: Buffer) =>
	createHash("sha256").update(b).digest("hex").slice(0, 16);
const ms = (t0: number) => `${(performance.now() - t0).toFixed(0)} ms`;
const say = (s: string) => process.stdout.write(`${s}\n`);

async function main(): Promise<number> {
	const keepAt = process.argv.indexOf("--keep");
	const keep = keepAt > 0 ? process.argv[keepAt + 1] : undefined;
	const work = keep ?? (await mkdtemp(join(tmpdir(), "dadi-demo-")));
	await mkdir(work, { recursive: true });
	try {
		say(`dadi demo: working in ${work}`);
		const key = generateImageKey();
		await writeFile(join(work, "image.jwk"), JSON.stringify(toJwk(key)), {
			mode: 0o600,
		});
		say(`1. generated image key ${key.kid}`);

		const v1 = generateDemoDisk(48 << 20);
		await writeFile(join(work, "v1.img"), v1);
		const v2 = modifyDemoDisk(v1);
		await writeFile(join(work, "v2.img"), v2);
		say(
			`2. generated disk v1 (${formatBytes(v1.length)}, sha256 ${sha(v1)}…) and v2 (${formatBytes(v2.length)}, 2 MiB rewritten, 1 MiB zeroed, grown by 4 MiB)`,
		);

		const oci = join(work, "oci");
		let t0 = performance.now();
		const s1 = await sealDisk({
			disk: join(work, "v1.img"),
			dest: { transport: "oci", dir: oci, tag: "v1" },
			key,
		});
		say(
			`3. sealed v1 into oci:${oci}:v1 in ${ms(t0)}: ${s1.layer.storedChunks} chunks stored, ${formatBytes(s1.layer.size)} for a ${formatBytes(v1.length)} disk`,
		);
		t0 = performance.now();
		const s2 = await sealDisk({
			disk: join(work, "v2.img"),
			dest: { transport: "oci", dir: oci, tag: "v2" },
			key,
			base: { ref: { transport: "oci", dir: oci, tag: "v1" }, key },
		});
		say(
			`4. sealed v2 over v1 in ${ms(t0)}: the new layer stores ${s2.layer.storedChunks} chunks (${formatBytes(s2.layer.size)}) and ${s2.layer.zeroChunks} zero chunks; v1's layer is reused`,
		);

		const info = summarize(
			await loadSealedImage({ transport: "oci", dir: oci, tag: "v2" }),
		);
		say(
			`5. inspect (no key): ${info.layers.length} layers, ${formatBytes(info.storedBytes)} stored, chunk size ${formatBytes(info.chunkSize)}, key ref ${info.keyRef}`,
		);

		say("6. verify and export each tag with the key:");
		for (const [tag, plain] of [
			["v1", v1],
			["v2", v2],
		] as const) {
			const img = await openSealedImage(
				{ transport: "oci", dir: oci, tag },
				key,
			);
			try {
				t0 = performance.now();
				const v = await verifyImage(img);
				const tv = ms(t0);
				t0 = performance.now();
				const out = join(work, `${tag}.export.img`);
				await exportDisk(img.disk, out, { force: true });
				const back = await readFile(out);
				const same = back.equals(plain);
				say(
					`   ${tag}: verified ${v.chunks} chunks in ${tv}; exported in ${ms(t0)}: sha256 ${sha(back)}… ${same ? "identical to the source" : "DIFFERS FROM THE SOURCE"}`,
				);
				if (!same) return 1;
				const off = 3 * 1024 * 1024 + 123;
				const bytes = await img.disk.read(off, 4096);
				say(
					`   ${tag}: random read of 4 KiB at ${off}: ${bytes.equals(plain.subarray(off, off + 4096)) ? "correct" : "WRONG"}`,
				);
			} finally {
				await img.close();
			}
		}

		// Tamper with one byte of the upper layer, as an untrusted registry could.
		const layerPath = join(oci, "blobs/sha256", s2.layer.digest.slice(7));
		const orig = await readFile(layerPath);
		const bad = Buffer.from(orig);
		bad[100] = (bad[100] as number) ^ 1;
		await writeFile(layerPath, bad);
		const img = await openSealedImage(
			{ transport: "oci", dir: oci, tag: "v2" },
			key,
		);
		try {
			await exportDisk(img.disk, join(work, "tampered.img"));
			say("7. tampered layer was NOT detected");
			return 1;
		} catch (e) {
			if (!(e instanceof DadiError)) throw e;
			say(
				`7. flipped one byte of the upper layer: export refused with ${e.code}, no output written`,
			);
		} finally {
			await img.close();
			await writeFile(layerPath, orig);
		}
		if (!(await serveStep(work, key, say))) {
			say("8. the served image did NOT read back correctly");
			return 1;
		}
		say(
			"done: sealed, stacked, inspected, verified, exported byte-identical, tampering caught, key released by attestation, served.",
		);
		return 0;
	} finally {
		if (!keep) await rm(work, { recursive: true, force: true });
	}
}

process.exitCode = await main();
