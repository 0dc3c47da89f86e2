/**
 * Opening a registry image overlaps the key exchange with the layers' metadata: header, trailer
 * and index are fetched while the key source (a broker, in a guest) is still answering, and the
 * open that follows checks the same bytes without fetching them again.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ImageKey } from "../src/crypto/image-key.js";
import { openRemoteSealedImage } from "../src/lazy/open-remote.js";
import { LazyStats } from "../src/lazy/stats.js";
import { parseReference } from "../src/oci/reference.js";
import { cleanupTempDirs, prng, sealDiskToRegistry } from "./helpers.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";

const MiB = 1 << 20;
let reg: RunningRegistry;
let key: ImageKey;
let disk: Buffer;

beforeAll(async () => {
	reg = await startRegistry();
	({ key, disk } = await sealDiskToRegistry(
		reg.host,
		"overlap/disk:v1",
		8 * MiB,
		[{ at: MiB, bytes: prng("o", 3 * MiB) }],
	));
});

afterAll(async () => {
	await reg?.stop();
	await cleanupTempDirs();
});

describe("opening a registry image", () => {
	it("fetches the layer's header, trailer and index while the key is being obtained, once", async () => {
		const ref = parseReference(`docker://${reg.host}/overlap/disk:v1`);
		if (ref.transport !== "docker") throw new Error("ref");
		const stats = new LazyStats();
		let duringKey = -1;
		const image = await openRemoteSealedImage(
			ref,
			async () => {
				// A slow key source: wait (up to 10 s) for the metadata fetches to land meanwhile.
				const until = Date.now() + 10_000;
				while (stats.metadataRequests < 3 && Date.now() < until)
					await new Promise((r) => setTimeout(r, 5));
				duringKey = stats.metadataRequests;
				return key;
			},
			{ insecure: true, stats },
		);
		try {
			expect(duringKey).toBe(3);
			// the open checked the cached bytes: nothing fetched twice
			expect(stats.metadataRequests).toBe(3);
			const got = await image.disk.read(MiB, 3 * MiB);
			expect(got.equals(disk.subarray(MiB, 4 * MiB))).toBe(true);
		} finally {
			await image.close();
		}
	});
});
