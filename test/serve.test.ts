/**
 * `dadi-guest serve` end to end, as root: a real container image (umoci, busybox) sealed and pushed
 * to the real registry, served lazily through FUSE + loop mount (a busybox shell runs from it via
 * chroot) and through NBD (copied by nbdcopy); metrics and stats; a clean shutdown on SIGTERM that
 * leaves no mount, loop device or socket behind; a tampered registry blob gives EIO for its blocks
 * only.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, killDaemons, startDaemon } from "./daemon.js";
import {
	BIN,
	cleanupTempDirs,
	must,
	prng,
	runCli,
	tempDir,
	writeDisk,
	writeFioPattern,
	writeKey,
} from "./helpers.js";
import { buildTestImage } from "./image-fixtures.js";
import {
	flipLayerByte,
	type RunningRegistry,
	startRegistry,
} from "./registry/harness.js";

const sh = promisify(execFile);
const MiB = 1 << 20;
let reg: RunningRegistry;
let dir: string;
let keyPath: string;

type Served = Daemon;

/** Starts `dadi-guest serve … --json` and waits for its ready document. */
function serve(args: string[]): Promise<Served> {
	return startDaemon(BIN.guest, ["serve", ...args, "--json"]);
}

beforeAll(async () => {
	if (process.getuid?.() !== 0) throw new Error("these tests run as root");
	reg = await startRegistry();
	dir = await tempDir();
	keyPath = (await writeKey(dir)).path;
	const src = await buildTestImage(await tempDir());
	await must(
		runCli(BIN.seal, [
			"seal",
			`oci:${src}:v3`,
			`docker://${reg.host}/serve/app:v3`,
			"--key",
			keyPath,
			"--insecure",
			"--quiet",
		]),
	);
});

afterAll(async () => {
	killDaemons();
	await reg?.stop();
	await cleanupTempDirs();
});

async function mounts(): Promise<string> {
	return readFile("/proc/self/mounts", "utf8");
}

describe("dadi-guest serve", () => {
	it("mounts a registry image through FUSE + loop, runs busybox from it, exports metrics, and cleans up on SIGTERM", async () => {
		const mnt = join(dir, "mnt");
		await sh("mkdir", ["-p", mnt]);
		const statsFile = join(dir, "serve-stats.json");
		const s = await serve([
			`docker://${reg.host}/serve/app:v3`,
			"--key",
			keyPath,
			"--insecure",
			"--mount-at",
			mnt,
			"--metrics",
			"tcp:127.0.0.1:0",
			"--stats",
			statsFile,
			"--stats-interval",
			"1",
			"--cache-dir",
			join(dir, "cache"),
		]);
		let code: number | null = null;
		try {
			expect(s.ready.mountedAt).toBe(mnt);
			expect(String(s.ready.loopDevice)).toMatch(/^\/dev\/loop\d+$/);
			expect(String(s.ready.image)).toMatch(/@sha256:/);
			// where the start went, step by step, and the steps add up to no more than the whole
			const t = s.ready.timingsMs as {
				startup: number;
				open: number;
				fuse: number;
				mount: number;
				ready: number;
				key?: number;
				nbd?: number;
			};
			for (const step of ["startup", "open", "fuse", "mount", "ready"] as const)
				expect(t[step], step).toBeGreaterThan(0);
			expect(t.nbd).toBeUndefined();
			expect(t.key).toBeUndefined(); // a key file is read before the image is opened
			expect(t.startup + t.open + t.fuse + t.mount).toBeLessThanOrEqual(
				t.ready + 1,
			);
			const { stdout } = await sh("chroot", [
				mnt,
				"/bin/busybox",
				"sh",
				"-c",
				"/bin/busybox cat /srv/app/static/index.html /etc/app.conf; /bin/busybox echo ran-from-sealed-image",
			]);
			expect(stdout).toBe("<h1>v3</h1>\nport=8080\nran-from-sealed-image\n");
			// the mount is read-only
			await expect(sh("touch", [join(mnt, "x")])).rejects.toThrow();
			const metrics = await (await fetch(String(s.ready.metrics))).text();
			expect(metrics).toMatch(/^dadi_guest_reads_total [1-9]\d*$/m);
			expect(metrics).toMatch(/^dadi_lazy_chunks_fetched_total [1-9]\d*$/m);
			expect(metrics).toContain('dadi_guest_read_seconds_bucket{le="+Inf"}');
			await new Promise((r) => setTimeout(r, 1200));
			const stats = JSON.parse(await readFile(statsFile, "utf8"));
			expect(stats.reads).toBeGreaterThan(0);
			expect(stats.fetched.chunksFetched).toBeGreaterThan(0);
			// the metadata prefetch started at open (on by default), beside the mount
			expect(stats.fetched.metadataPrefetch?.fsType).toBe("ext4");
		} finally {
			code = await s.stop();
		}
		expect(code, s.stderr()).toBe(0);
		const final = JSON.parse(await readFile(statsFile, "utf8"));
		expect(final.fetched.metadataPrefetch).toMatchObject({
			fsType: "ext4",
			stoppedBy: "done",
		});
		expect(final.fetched.metadataPrefetch.metadataChunks).toBeGreaterThan(0);
		expect(s.stderr()).toMatch(/SIGTERM: shutting down/);
		const m = await mounts();
		expect(m).not.toContain(mnt);
		expect(m).not.toMatch(/dadi-fuse-/);
		const loops = (await sh("losetup", ["-a"])).stdout;
		expect(loops).not.toContain(`${String(s.ready.loopDevice)}:`);
	});

	it("serves NBD to nbdcopy, byte-identical to the exported disk, over unix and tcp", async () => {
		const exported = join(dir, "exported.img");
		await must(
			runCli(BIN.guest, [
				"export",
				`docker://${reg.host}/serve/app:v3`,
				"--key",
				keyPath,
				"--insecure",
				"--out",
				exported,
				"--quiet",
			]),
		);
		const sock = join(dir, "nbd.sock");
		const s = await serve([
			`docker://${reg.host}/serve/app:v3`,
			"--key",
			keyPath,
			"--insecure",
			"--nbd",
			`unix:${sock}`,
		]);
		try {
			expect(s.ready.nbd).toBe(`nbd+unix:///dadi?socket=${sock}`);
			const info = JSON.parse(
				(await sh("nbdinfo", ["--json", `nbd+unix:///dadi?socket=${sock}`]))
					.stdout,
			);
			const e = info.exports[0];
			expect(e["export-size"]).toBe((await stat(exported)).size);
			expect(e.is_read_only).toBe(true);
			const copy = join(dir, "nbd-copy.img");
			await sh("nbdcopy", [`nbd+unix:///dadi?socket=${sock}`, copy]);
			const [a, b] = await Promise.all([readFile(exported), readFile(copy)]);
			expect(a.equals(b)).toBe(true);
		} finally {
			expect(await s.stop(), s.stderr()).toBe(0);
		}
		await expect(stat(sock)).rejects.toThrow(); // the socket is removed
		const t = await serve([
			`docker://${reg.host}/serve/app:v3`,
			"--key",
			keyPath,
			"--insecure",
			"--nbd",
			"tcp:127.0.0.1:0",
		]);
		try {
			const uri = String(t.ready.nbd);
			expect(uri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/dadi$/);
			const copy = join(dir, "nbd-tcp-copy.img");
			await sh("qemu-img", ["convert", "-f", "raw", "-O", "raw", uri, copy]);
			const [a, b] = await Promise.all([readFile(exported), readFile(copy)]);
			expect(a.equals(b)).toBe(true);
		} finally {
			expect(await t.stop(), t.stderr()).toBe(0);
		}
	});

	it("fio verifies sequential and random reads of a sealed, lazily served disk through FUSE and a loop device", async () => {
		// fio writes a verifiable pattern (a crc32c header in every 4 KiB block) into a plain disk...
		const pattern = join(dir, "pattern.img");
		const size = 48 * MiB;
		await writeFioPattern(pattern, size);
		// ...which is sealed, pushed, and served from the registry.
		await must(
			runCli(BIN.seal, [
				"seal",
				`raw:${pattern}`,
				`docker://${reg.host}/serve/pattern:v1`,
				"--key",
				keyPath,
				"--insecure",
				"--quiet",
			]),
		);
		const fuse = join(dir, "fuse-fio");
		await sh("mkdir", ["-p", fuse]);
		const s = await serve([
			`docker://${reg.host}/serve/pattern:v1`,
			"--key",
			keyPath,
			"--insecure",
			"--fuse",
			fuse,
		]);
		const loop = (
			await sh("losetup", [
				"--read-only",
				"--find",
				"--show",
				String(s.ready.fuse),
			])
		).stdout.trim();
		try {
			for (const [rw, bs, file] of [
				["read", "1m", String(s.ready.fuse)],
				["randread", "4k", loop],
			] as const) {
				const r = await sh("fio", [
					`--name=${rw}`,
					`--filename=${file}`,
					`--size=${size}`,
					`--rw=${rw}`,
					`--bs=${bs}`,
					"--verify_interval=4096",
					"--verify=crc32c",
					"--direct=1",
					"--ioengine=libaio",
					"--iodepth=16",
					"--readonly",
					"--output-format=json",
				]);
				expect(r.stdout + r.stderr).not.toMatch(/verify failed/);
				const job = JSON.parse(r.stdout.slice(r.stdout.indexOf("{"))).jobs[0];
				expect(job.error).toBe(0);
				expect(job.read.io_bytes).toBe(size); // every block read, so every block verified
			}
		} finally {
			await sh("losetup", ["-d", loop]);
			expect(await s.stop(), s.stderr()).toBe(0);
		}
	});

	it("a tampered registry blob gives EIO for its blocks only, and the server keeps serving", async () => {
		await writeDisk(join(dir, "t.img"), 4 * MiB, [
			{ at: 0, bytes: prng("tamper-serve", 4 * MiB) },
		]);
		await must(
			runCli(BIN.seal, [
				"seal",
				`raw:${join(dir, "t.img")}`,
				`docker://${reg.host}/serve/tampered:v1`,
				"--key",
				keyPath,
				"--insecure",
				"--quiet",
			]),
		);
		// chunk 20 (bytes 1280 KiB .. 1344 KiB of the disk)
		await flipLayerByte(
			reg,
			"serve/tampered",
			"v1",
			64 + 20 * (64 * 1024 + 16) + 7,
			0x40,
		);
		const fuse = join(dir, "fuse");
		await sh("mkdir", ["-p", fuse]);
		const s = await serve([
			`docker://${reg.host}/serve/tampered:v1`,
			"--key",
			keyPath,
			"--insecure",
			"--fuse",
			fuse,
		]);
		try {
			const file = String(s.ready.fuse);
			const bad = await sh("dd", [
				`if=${file}`,
				"of=/dev/null",
				"bs=64k",
				"skip=20",
				"count=1",
				"iflag=direct",
			]).then(
				() => "read",
				(e: { stderr: string }) => e.stderr,
			);
			expect(bad).toMatch(/Input\/output error/);
			const good = await sh(
				"dd",
				[
					`if=${file}`,
					"bs=64k",
					"skip=21",
					"count=4",
					"iflag=direct",
					"status=none",
				],
				{ encoding: "buffer", maxBuffer: 8 * MiB },
			);
			const want = prng("tamper-serve", 4 * MiB).subarray(
				21 * 65536,
				25 * 65536,
			);
			expect(createHash("sha256").update(good.stdout).digest("hex")).toBe(
				createHash("sha256").update(want).digest("hex"),
			);
			expect(s.stderr()).toMatch(/AUTH_FAILED/);
		} finally {
			expect(await s.stop(), s.stderr()).toBe(0);
		}
	});
});
