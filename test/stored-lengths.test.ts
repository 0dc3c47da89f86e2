/**
 * What a registry learns from a lazy reader's range requests (docs/threat-model.md §5): which
 * chunks are read, and each fetched chunk's stored length — with zstd, how compressible that chunk
 * is. `--compress none` is the mode that hides it: every stored chunk is chunk size + 16 bytes, so
 * every chunk request has the same length whatever the chunk holds.
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readKeyFile } from "../src/cli/common.js";
import { isZeroExtent } from "../src/format/extents.js";
import { openRemoteSealedImage } from "../src/lazy/open-remote.js";
import { parseReference } from "../src/oci/reference.js";
import {
	BIN,
	cleanupTempDirs,
	must,
	prng,
	runCli,
	tempDir,
	texty,
	writeDisk,
	writeKey,
} from "./helpers.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";

const CS = 16384;
const CHUNKS = 64;
let reg: RunningRegistry;
let dir: string;
let keyPath: string;

beforeAll(async () => {
	reg = await startRegistry();
	dir = await tempDir();
	keyPath = (await writeKey(dir)).path;
	// chunks of every compressibility: random, text, half zero
	const regions = [];
	for (let c = 0; c < CHUNKS; c++) {
		const kind = c % 3;
		const bytes =
			kind === 0
				? prng(`r${c}`, CS)
				: kind === 1
					? texty(`t${c}`, CS)
					: Buffer.concat([prng(`h${c}`, CS / 2), Buffer.alloc(CS / 2)]);
		regions.push({ at: c * CS, bytes });
	}
	await writeDisk(join(dir, "d.img"), CHUNKS * CS, regions);
});
afterAll(async () => {
	await reg?.stop();
	await cleanupTempDirs();
});

/** Seals the disk with a codec, reads scattered chunks lazily; the byte counts of the chunk requests. */
async function chunkRequestLengths(compress: string): Promise<number[]> {
	const ref = `docker://${reg.host}/lengths/${compress}:v1`;
	await must(
		runCli(BIN.seal, [
			"seal",
			`raw:${join(dir, "d.img")}`,
			ref,
			"--key",
			keyPath,
			"--chunk-size",
			String(CS),
			"--compress",
			compress,
			"--insecure",
			"--quiet",
		]),
	);
	const lengths: number[] = [];
	let opened = false;
	const img = await openRemoteSealedImage(
		parseReference(ref) as Parameters<typeof openRemoteSealedImage>[0],
		await readKeyFile(keyPath),
		{
			insecure: true,
			tuning: { readAheadAfter: Number.MAX_SAFE_INTEGER },
			onExchange: (e) => {
				if (opened && e.what === "range") lengths.push(e.bytes);
			},
		},
	);
	try {
		opened = true;
		// every other chunk, backwards: no two requests can be coalesced
		for (let c = CHUNKS - 1; c >= 0; c -= 2) await img.disk.read(c * CS, 1);
		const layer = img.disk.layers[0];
		const stored = new Set(
			layer?.extents.filter((e) => !isZeroExtent(e)).map((e) => e.storedLength),
		);
		if (compress === "none") expect([...stored]).toEqual([CS + 16]);
	} finally {
		await img.close();
	}
	return lengths;
}

describe("stored chunk lengths seen by the registry", () => {
	it("with zstd they vary with the content; with --compress none every chunk request has one length", async () => {
		const zstd = await chunkRequestLengths("zstd");
		expect(zstd.length).toBe(CHUNKS / 2);
		expect(new Set(zstd).size).toBeGreaterThan(2); // the leak: compressibility per chunk
		const none = await chunkRequestLengths("none");
		expect(none.length).toBe(CHUNKS / 2);
		expect(new Set(none)).toEqual(new Set([CS + 16]));
	});
});
