/**
 * Against the real registry (Debian's docker-registry on a loopback port): push sealed images,
 * read them back lazily (byte-identical to a local export), read one block fetching one chunk,
 * copy between layouts and registries, seal from a registry source, and the persistent chunk
 * cache (hits after a restart, corrupted entries refetched, never served).
 */
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readKeyFile } from "../src/cli/common.js";
import { DiskChunkCache } from "../src/lazy/chunk-cache.js";
import { openRemoteSealedImage } from "../src/lazy/open-remote.js";
import { parseReference } from "../src/oci/reference.js";
import { RegistryClient } from "../src/registry/client.js";
import {
	BIN,
	type CliResult,
	cleanupTempDirs,
	must,
	prng,
	runCli,
	tempDir,
	texty,
	writeDisk,
	writeKey,
} from "./helpers.js";
import { buildTestImage } from "./image-fixtures.js";
import {
	flipLayerByte,
	type RunningRegistry,
	startRegistry,
} from "./registry/harness.js";
import { listenOnLoopback } from "./registry/listen.js";

const sh = promisify(execFile);
const MiB = 1 << 20;

let reg: RunningRegistry;
let dir: string;
let keyPath: string;
let disk: Buffer;
const DISK_SIZE = 256 * MiB;

async function ok(bin: string, args: string[]) {
	const r = await runCli(bin, args);
	if (r.code !== 0)
		throw new Error(`${args.join(" ")} exited ${r.code}: ${r.stderr}`);
	return r;
}

/** `dadi-guest read` of a registry image over plain HTTP. */
function guestRead(
	ref: string,
	offset: string,
	length: string,
	extra: string[] = [],
	env?: NodeJS.ProcessEnv,
): Promise<CliResult> {
	return runCli(
		BIN.guest,
		[
			"read",
			ref,
			"--key",
			keyPath,
			"--offset",
			offset,
			"--length",
			length,
			"--insecure",
			...extra,
		],
		undefined,
		env,
	);
}

beforeAll(async () => {
	reg = await startRegistry();
	dir = await tempDir();
	keyPath = (await writeKey(dir)).path;
	// 256 MiB virtual, 24 MiB of it data in scattered regions (random and text), the rest holes.
	const regions = [];
	for (let i = 0; i < 12; i++)
		regions.push({
			at: i * 21 * MiB + (i % 3) * 4096,
			bytes: i % 2 ? prng(`r${i}`, 2 * MiB) : texty(`t${i}`, 2 * MiB),
		});
	disk = await writeDisk(join(dir, "disk.img"), DISK_SIZE, regions);
	await ok(BIN.seal, [
		"seal",
		`raw:${join(dir, "disk.img")}`,
		`docker://${reg.host}/sealed/disk:v1`,
		"--key",
		keyPath,
		"--insecure",
		"--quiet",
	]);
});

afterAll(async () => {
	await reg?.stop();
	await cleanupTempDirs();
});

describe("push and lazy read against a real registry", () => {
	it("reads the pushed image back lazily, byte-identical to the disk, fetching each stored byte about once", async () => {
		const out = join(dir, "lazy.img");
		const stats = join(dir, "lazy.json");
		await ok(BIN.guest, [
			"export",
			`docker://${reg.host}/sealed/disk:v1`,
			"--key",
			keyPath,
			"--out",
			out,
			"--insecure",
			"--stats",
			stats,
			"--quiet",
		]);
		expect((await readFile(out)).equals(disk)).toBe(true);
		const s = JSON.parse(await readFile(stats, "utf8"));
		const client = new RegistryClient(reg.host, { insecure: true });
		const { bytes } = await client.getManifest("sealed/disk", "v1");
		await client.close();
		const layer = JSON.parse(bytes.toString()).layers[0];
		// Every chunk once: what was fetched is the layer's data area, nothing twice.
		expect(s.chunkBytesFetched).toBeLessThanOrEqual(layer.size);
		expect(s.chunkBytesFetched).toBeGreaterThan(layer.size * 0.9);
		expect(s.retries).toBe(0);
		expect(s.refetches).toBe(0);
		expect(s.latencyMs.count).toBeGreaterThan(0);
	});

	it("reading one 4 KiB block of the 256 MiB disk fetches one chunk plus the index", async () => {
		const r = await must(
			guestRead(
				`docker://${reg.host}/sealed/disk:v1`,
				String(63 * MiB + 8192),
				"4096",
				["--json"],
			),
		);
		const j = JSON.parse(r.stdout);
		const want = disk.subarray(63 * MiB + 8192, 63 * MiB + 8192 + 4096);
		expect(j.sha256).toBe(
			(await import("node:crypto"))
				.createHash("sha256")
				.update(want)
				.digest("hex"),
		);
		expect(j.image).toMatch(/@sha256:[0-9a-f]{64}$/); // the tag is pinned once
		expect(j.fetched.chunksFetched).toBe(1);
		expect(j.fetched.rangeRequests).toBe(1);
		expect(j.fetched.chunkBytesFetched).toBeLessThanOrEqual(64 * 1024 + 16);
		// Metadata: 64-byte header, 64-byte trailer and the index; nothing else.
		expect(j.fetched.metadataRequests).toBe(3);
		expect(j.fetched.metadataBytesFetched).toBeLessThan(16 * 1024);
	});

	it("skopeo sees a valid OCI image and copies it; the copy reads back the same disk", async () => {
		const { stdout } = await sh("skopeo", [
			"inspect",
			"--raw",
			"--tls-verify=false",
			`docker://${reg.host}/sealed/disk:v1`,
		]);
		const m = JSON.parse(stdout);
		expect(m.mediaType).toBe("application/vnd.oci.image.manifest.v1+json");
		expect(m.layers[0].mediaType).toMatch(/dadi/);
		const copy = join(dir, "skopeo-oci");
		await sh("skopeo", [
			"copy",
			"--src-tls-verify=false",
			`docker://${reg.host}/sealed/disk:v1`,
			`oci:${copy}:v1`,
		]);
		const out = join(dir, "from-skopeo.img");
		await ok(BIN.guest, [
			"export",
			`oci:${copy}:v1`,
			"--key",
			keyPath,
			"--out",
			out,
			"--quiet",
		]);
		expect((await readFile(out)).equals(disk)).toBe(true);
	});

	it("copies between layouts and registries: existing blobs skipped, same-registry blobs mounted", async () => {
		const lay = join(dir, "copy-oci");
		const a = await ok(BIN.seal, [
			"copy",
			`docker://${reg.host}/sealed/disk:v1`,
			`oci:${lay}:v1`,
			"--insecure",
			"--json",
			"--quiet",
		]);
		const aj = JSON.parse(a.stdout);
		expect(aj.blobs).toEqual({ uploaded: 2, exists: 0, mounted: 0 });
		const b = await ok(BIN.seal, [
			"copy",
			`docker://${reg.host}/sealed/disk:v1`,
			`docker://${reg.host}/other/disk:copied`,
			"--insecure",
			"--json",
			"--quiet",
		]);
		const bj = JSON.parse(b.stdout);
		expect(bj.blobs).toEqual({ uploaded: 0, exists: 0, mounted: 2 });
		expect(bj.bytesCopied).toBe(0);
		expect(bj.manifest.digest).toBe(aj.manifest.digest);
		const c = await ok(BIN.seal, [
			"copy",
			`oci:${lay}:v1`,
			`docker://${reg.host}/other/disk:again`,
			"--insecure",
			"--json",
			"--quiet",
		]);
		expect(JSON.parse(c.stdout).blobs).toEqual({
			uploaded: 0,
			exists: 2,
			mounted: 0,
		});
		const client = new RegistryClient(reg.host, { insecure: true });
		expect((await client.listTags("other/disk")).sort()).toEqual([
			"again",
			"copied",
		]);
		await client.close();
		// And the copy in the second repository reads lazily too.
		const r = await must(
			guestRead(`docker://${reg.host}/other/disk:copied`, "0", "1M", [
				"--json",
			]),
		);
		expect(JSON.parse(r.stdout).ok).toBe(true);
	});

	it("uploads in chunks (PATCH) when asked, and the registry accepts the digest", async () => {
		const { RegistryEndpoint, LayoutEndpoint } = await import(
			"../src/registry/endpoints.js"
		);
		const { copyImage } = await import("../src/registry/copy.js");
		const client = new RegistryClient(reg.host, { insecure: true });
		const ref = parseReference(`docker://${reg.host}/chunked/disk:v1`);
		if (ref.transport !== "docker") throw new Error("ref");
		const r = await copyImage(
			await LayoutEndpoint.source({ dir: join(dir, "copy-oci"), tag: "v1" }),
			new RegistryEndpoint(client, ref, 1 * MiB),
		);
		expect(r.blobs.uploaded).toBe(2);
		const image = await openRemoteSealedImage(ref, await readKeyFile(keyPath), {
			insecure: true,
		});
		try {
			const at = 10 * 21 * MiB;
			expect(
				(await image.disk.read(at, 2 * MiB)).equals(
					disk.subarray(at, at + 2 * MiB),
				),
			).toBe(true);
		} finally {
			await image.close();
			await client.close();
		}
	});

	it("a missing tag or repository is a clear INPUT_NOT_FOUND (exit 3)", async () => {
		const r = await guestRead(
			`docker://${reg.host}/sealed/disk:nope`,
			"0",
			"1",
		);
		expect(r.code).toBe(3);
		expect(r.stderr).toMatch(/not found.*INPUT_NOT_FOUND/);
	});

	it("plain HTTP without --insecure fails with a hint, not a hang", async () => {
		const r = await runCli(BIN.guest, [
			"read",
			`docker://${reg.host}/sealed/disk:v1`,
			"--key",
			keyPath,
			"--offset",
			"0",
			"--length",
			"1",
			"--retries",
			"1",
		]);
		expect(r.code).toBe(8);
		expect(r.stderr).toMatch(/--insecure/);
	});
});

describe("the persistent chunk cache", () => {
	it("serves a second reader from disk, and refetches (never serves) a corrupted entry", async () => {
		const cache = join(dir, "cache");
		const read = async () => {
			const r = await must(
				guestRead(
					`docker://${reg.host}/sealed/disk:v1`,
					String(21 * MiB),
					String(512 * 1024),
					["--cache-dir", cache, "--json"],
				),
			);
			return JSON.parse(r.stdout);
		};
		const want = (await import("node:crypto"))
			.createHash("sha256")
			.update(disk.subarray(21 * MiB, 21 * MiB + 512 * 1024))
			.digest("hex");
		const first = await read();
		expect(first.sha256).toBe(want);
		expect(first.fetched.chunksFetched).toBe(8);
		const second = await read();
		expect(second.sha256).toBe(want);
		expect(second.fetched.chunksFetched).toBe(0);
		expect(second.fetched.diskHits).toBeGreaterThanOrEqual(8 + 3);
		// An attacker on the host rewrites a cached chunk with a well-formed entry of other bytes.
		const c = await DiskChunkCache.open(cache, 1 << 30);
		const client = new RegistryClient(reg.host, { insecure: true });
		const { bytes } = await client.getManifest("sealed/disk", "v1");
		await client.close();
		const layer = JSON.parse(bytes.toString()).layers[0].digest as string;
		const keys = await cachedKeys(cache, layer);
		expect(keys.length).toBeGreaterThanOrEqual(8);
		let forged = 0;
		for (const k of keys) {
			const [, range] = k.split("/");
			const len = Number(range?.split("+")[1]);
			if (len === 64 * 1024 + 16) {
				await c.put(k, prng(`forged${forged}`, len));
				forged++;
			}
		}
		await c.close();
		expect(forged).toBeGreaterThan(0);
		const third = await read();
		expect(third.sha256).toBe(want);
		expect(third.fetched.refetches).toBeGreaterThanOrEqual(forged);
		expect(third.fetched.chunksFetched).toBe(forged);
		// The refetched bytes replaced the forged entries.
		const fourth = await read();
		expect(fourth.fetched.chunksFetched).toBe(0);
		expect(fourth.fetched.refetches).toBe(0);
	});
});

/** Keys of cached entries of one blob, read from the entry files' headers. */
async function cachedKeys(cache: string, digest: string): Promise<string[]> {
	const { readdir } = await import("node:fs/promises");
	const out: string[] = [];
	for (const e of await readdir(join(cache, "v1"), {
		recursive: true,
		withFileTypes: true,
	})) {
		if (!e.isFile()) continue;
		const b = await readFile(join(e.parentPath, e.name));
		const s = b.toString("latin1");
		const i = s.indexOf(digest);
		if (i >= 0) {
			const m = /^sha256:[0-9a-f]{64}\/\d+\+\d+/.exec(s.slice(i));
			if (m) out.push(m[0]);
		}
	}
	return out;
}

describe("docker:// as a seal source", () => {
	it("sealing a registry image gives the same sealed image as sealing the same image from a layout", async () => {
		if (process.getuid?.() !== 0) throw new Error("these tests run as root");
		const src = await buildTestImage(await tempDir());
		await sh("skopeo", [
			"copy",
			"--dest-tls-verify=false",
			`oci:${src}:v3`,
			`docker://${reg.host}/plain/app:v3`,
		]);
		const sealId = "00112233445566778899aabbccddeeff";
		const fromRegistry = await ok(BIN.seal, [
			"seal",
			`docker://${reg.host}/plain/app:v3`,
			`oci:${join(dir, "from-reg")}:v3`,
			"--key",
			keyPath,
			"--seal-id",
			sealId,
			"--insecure",
			"--json",
			"--quiet",
		]);
		const fromLayout = await ok(BIN.seal, [
			"seal",
			`oci:${src}:v3`,
			`oci:${join(dir, "from-lay")}:v3`,
			"--key",
			keyPath,
			"--seal-id",
			sealId,
			"--json",
			"--quiet",
		]);
		const a = JSON.parse(fromRegistry.stdout);
		const b = JSON.parse(fromLayout.stdout);
		expect(a.source).toMatch(/^docker:\/\/.*@sha256:/);
		expect(a.manifest).toBe(b.manifest);
		// And straight back to the registry: seal docker:// to docker://.
		const both = await ok(BIN.seal, [
			"seal",
			`docker://${reg.host}/plain/app:v3`,
			`docker://${reg.host}/sealed/app:v3`,
			"--key",
			keyPath,
			"--seal-id",
			sealId,
			"--insecure",
			"--json",
			"--quiet",
		]);
		const c = JSON.parse(both.stdout);
		expect(c.manifest).toBe(b.manifest);
		expect(c.push.blobs.uploaded).toBeGreaterThan(0);
	});
});

describe("container tools accept a sealed container image (format v2)", () => {
	it("skopeo inspect shows the platform and the sealed layers and nothing of the source config; skopeo copy keeps the image readable", async () => {
		if (process.getuid?.() !== 0) throw new Error("these tests run as root");
		const src = await buildTestImage(await tempDir());
		const ref = `docker://${reg.host}/sealed/ctr:v3`;
		await ok(BIN.seal, [
			"seal",
			`oci:${src}:v3`,
			ref,
			"--key",
			keyPath,
			"--insecure",
			"--quiet",
		]);
		const facts = JSON.parse(
			(await ok(BIN.seal, ["inspect", ref, "--insecure", "--json"])).stdout,
		);
		// plain inspect (not --raw): c/image parses the manifest and the config as an image
		const { stdout } = await sh("skopeo", [
			"inspect",
			"--tls-verify=false",
			ref,
		]);
		const seen = JSON.parse(stdout);
		expect(seen.Digest).toBe(facts.manifestDigest);
		expect(seen.Os).toBe("linux");
		expect(seen.Architecture).toBe(facts.platform.architecture);
		expect(seen.Layers).toEqual(
			facts.layers.map((l: { digest: string }) => l.digest),
		);
		expect(seen.Layers).toHaveLength(3);
		expect(seen.Env).toBeNull();
		expect(seen.Labels).toBeNull();
		expect(seen.Created).toBeNull();
		expect(stdout).not.toContain("SECRET_TOKEN");
		const config = JSON.parse(
			(await sh("skopeo", ["inspect", "--config", "--tls-verify=false", ref]))
				.stdout,
		);
		expect(config.config).toEqual({
			Entrypoint: ["/.dadi/sealed-image-entrypoint"],
		});
		expect(config.rootfs.diff_ids).toEqual(seen.Layers);
		expect(JSON.stringify(config)).not.toMatch(/s3cr3t|\/bin\/sh|created/);

		// skopeo copy registry → registry and registry → layout; dadi-guest reads both copies
		const copied = `docker://${reg.host}/copied/ctr:v3`;
		await sh("skopeo", [
			"copy",
			"--src-tls-verify=false",
			"--dest-tls-verify=false",
			ref,
			copied,
		]);
		const layout = join(dir, "skopeo-ctr");
		await sh("skopeo", [
			"copy",
			"--src-tls-verify=false",
			ref,
			`oci:${layout}:v3`,
		]);
		const read = async (r: string, extra: string[] = []) =>
			JSON.parse(
				(
					await ok(BIN.guest, [
						"read",
						r,
						"--key",
						keyPath,
						"--offset",
						"0",
						"--length",
						"4M",
						"--json",
						...extra,
					])
				).stdout,
			).sha256;
		const want = await read(ref, ["--insecure"]);
		expect(await read(copied, ["--insecure"])).toBe(want);
		expect(await read(`oci:${layout}:v3`)).toBe(want);
		// the copies are the same image: same manifest digest, and the config decrypts
		const again = JSON.parse(
			(await ok(BIN.seal, ["inspect", copied, "--insecure", "--json"])).stdout,
		);
		expect(again.manifestDigest).toBe(facts.manifestDigest);
		const cfg = JSON.parse(
			(await ok(BIN.guest, ["config", `oci:${layout}:v3`, "--key", keyPath]))
				.stdout,
		);
		expect(cfg.config.Env).toContain("SECRET_TOKEN=s3cr3t");
		await ok(BIN.seal, [
			"verify",
			`oci:${layout}:v3`,
			"--key",
			keyPath,
			"--quiet",
		]);
	});
});

describe("an untrusted registry", () => {
	it("inspect and verify work on registry images; a byte changed in the registry's storage fails reads and verify", async () => {
		const ins = await ok(BIN.seal, [
			"inspect",
			`docker://${reg.host}/sealed/disk:v1`,
			"--insecure",
			"--json",
		]);
		expect(JSON.parse(ins.stdout).virtualSize).toBe(DISK_SIZE);
		await writeDisk(join(dir, "small.img"), 4 * MiB, [
			{ at: 0, bytes: prng("small", 4 * MiB) },
		]);
		await ok(BIN.seal, [
			"seal",
			`raw:${join(dir, "small.img")}`,
			`docker://${reg.host}/tamper/disk:v1`,
			"--key",
			keyPath,
			"--insecure",
			"--quiet",
		]);
		const good = await ok(BIN.seal, [
			"verify",
			`docker://${reg.host}/tamper/disk:v1`,
			"--key",
			keyPath,
			"--insecure",
			"--json",
			"--quiet",
		]);
		expect(JSON.parse(good.stdout).chunks).toBe(64);
		// inside chunk 10 (random data: stored uncompressed, 64 KiB + 16 bytes a chunk)
		await flipLayerByte(
			reg,
			"tamper/disk",
			"v1",
			64 + 10 * (64 * 1024 + 16) + 100,
		);
		const bad = await guestRead(
			`docker://${reg.host}/tamper/disk:v1`,
			String(10 * 64 * 1024),
			"4096",
		);
		expect(bad.code).toBe(5);
		expect(bad.stderr).toContain("AUTH_FAILED");
		expect(bad.stdout).toBe("");
		const other = await must(
			guestRead(
				`docker://${reg.host}/tamper/disk:v1`,
				String(11 * 64 * 1024),
				"4096",
				["--json"],
			),
		);
		expect(JSON.parse(other.stdout).ok).toBe(true); // the rest of the disk still reads
		const verify = await runCli(BIN.seal, [
			"verify",
			`docker://${reg.host}/tamper/disk:v1`,
			"--key",
			keyPath,
			"--insecure",
			"--quiet",
		]);
		expect(verify.code).toBe(5);
		expect(verify.stderr).toMatch(/DIGEST_MISMATCH|AUTH_FAILED/);
	});
});

describe("HTTP_PROXY", () => {
	it("sends registry requests through the proxy the environment names (absolute-form, so a caching proxy sees blob requests)", async () => {
		const http = await import("node:http");
		const seen: string[] = [];
		const server = http.createServer((req, res) => {
			seen.push(`${req.method} ${req.url}`);
			const target = new URL(req.url as string);
			const up = http.request(
				{
					host: target.hostname,
					port: target.port,
					method: req.method,
					path: target.pathname + target.search,
					headers: req.headers,
				},
				(r) => {
					res.writeHead(r.statusCode ?? 502, r.headers);
					r.pipe(res);
				},
			);
			up.on("error", () => res.destroy());
			req.pipe(up);
		});
		const listening = await listenOnLoopback(server);
		const port = listening.port;
		try {
			const env: NodeJS.ProcessEnv = {
				...process.env,
				HTTP_PROXY: `http://127.0.0.1:${port}`,
			};
			delete env.NO_PROXY;
			delete env.no_proxy;
			const r = await guestRead(
				`docker://${reg.host}/sealed/disk:v1`,
				"0",
				"4096",
				["--json"],
				env,
			);
			expect(r.code, r.stderr).toBe(0);
			expect(
				seen.some((s) =>
					s.startsWith(`GET http://${reg.host}/v2/sealed/disk/manifests/v1`),
				),
			).toBe(true);
			expect(seen.some((s) => /^GET http:\/\/.*\/blobs\/sha256:/.test(s))).toBe(
				true,
			);
			// NO_PROXY is honoured too.
			const before = seen.length;
			const direct = await guestRead(
				`docker://${reg.host}/sealed/disk:v1`,
				"0",
				"4096",
				[],
				{ ...env, NO_PROXY: "127.0.0.1" },
			);
			expect(direct.code, direct.stderr).toBe(0);
			expect(seen.length).toBe(before);
		} finally {
			await listening.close();
		}
	});
});
