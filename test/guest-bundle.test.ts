/**
 * The single-file dadi-guest (src/build/guest-bundle.ts) needs nothing but `node`: built into a
 * directory outside the repository with no node_modules anywhere above it and run there with a
 * minimal environment, it reads, exports and serves — FUSE (koffi for mount(2) and, in the reader's
 * worker thread, poll(2)) and NBD — a zstd-compressed sealed image byte for byte, after extracting
 * its two native modules into a private cache under $HOME.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
	buildGuestBundle,
	type GuestBundle,
} from "../src/build/guest-bundle.js";
import { killDaemons, startDaemon } from "./daemon.js";
import {
	cleanupTempDirs,
	must,
	prng,
	ROOT,
	runCli,
	sealInto,
	tempDir,
	texty,
	writeDisk,
	writeKey,
} from "./helpers.js";

const sh = promisify(execFile);
let work: string;
let guest: string;
let bundle: GuestBundle;
let disk: Buffer;
let keyPath: string;
let env: NodeJS.ProcessEnv;
const mnt = () => join(work, "fuse");

/** Every directory from `dir` up to / that holds a node_modules a bare import could resolve to. */
function nodeModulesAbove(dir: string): string[] {
	const found: string[] = [];
	for (let d = dir; ; d = dirname(d)) {
		if (existsSync(join(d, "node_modules"))) found.push(d);
		if (dirname(d) === d) return found;
	}
}

beforeAll(async () => {
	work = await tempDir();
	expect(work.startsWith(ROOT)).toBe(false);
	expect(
		nodeModulesAbove(work),
		"node_modules reachable from the test directory",
	).toEqual([]);
	guest = join(work, "dadi-guest.mjs");
	bundle = await buildGuestBundle(ROOT, guest);
	disk = await writeDisk(join(work, "disk.img"), 3 * 2 ** 20 + 5, [
		{ at: 0, bytes: texty("bundle", 1_500_000) },
		{ at: 2_000_000, bytes: prng("bundle", 300_000) },
	]);
	const key = await writeKey(work);
	keyPath = key.path;
	const sealed = await sealInto(
		join(work, "disk.img"),
		join(work, "img"),
		"v1",
		key.key,
		{
			compression: "zstd",
		},
	);
	expect(sealed.layer.compression).toBe("zstd");
	// No NODE_PATH, NODE_OPTIONS or anything else from the test runner; HOME holds the addon cache.
	env = { PATH: process.env.PATH, HOME: join(work, "home") };
	await mkdir(join(work, "home"));
});

afterAll(async () => {
	killDaemons();
	if (work && (await readFile("/proc/self/mounts", "utf8")).includes(mnt()))
		await sh("umount", ["-l", mnt()]).catch(() => undefined);
	await cleanupTempDirs();
});

const run = (args: string[]) => runCli(guest, args, work, env);
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** The cached addon files, by name, with their modes. */
async function nativeCache(): Promise<Record<string, number>> {
	const dir = join(work, "home/.cache/dadi/native");
	expect((await stat(dir)).mode & 0o777).toBe(0o700);
	const out: Record<string, number> = {};
	for (const f of await readdir(dir))
		out[f] = (await stat(join(dir, f))).mode & 0o777;
	return out;
}

const cacheName = (name: string) => {
	const n = bundle.natives.find((x) => x.name === name);
	if (!n) throw new Error(`${name} is not embedded`);
	return `${n.name}-${n.version}-${n.sha256}.node`;
};

describe("the single-file dadi-guest", () => {
	it("is one module that embeds koffi and zstd-napi for linux-x64", async () => {
		expect(bundle.natives.map((n) => n.name).sort()).toEqual([
			"koffi",
			"zstd-napi",
		]);
		expect((await stat(guest)).mode & 0o111).not.toBe(0);
		const text = await readFile(guest, "utf8");
		expect(text.startsWith("#!/usr/bin/env node\n")).toBe(true);
		// nothing left to resolve at run time but Node's own modules
		const imports = [...text.matchAll(/^import .* from "([^"]+)";$/gm)].map(
			(m) => m[1],
		);
		expect(
			imports.every((s) => s?.startsWith("node:")),
			imports.join(", "),
		).toBe(true);
		expect((await must(run(["--version"]))).stdout.trim()).toBe("0.1.0");
	});

	it("reads and exports a zstd-compressed image with no node_modules, caching zstd-napi privately", async () => {
		const r = await must(
			run([
				"read",
				"oci:./img:v1",
				"--key",
				keyPath,
				"--offset",
				"1000000",
				"--length",
				"65536",
				"--json",
			]),
		);
		expect(JSON.parse(r.stdout).sha256).toBe(
			sha256(disk.subarray(1_000_000, 1_065_536)),
		);
		await must(
			run([
				"export",
				"oci:./img:v1",
				"--key",
				keyPath,
				"--out",
				"out.img",
				"--quiet",
			]),
		);
		expect((await readFile(join(work, "out.img"))).equals(disk)).toBe(true);
		// only what was needed was extracted: zstd-napi, owner read/execute only
		expect(await nativeCache()).toEqual({ [cacheName("zstd-napi")]: 0o500 });
	});

	it("serves the image through FUSE and NBD (koffi loaded in the main and the reader thread)", async () => {
		if (process.getuid?.() !== 0)
			throw new Error("this test runs as root (FUSE mount)");
		await mkdir(mnt());
		const sock = join(work, "nbd.sock");
		const d = await startDaemon(
			guest,
			[
				"serve",
				"oci:./img:v1",
				"--key",
				keyPath,
				"--fuse",
				mnt(),
				"--nbd",
				`unix:${sock}`,
				"--json",
			],
			env,
			work,
		);
		let code: number | null;
		try {
			expect(d.ready.fuse).toBe(join(mnt(), "disk"));
			expect((await readFile(join(mnt(), "disk"))).equals(disk)).toBe(true);
			const copy = join(work, "nbd-copy.img");
			await sh("nbdcopy", [`nbd+unix:///dadi?socket=${sock}`, copy]);
			expect((await readFile(copy)).equals(disk)).toBe(true);
		} finally {
			code = await d.stop();
		}
		expect(code, d.stderr()).toBe(0);
		expect(await readFile("/proc/self/mounts", "utf8")).not.toContain(mnt());
		expect(await nativeCache()).toEqual({
			[cacheName("koffi")]: 0o500,
			[cacheName("zstd-napi")]: 0o500,
		});
	});
});
