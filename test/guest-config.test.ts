/**
 * Issue 13.1: the image config in the guest. `dadi-guest config REF` authenticates and decrypts the
 * original OCI image config (the public config only holds a sentinel entrypoint), with the key from
 * a file or a broker, from a layout or a registry; the library exposes it as
 * `OpenedImage.imageConfig()` and `openImageConfig()`. Raw disks have none (null); a changed record
 * fails authentication; no layer is read.
 */
import { cp, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openRecord, sealRecord } from "../src/crypto/config-auth.js";
import type { ImageKey } from "../src/crypto/image-key.js";
import {
	loadSealedImage,
	openImageConfig,
	openSealedImage,
} from "../src/image/open-image.js";
import { sha256Digest } from "../src/oci/digest.js";
import { startInitialisedBroker } from "./broker/harness.js";
import { type Daemon, killDaemons } from "./daemon.js";
import {
	BIN,
	cleanupTempDirs,
	must,
	prng,
	runCli,
	sealInto,
	tempDir,
	writeDisk,
	writeKey,
} from "./helpers.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";

/** An image config as `umoci` or `docker` would write it: not canonical JSON, no trailing newline. */
const CONFIG = Buffer.from(
	'{"created":"2024-05-01T12:00:00Z","architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin","DB_PIN=4711"],"Entrypoint":["/bin/app"],"Cmd":["--serve"],"WorkingDir":"/srv","User":"1000:1000","Labels":{"a":"b"}},"rootfs":{"type":"layers","diff_ids":[]}}',
);

let dir: string;
let oci: string;
let key: ImageKey;
let keyPath: string;
let otherKeyPath: string;

const config = (ref: string, extra: string[] = []) =>
	runCli(BIN.guest, ["config", ref, ...extra]);

beforeAll(async () => {
	dir = await tempDir();
	oci = join(dir, "oci");
	({ key, path: keyPath } = await writeKey(dir));
	otherKeyPath = (await writeKey(dir, "other.jwk")).path;
	await writeDisk(join(dir, "d.img"), 1 << 20, [
		{ at: 0, bytes: prng("d", 200_000) },
	]);
	await sealInto(join(dir, "d.img"), oci, "app", key, { imageConfig: CONFIG });
	await sealInto(join(dir, "d.img"), oci, "raw", key);
	// a raw disk sealed over an image with a config carries the base's config over
	await sealInto(join(dir, "d.img"), oci, "over", key, { base: "app" });
});
afterAll(async () => {
	killDaemons();
	await cleanupTempDirs();
});

describe("dadi-guest config (layouts, key file)", () => {
	it("prints the original config exactly as sealed; --json wraps it with the pinned reference", async () => {
		const r = await must(config(`oci:${oci}:app`, ["--key", keyPath]));
		expect(r.stdout).toBe(`${CONFIG.toString()}\n`);
		expect(r.stderr).toBe("");
		const j = JSON.parse(
			(await must(config(`oci:${oci}:app`, ["--key", keyPath, "--json"])))
				.stdout,
		);
		const image = await loadSealedImage({
			transport: "oci",
			dir: oci,
			tag: "app",
		});
		expect(j).toEqual({
			ok: true,
			image: `oci:${oci}@${image.manifestDesc.digest}`,
			config: JSON.parse(CONFIG.toString()),
		});
		// the pinned reference reads the same
		expect((await must(config(j.image, ["--key", keyPath]))).stdout).toBe(
			r.stdout,
		);
		expect(
			(await must(config(`oci:${oci}:over`, ["--key", keyPath]))).stdout,
		).toBe(r.stdout);
	});

	it("reads no layer: it works with every layer blob gone", async () => {
		const copy = join(dir, "no-layers");
		await cp(oci, copy, { recursive: true });
		const image = await loadSealedImage({
			transport: "oci",
			dir: copy,
			tag: "app",
		});
		for (const l of image.manifest.layers)
			await rm(join(copy, "blobs/sha256", l.digest.slice(7)));
		const r = await must(config(`oci:${copy}:app`, ["--key", keyPath]));
		expect(r.stdout).toBe(`${CONFIG.toString()}\n`);
	});

	it("a raw disk has no image config: null", async () => {
		const r = await must(config(`oci:${oci}:raw`, ["--key", keyPath]));
		expect(r.stdout).toBe("null\n");
		const j = JSON.parse(
			(await must(config(`oci:${oci}:raw`, ["--key", keyPath, "--json"])))
				.stdout,
		);
		expect(j.config).toBeNull();
	});

	it("needs the image's key: none (usage), another (KEY_MISMATCH)", async () => {
		const none = await config(`oci:${oci}:app`);
		expect(none.code).toBe(2);
		const other = await config(`oci:${oci}:app`, ["--key", otherKeyPath]);
		expect(other.code).toBe(6);
		expect(other.stderr).toMatch(/\[KEY_MISMATCH\]/);
		expect(other.stdout).toBe("");
	});

	it("a changed or swapped record fails authentication (exit 5) and prints nothing", async () => {
		const image = await loadSealedImage({
			transport: "oci",
			dir: oci,
			tag: "app",
		});
		const index = JSON.parse(await readFile(join(oci, "index.json"), "utf8"));
		const manifest = JSON.parse(
			await readFile(
				join(oci, "blobs/sha256", image.manifestDesc.digest.slice(7)),
				"utf8",
			),
		);
		const forge = async (tag: string, record: string) => {
			const doc = JSON.parse(image.configBytes.toString());
			doc["io.dadi.sealed"].imageConfig = record;
			const cb = Buffer.from(JSON.stringify(doc));
			const cd = sha256Digest(cb);
			await writeFile(join(oci, "blobs/sha256", cd.slice(7)), cb);
			const m = structuredClone(manifest);
			m.config = { ...m.config, digest: cd, size: cb.length };
			for (const l of m.layers)
				l.annotations["containerd.io/snapshot/dadi.sealed-config"] = cd;
			const mb = Buffer.from(JSON.stringify(m));
			const md = sha256Digest(mb);
			await writeFile(join(oci, "blobs/sha256", md.slice(7)), mb);
			index.manifests.push({
				mediaType: "application/vnd.oci.image.manifest.v1+json",
				digest: md,
				size: mb.length,
				annotations: { "org.opencontainers.image.ref.name": tag },
			});
			await writeFile(join(oci, "index.json"), JSON.stringify(index));
		};
		const sealed = Buffer.from(image.config.imageConfig as string, "base64url");
		sealed[20] = (sealed[20] as number) ^ 1;
		await forge("flipped", sealed.toString("base64url"));
		// a record the key holder really wrote, for another config: the MAC still says no
		await forge(
			"swapped",
			sealRecord(
				key.key,
				"image-config",
				image.config.sealId,
				Buffer.from('{"config":{"Entrypoint":["/bin/evil"]}}'),
			),
		);
		for (const tag of ["flipped", "swapped"]) {
			const r = await config(`oci:${oci}:${tag}`, ["--key", keyPath]);
			expect(r.code, tag).toBe(5);
			expect(r.stderr, tag).toMatch(/\[AUTH_FAILED\]/);
			expect(r.stdout, tag).toBe("");
		}
		// and the record alone, without the MAC, still authenticates itself
		expect(() =>
			openRecord(
				key.key,
				"image-config",
				image.config.sealId,
				sealed.toString("base64url"),
			),
		).toThrow(/authentication failed/);
	});
});

describe("the library", () => {
	it("OpenedImage.imageConfig() and openImageConfig() give the config as an object, null for raw disks", async () => {
		const img = await openSealedImage(
			{ transport: "oci", dir: oci, tag: "app" },
			key,
		);
		try {
			expect(await img.imageConfig()).toEqual(JSON.parse(CONFIG.toString()));
		} finally {
			await img.close();
		}
		const raw = await loadSealedImage({
			transport: "oci",
			dir: oci,
			tag: "raw",
		});
		expect(openImageConfig(raw, key)).toBeNull();
	});
});

describe("from a registry, and with a key from a broker", () => {
	let reg: RunningRegistry;
	let broker: Daemon;
	const RES = "kbs:///default/image-key/config-test";

	beforeAll(async () => {
		reg = await startRegistry();
		const b = await startInitialisedBroker(dir);
		broker = b.daemon;
		await b.putImageKey(RES, keyPath);
		// the same disk and config, sealed for the broker's resource, pushed with dadi-seal copy
		await sealInto(join(dir, "d.img"), join(dir, "oci-kbs"), "app", key, {
			imageConfig: CONFIG,
			keyRef: RES,
		});
		await must(
			runCli(BIN.seal, [
				"copy",
				`oci:${join(dir, "oci-kbs")}:app`,
				`docker://${reg.host}/sealed/app:v1`,
				"--insecure",
				"--quiet",
			]),
		);
	});
	afterAll(async () => {
		await broker?.stop();
		await reg?.stop();
	});

	it("reads the config from a registry with a key file; --json names the image by digest", async () => {
		const ref = `docker://${reg.host}/sealed/app:v1`;
		const r = await must(config(ref, ["--key", keyPath, "--insecure"]));
		expect(r.stdout).toBe(`${CONFIG.toString()}\n`);
		const j = JSON.parse(
			(await must(config(ref, ["--key", keyPath, "--insecure", "--json"])))
				.stdout,
		);
		expect(j.image).toMatch(
			new RegExp(`^docker://${reg.host}/sealed/app@sha256:[0-9a-f]{64}$`),
		);
		expect(j.config.config.Env).toContain("DB_PIN=4711");
	});

	it("gets the key from a broker by attesting (sample TEE), from a layout and from a registry", async () => {
		const brokerArgs = [
			"--broker",
			String(broker.ready.url),
			"--attester",
			"sample",
		];
		const a = await must(config(`oci:${join(dir, "oci-kbs")}:app`, brokerArgs));
		expect(a.stdout).toBe(`${CONFIG.toString()}\n`);
		const b = await must(
			config(`docker://${reg.host}/sealed/app:v1`, [
				...brokerArgs,
				"--insecure",
			]),
		);
		expect(b.stdout).toBe(a.stdout);
		// an image whose key reference the broker does not have: denied, nothing printed
		const denied = await config(`oci:${oci}:app`, brokerArgs);
		expect(denied.code).not.toBe(0);
		expect(denied.stdout).toBe("");
	});
});
