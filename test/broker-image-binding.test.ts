/**
 * A tag swapped for another image sealed under the same key (issue 14): with a policy that binds
 * the key to image digests, the broker refuses the key for the swapped-in image, while the image
 * the policy names still opens. The guest names the manifest digest it resolved (`?image=`).
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Attester, sampleAttester } from "../src/attest/attester.js";
import { toJwk } from "../src/crypto/image-key.js";
import { loadSealedImage, openSealedImage } from "../src/image/open-image.js";
import { brokerKeySource } from "../src/kbs/key-provider.js";
import { OciLayout } from "../src/oci/layout.js";
import { startTestBroker, type TestBroker } from "./broker/harness.js";
import {
	cleanupTempDirs,
	prng,
	rejection,
	sealInto,
	tempDir,
	writeDisk,
	writeKey,
} from "./helpers.js";

const MiB = 1 << 20;
let broker: TestBroker;
let oci: string;
let good: string;

beforeAll(async () => {
	const dir = await tempDir();
	oci = join(dir, "oci");
	const { key } = await writeKey(dir);
	for (const name of ["good", "evil"]) {
		await writeDisk(join(dir, `${name}.img`), 4 * MiB, [
			{ at: 0, bytes: prng(name, MiB) },
		]);
		await sealInto(join(dir, `${name}.img`), oci, name, key);
	}
	good = (await loadSealedImage({ transport: "oci", dir: oci, tag: "good" }))
		.manifestDesc.digest;
	const policies = join(dir, "policies");
	await mkdir(policies);
	await writeFile(
		join(policies, "pinned.json"),
		JSON.stringify({
			apiVersion: "dadi.dev/v1alpha1",
			kind: "KeyReleasePolicy",
			name: "pinned",
			resources: ["default/*/*"],
			values: { images: [good] },
			rules: [
				{ name: "sample-tee", expr: "tee == 'sample'" },
				{ name: "pinned-image", expr: "request.image in values.images" },
			],
		}),
	);
	broker = await startTestBroker({ policiesDir: policies });
	await broker.put(
		`default/image-key/${key.kid}`,
		Buffer.from(JSON.stringify(toJwk(key))),
	);
});

afterAll(async () => {
	await broker?.close();
	await cleanupTempDirs();
});

describe("a key bound to image digests", () => {
	const source = () =>
		brokerKeySource({ url: broker.url, attester: sampleAttester });

	it("begun early, auth and attest run before the image is known, and the resource request still carries it", async () => {
		let evidenceAt = 0;
		const attester: Attester = {
			...sampleAttester,
			evidence: async (reportData) => {
				evidenceAt = performance.now();
				return sampleAttester.evidence(reportData);
			},
		};
		const src = brokerKeySource({
			url: broker.url,
			attester,
			early: true,
		});
		// No image asked for yet: the attestation happens anyway (up to 10 s to show it).
		const until = Date.now() + 10_000;
		while (evidenceAt === 0 && Date.now() < until)
			await new Promise((r) => setTimeout(r, 5));
		expect(evidenceAt).toBeGreaterThan(0);
		const asked = performance.now();
		expect(evidenceAt).toBeLessThan(asked);
		const img = await openSealedImage(
			{ transport: "oci", dir: oci, tag: "good" },
			src,
		);
		await img.close();
		// the early session's resource request named the image: the other one is refused
		const e = await rejection(
			openSealedImage(
				{ transport: "oci", dir: oci, tag: "evil" },
				brokerKeySource({ url: broker.url, attester, early: true }),
			),
		);
		expect(e.code).toBe("POLICY_DENIED");
		// begun and never used: cancel drops it (the test would not end with a socket left open)
		brokerKeySource({ url: broker.url, attester, early: true }).cancel();
	});

	it("opens the pinned image; a tag repointed to another image under the same key is refused", async () => {
		const img = await openSealedImage(
			{ transport: "oci", dir: oci, tag: "good" },
			source(),
		);
		await img.close();
		// The attacker repoints "good" at the other image (same key, so the MAC alone allows it).
		const layout = await OciLayout.open(oci);
		const evil = await layout.resolve({ tag: "evil" });
		await layout.setTag("good", evil);
		const e = await rejection(
			openSealedImage({ transport: "oci", dir: oci, tag: "good" }, source()),
		);
		expect(e.code).toBe("POLICY_DENIED");
		expect(e.message).toMatch(/pinned-image/);
	});
});
