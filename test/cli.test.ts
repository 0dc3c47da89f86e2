/** The programs as a user runs them: real processes, exit codes, one-line errors, no secrets. */
import { readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sha256Digest } from "../src/oci/digest.js";
import {
	BIN,
	cleanupTempDirs,
	listFiles,
	prng,
	runCli,
	tempDir,
	texty,
	writeDisk,
} from "./helpers.js";

let dir: string;
let disk: Buffer;
let keyText: string;

beforeAll(async () => {
	dir = await tempDir();
	disk = await writeDisk(join(dir, "disk.img"), 3_000_000 + 7, [
		{ at: 0, bytes: prng("cli", 400_000) },
		{ at: 1_000_000, bytes: texty("cli", 600_000) },
	]);
	const r = await runCli(BIN.seal, [
		"keygen",
		"--out",
		join(dir, "k.jwk"),
		"--json",
	]);
	expect(r.code).toBe(0);
	keyText = await readFile(join(dir, "k.jwk"), "utf8");
});
afterAll(cleanupTempDirs);

/** Exactly one line on stderr, naming the problem, and the expected exit code. */
function expectOneLineError(
	r: { code: number; stderr: string },
	exit: number,
	pattern: RegExp,
) {
	expect(r.code).toBe(exit);
	const lines = r.stderr.trimEnd().split("\n");
	expect(lines, r.stderr).toHaveLength(1);
	expect(lines[0]).toMatch(pattern);
}

describe("dadi-seal", () => {
	it("keygen writes a private JWK and refuses to overwrite it", async () => {
		const st = await stat(join(dir, "k.jwk"));
		expect(st.mode & 0o777).toBe(0o600);
		const jwk = JSON.parse(keyText);
		expect(jwk.kty).toBe("oct");
		expect(typeof jwk.kid).toBe("string");
		const again = await runCli(BIN.seal, [
			"keygen",
			"--out",
			join(dir, "k.jwk"),
		]);
		expectOneLineError(again, 3, /already exists.*\[OUTPUT_EXISTS\]/);
		expect(await readFile(join(dir, "k.jwk"), "utf8")).toBe(keyText);
	});

	it("seal → inspect → verify → export round-trips, printing no secret", async () => {
		const k = join(dir, "k.jwk");
		const seal = await runCli(BIN.seal, [
			"seal",
			`raw:${join(dir, "disk.img")}`,
			`oci:${join(dir, "oci")}:v1`,
			"--key",
			k,
			"--json",
			"--quiet",
		]);
		expect(seal.code, seal.stderr).toBe(0);
		const s = JSON.parse(seal.stdout);
		expect(s.ok).toBe(true);
		expect(s.virtualSize).toBe(disk.length);
		expect(s.manifest).toMatch(/^sha256:/);

		const inspect = await runCli(BIN.seal, [
			"inspect",
			`oci:${join(dir, "oci")}:v1`,
			"--json",
		]);
		expect(inspect.code).toBe(0);
		const info = JSON.parse(inspect.stdout);
		expect(info.virtualSize).toBe(disk.length);
		expect(info.layers).toHaveLength(1);
		expect(info.layers[0].storedChunks).toBeGreaterThan(0);
		const human = await runCli(BIN.seal, [
			"inspect",
			`oci:${join(dir, "oci")}:v1`,
		]);
		expect(human.stdout).toMatch(
			/layers \(bottom first, from 1\):\n {2}1 {2}sha256:/,
		);
		const jwk = JSON.parse(keyText);
		for (const out of [seal.stdout, seal.stderr, inspect.stdout, human.stdout])
			expect(out).not.toContain(jwk.k);

		const verify = await runCli(BIN.seal, [
			"verify",
			`oci:${join(dir, "oci")}:v1`,
			"--key",
			k,
			"--json",
		]);
		expect(verify.code, verify.stderr).toBe(0);
		expect(JSON.parse(verify.stdout).chunks).toBe(info.layers[0].storedChunks);

		const exp = await runCli(BIN.seal, [
			"export",
			`oci:${join(dir, "oci")}:v1`,
			"--key",
			k,
			"--out",
			join(dir, "out.img"),
		]);
		expect(exp.code, exp.stderr).toBe(0);
		expect((await readFile(join(dir, "out.img"))).equals(disk)).toBe(true);
		// dadi-guest exports the same
		const g = await runCli(BIN.guest, [
			"export",
			`oci:${join(dir, "oci")}:v1`,
			"--key",
			k,
			"--out",
			join(dir, "out-guest.img"),
			"--quiet",
		]);
		expect(g.code, g.stderr).toBe(0);
		expect((await readFile(join(dir, "out-guest.img"))).equals(disk)).toBe(
			true,
		);
		// no stray files: only blobs, index.json and oci-layout
		const files = await listFiles(join(dir, "oci"));
		expect(
			files.filter(
				(f) =>
					!/^(blobs\/sha256\/[0-9a-f]{64}|index\.json|oci-layout)$/.test(f),
			),
		).toEqual([]);
	});

	it("sealing the same disk with the same key and --seal-id gives identical blobs; another seal id does not", async () => {
		const k = join(dir, "k.jwk");
		const id = "0123456789abcdef0123456789abcdef";
		const a = await runCli(BIN.seal, [
			"seal",
			`raw:${join(dir, "disk.img")}`,
			`oci:${join(dir, "r1")}`,
			"--key",
			k,
			"--seal-id",
			id,
			"--json",
			"--quiet",
		]);
		const b = await runCli(BIN.seal, [
			"seal",
			`raw:${join(dir, "disk.img")}`,
			`oci:${join(dir, "r2")}`,
			"--key",
			k,
			"--seal-id",
			id,
			"--json",
			"--quiet",
		]);
		const c = await runCli(BIN.seal, [
			"seal",
			`raw:${join(dir, "disk.img")}`,
			`oci:${join(dir, "r3")}`,
			"--key",
			k,
			"--seal-id",
			id.replace("0", "f"),
			"--json",
			"--quiet",
		]);
		expect([a.code, b.code, c.code]).toEqual([0, 0, 0]);
		expect(JSON.parse(a.stdout).manifest).toBe(JSON.parse(b.stdout).manifest);
		expect(await listFiles(join(dir, "r1"))).toEqual(
			await listFiles(join(dir, "r2")),
		);
		expect(JSON.parse(c.stdout).manifest).not.toBe(
			JSON.parse(a.stdout).manifest,
		);
		// without --seal-id two seals differ (random layer keys)
		const d = await runCli(BIN.seal, [
			"seal",
			`raw:${join(dir, "disk.img")}`,
			`oci:${join(dir, "r4")}`,
			"--key",
			k,
			"--json",
			"--quiet",
		]);
		expect(JSON.parse(d.stdout).manifest).not.toBe(
			JSON.parse(a.stdout).manifest,
		);
	});

	it("--base adds a layer storing only the changed chunks", async () => {
		const k = join(dir, "k.jwk");
		const mod = Buffer.from(disk);
		prng("changed", 65536).copy(mod, 65536 * 10);
		await writeFile(join(dir, "mod.img"), mod);
		const r = await runCli(BIN.seal, [
			"seal",
			`raw:${join(dir, "mod.img")}`,
			`oci:${join(dir, "oci")}:v2`,
			"--key",
			k,
			"--base",
			`oci:${join(dir, "oci")}:v1`,
			"--json",
			"--quiet",
		]);
		expect(r.code, r.stderr).toBe(0);
		const out = JSON.parse(r.stdout);
		expect(out.layers).toBe(2);
		expect(out.newLayer.storedChunks).toBe(1);
		const exp = await runCli(BIN.seal, [
			"export",
			`oci:${join(dir, "oci")}:v2`,
			"--key",
			k,
			"--out",
			join(dir, "out2.img"),
			"--quiet",
		]);
		expect(exp.code, exp.stderr).toBe(0);
		expect((await readFile(join(dir, "out2.img"))).equals(mod)).toBe(true);
	});

	it("every command has --help", async () => {
		for (const bin of [BIN.seal, BIN.guest, BIN.broker]) {
			const r = await runCli(bin, ["--help"]);
			expect(r.code).toBe(0);
			expect(r.stdout).toMatch(/Usage:/);
		}
		for (const cmd of ["keygen", "seal", "inspect", "verify", "export"]) {
			const r = await runCli(BIN.seal, [cmd, "--help"]);
			expect(r.code).toBe(0);
			expect(r.stdout).toMatch(new RegExp(`Usage: dadi-seal ${cmd}`));
		}
	});
});

describe("bad input: a one-line error and a non-zero exit", () => {
	const k = () => join(dir, "k.jwk");
	const img = () => `oci:${join(dir, "oci")}:v1`;

	it("wrong key", async () => {
		await runCli(BIN.seal, ["keygen", "--out", join(dir, "other.jwk")]);
		const r = await runCli(BIN.seal, [
			"export",
			img(),
			"--key",
			join(dir, "other.jwk"),
			"--out",
			join(dir, "x.img"),
		]);
		expectOneLineError(r, 6, /sealed for key .* \[KEY_MISMATCH\]/);
		await expect(stat(join(dir, "x.img"))).rejects.toThrow();
	});

	it("malformed key file", async () => {
		await writeFile(join(dir, "bad.jwk"), '{"kty":"oct","k":"abc"}');
		expectOneLineError(
			await runCli(BIN.seal, ["verify", img(), "--key", join(dir, "bad.jwk")]),
			6,
			/256 bits.*\[KEY_INVALID\]/,
		);
	});

	it("missing files", async () => {
		expectOneLineError(
			await runCli(BIN.seal, [
				"seal",
				`raw:${join(dir, "nope.img")}`,
				`oci:${join(dir, "o2")}`,
				"--key",
				k(),
			]),
			3,
			/nope\.img: no such file.*\[INPUT_NOT_FOUND\]/,
		);
		expectOneLineError(
			await runCli(BIN.seal, [
				"verify",
				img(),
				"--key",
				join(dir, "nokey.jwk"),
			]),
			3,
			/key file not found; an image opens only with the key it was sealed with.*--broker URL.*cannot open it\) \[INPUT_NOT_FOUND\]/,
		);
		expectOneLineError(
			await runCli(BIN.seal, ["inspect", `oci:${join(dir, "nolayout")}:v1`]),
			3,
			/not an OCI image layout.*\[INPUT_NOT_FOUND\]/,
		);
		expectOneLineError(
			await runCli(BIN.seal, ["inspect", `oci:${join(dir, "oci")}:nosuchtag`]),
			3,
			/no image tagged "nosuchtag".*\[INPUT_NOT_FOUND\]/,
		);
	});

	it("a truncated layout", async () => {
		const idx = JSON.parse(await readFile(join(dir, "oci/index.json"), "utf8"));
		const m = idx.manifests.find(
			(x: any) => x.annotations["org.opencontainers.image.ref.name"] === "v1",
		);
		const manifest = JSON.parse(
			await readFile(join(dir, "oci/blobs/sha256", m.digest.slice(7)), "utf8"),
		);
		const layerPath = join(
			dir,
			"oci/blobs/sha256",
			manifest.layers[0].digest.slice(7),
		);
		const orig = await readFile(layerPath);
		await writeFile(layerPath, orig.subarray(0, orig.length - 100));
		try {
			const r = await runCli(BIN.seal, [
				"export",
				img(),
				"--key",
				k(),
				"--out",
				join(dir, "t.img"),
			]);
			expectOneLineError(r, 5, /\[DIGEST_MISMATCH\]/);
			await expect(stat(join(dir, "t.img"))).rejects.toThrow();
			expect((await listFiles(dir)).filter((f) => f.includes(".tmp"))).toEqual(
				[],
			);
		} finally {
			await writeFile(layerPath, orig);
		}
	});

	it("an unknown format version", async () => {
		// a consistent layout whose sealed config claims schemaVersion 3
		const o = join(dir, "v2layout");
		expect(
			(
				await runCli(BIN.seal, [
					"seal",
					`raw:${join(dir, "disk.img")}`,
					`oci:${o}:t`,
					"--key",
					k(),
					"--quiet",
				])
			).code,
		).toBe(0);
		const idx = JSON.parse(await readFile(join(o, "index.json"), "utf8"));
		const manifest = JSON.parse(
			await readFile(
				join(o, "blobs/sha256", idx.manifests[0].digest.slice(7)),
				"utf8",
			),
		);
		const config = JSON.parse(
			await readFile(
				join(o, "blobs/sha256", manifest.config.digest.slice(7)),
				"utf8",
			),
		);
		// Rewrites config, manifest and index.json so that every digest matches again.
		const storeConsistently = async () => {
			const cb = Buffer.from(JSON.stringify(config));
			manifest.config = {
				...manifest.config,
				digest: sha256Digest(cb),
				size: cb.length,
			};
			for (const l of manifest.layers)
				l.annotations["containerd.io/snapshot/dadi.sealed-config"] =
					manifest.config.digest;
			await writeFile(
				join(o, "blobs/sha256", manifest.config.digest.slice(7)),
				cb,
			);
			const mb = Buffer.from(JSON.stringify(manifest));
			await writeFile(join(o, "blobs/sha256", sha256Digest(mb).slice(7)), mb);
			idx.manifests[0] = {
				...idx.manifests[0],
				digest: sha256Digest(mb),
				size: mb.length,
			};
			await writeFile(join(o, "index.json"), JSON.stringify(idx));
		};
		config["io.dadi.sealed"].schemaVersion = 3;
		await storeConsistently();
		expectOneLineError(
			await runCli(BIN.seal, ["inspect", `oci:${o}:t`]),
			4,
			/schemaVersion 3 is not supported.*\[FORMAT_UNSUPPORTED\]/,
		);
		// an image sealed with format v1 says so, and what to do
		config["io.dadi.sealed"].schemaVersion = 1;
		await storeConsistently();
		expectOneLineError(
			await runCli(BIN.guest, [
				"read",
				`oci:${o}:t`,
				"--key",
				k(),
				"--offset",
				"0",
				"--length",
				"1",
			]),
			4,
			/sealed with format v1.*re-seal.*\[FORMAT_UNSUPPORTED\]/,
		);
		// and a layer whose header claims layer encoding version 2
		const layer = join(o, "blobs/sha256", manifest.layers[0].digest.slice(7));
		const lb = await readFile(layer);
		lb.writeUInt16LE(2, 8);
		await writeFile(layer, lb);
		config["io.dadi.sealed"].schemaVersion = 2;
		await storeConsistently();
		expectOneLineError(
			await runCli(BIN.seal, [
				"export",
				`oci:${o}:t`,
				"--key",
				k(),
				"--out",
				join(dir, "v.img"),
			]),
			4,
			/layer encoding version 2 is not supported.*\[FORMAT_UNSUPPORTED\]/,
		);
	});

	it("nonsense arguments", async () => {
		const cases: [string[], RegExp][] = [
			[["frobnicate"], /unknown command/],
			[["seal", "raw:x", "--key", "k"], /missing required argument/],
			[["seal", "raw:x", "oci:y"], /required option '--key/],
			[
				["seal", "disk.img", "oci:y", "--key", "k"],
				/transport prefix.*\[USAGE\]/,
			],
			[
				["seal", "ftp:x", "oci:y", "--key", "k"],
				/unknown transport "ftp".*\[USAGE\]/,
			],
			[["seal", "raw:x", "raw:y", "--key", "k"], /must be oci:.*\[USAGE\]/],
			[
				["seal", "raw:x", "oci:y:bad/tag", "--key", "k"],
				/not a valid tag|transport/,
			],
			[
				["seal", "raw:x", "oci:y", "--key", "k", "--chunk-size", "lots"],
				/not a size.*\[USAGE\]/,
			],
			[
				["seal", "raw:x", "oci:y", "--key", "k", "--compress", "lzma"],
				/use zstd or none.*\[USAGE\]/,
			],
			[
				["seal", "raw:x", "oci:y", "--key", "k", "--seal-id", "xyz"],
				/32 lowercase hex.*\[USAGE\]/,
			],
			[
				["seal", "raw:x", "oci:y", "--key", "k", "--key-ref", "http://x"],
				/kbs:\/\/\/REPO\/TYPE\/TAG.*\[USAGE\]/,
			],
			[["export", "oci:y", "--key", "k"], /required option '--out/],
		];
		for (const [args, re] of cases) {
			const r = await runCli(BIN.seal, args, dir);
			expect(r.code, args.join(" ")).not.toBe(0);
			expect(
				r.code === 2 || r.code === 3,
				`${args.join(" ")} → ${r.code} ${r.stderr}`,
			).toBe(true);
			expect(r.stderr.trim().split("\n")[0], args.join(" ")).toMatch(re);
		}
		// a chunk size that is not a power of two fails before anything is written
		const r = await runCli(BIN.seal, [
			"seal",
			`raw:${join(dir, "disk.img")}`,
			`oci:${join(dir, "cs")}`,
			"--key",
			k(),
			"--chunk-size",
			"5000",
		]);
		expectOneLineError(r, 2, /power of two.*\[USAGE\]/);
		await expect(stat(join(dir, "cs"))).rejects.toThrow(); // nothing was created
		// dadi-broker has no commands yet and says so with a usage exit code
		expect((await runCli(BIN.broker, ["serve"])).code).toBe(2);
	});

	it("export refuses to overwrite an existing file unless --force", async () => {
		await writeFile(join(dir, "exists.img"), "keep me");
		expectOneLineError(
			await runCli(BIN.seal, [
				"export",
				img(),
				"--key",
				k(),
				"--out",
				join(dir, "exists.img"),
			]),
			3,
			/already exists.*--force.*\[OUTPUT_EXISTS\]/,
		);
		expect(await readFile(join(dir, "exists.img"), "utf8")).toBe("keep me");
		const r = await runCli(BIN.seal, [
			"export",
			img(),
			"--key",
			k(),
			"--out",
			join(dir, "exists.img"),
			"--force",
			"--quiet",
		]);
		expect(r.code).toBe(0);
		expect((await readFile(join(dir, "exists.img"))).equals(disk)).toBe(true);
	});
});
