/**
 * The FUSE server against the real kernel: stat, cmp, dd, concurrent readers, failing ranges,
 * an ext4 image through a loop device, fio with data verification, close with reads in flight.
 * Needs root and /dev/fuse (CI runs as root); skipped otherwise.
 *
 * Nothing here touches the mount with a synchronous call: the server answers on this thread, so
 * a blocking stat/read of DIR/disk from it would wait for itself. Child processes and fs.promises
 * (libuv's pool) are fine — except spawning a program stored on the served file system directly
 * (see the ext4 test).
 */
import { type SpawnOptions, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readlinkSync } from "node:fs";
import {
	copyFile,
	mkdir,
	open,
	readdir,
	readFile,
	stat,
	writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import type { BlockSource } from "../src/guest/block-source.js";
import { isFuseMounted } from "../src/guest/fuse/mount.js";
import { FuseServer } from "../src/guest/fuse/server.js";
import {
	cleanupTempDirs,
	prng,
	ROOT,
	rejection,
	tempDir,
	writeFioPattern,
} from "./helpers.js";

const canMount = process.getuid?.() === 0 && existsSync("/dev/fuse");
const MiB = 1 << 20;

interface Run {
	code: number | null;
	stdout: Buffer;
	stderr: string;
}

/** Runs a command to completion (killed after `timeoutMs`), collecting its output. */
function run(
	cmd: string,
	args: string[],
	o: SpawnOptions & { timeoutMs?: number } = {},
): Promise<Run> {
	return new Promise((resolve, reject) => {
		const p = spawn(cmd, args, { ...o, stdio: ["ignore", "pipe", "pipe"] });
		const out: Buffer[] = [];
		let err = "";
		p.stdout?.on("data", (d: Buffer) => out.push(d));
		p.stderr?.on("data", (d: Buffer) => {
			err += d.toString();
		});
		const timer = setTimeout(() => p.kill("SIGKILL"), o.timeoutMs ?? 60_000);
		p.on("error", reject);
		p.on("close", (code) => {
			clearTimeout(timer);
			resolve({ code, stdout: Buffer.concat(out), stderr: err });
		});
	});
}

async function ok(cmd: string, args: string[]): Promise<Run> {
	const r = await run(cmd, args);
	if (r.code !== 0)
		throw new Error(`${cmd} ${args.join(" ")} exited ${r.code}: ${r.stderr}`);
	return r;
}

/** dd of `count` blocks of `bs` bytes from `skip` blocks in; stdout is the data. */
function dd(
	file: string,
	bs: number,
	skip: number,
	count: number,
	flags: string[] = [],
): Promise<Run> {
	return run("dd", [
		`if=${file}`,
		`bs=${bs}`,
		`skip=${skip}`,
		`count=${count}`,
		"status=none",
		...flags,
	]);
}

function bufferSource(data: Buffer): BlockSource {
	return {
		size: data.length,
		read: async (o, l) => data.subarray(o, o + l),
	};
}

/** Counts of open /dev/fuse descriptors in this process. */
function fuseFds(): number {
	let n = 0;
	for (const fd of readdirSync("/proc/self/fd"))
		try {
			if (readlinkSync(`/proc/self/fd/${fd}`) === "/dev/fuse") n++;
		} catch {
			// closed meanwhile
		}
	return n;
}

const servers = new Set<FuseServer>();
async function mountAt(
	dir: string,
	o: Parameters<typeof FuseServer.mount>[1],
): Promise<FuseServer> {
	const s = await FuseServer.mount(dir, o);
	servers.add(s);
	return s;
}

afterAll(async () => {
	for (const s of servers) await s.close().catch(() => {});
	await cleanupTempDirs();
});

describe("FUSE server on /dev/fuse", () => {
	beforeAll(() => {
		// CI runs as root on a machine with /dev/fuse: a missing mount is a failure, not a skip.
		if (!canMount)
			throw new Error("the FUSE server tests need root and /dev/fuse");
	});

	describe("a 64 MiB pseudo-random disk", () => {
		const data = prng("fuse-server", 64 * MiB);
		let dir: string;
		let s: FuseServer;
		const lines: string[] = [];
		const readSizes = new Map<number, number>();

		beforeAll(async () => {
			dir = join(await tempDir(), "mnt");
			await mkdir(dir);
			s = await mountAt(dir, {
				source: bufferSource(data),
				log: (l) => lines.push(l),
				onRead: (bytes) =>
					readSizes.set(bytes, (readSizes.get(bytes) ?? 0) + 1),
			});
		});

		it("shows one read-only file of the source's size", async () => {
			expect(s.path).toBe(join(dir, "disk"));
			const st = await stat(s.path);
			expect(st.isFile()).toBe(true);
			expect(st.size).toBe(data.length);
			expect(st.mode & 0o7777).toBe(0o444);
			expect(st.blocks).toBe(data.length / 512);
			const root = await stat(dir);
			expect(root.isDirectory()).toBe(true);
			expect(root.mode & 0o7777).toBe(0o555);
			expect(await readdir(dir)).toEqual(["disk"]);
			const ls = await ok("ls", ["-la", dir]);
			expect(ls.stdout.toString()).toMatch(/-r--r--r-- +1 .* 67108864 .* disk/);
			const mounts = await readFile("/proc/self/mounts", "utf8");
			expect(mounts).toMatch(
				new RegExp(`dadi ${dir} fuse.dadi ro,nosuid,nodev.*allow_other`),
			);
			expect(s.negotiated).toMatchObject({ minor: 45, maxPages: 256 });
		});

		it("reads back whole: cmp and a hash, in 1 MiB READs", async () => {
			const copy = join(await tempDir(), "copy");
			await writeFile(copy, data);
			await ok("cmp", [copy, s.path]);
			const sum = (await ok("sha256sum", [s.path])).stdout
				.toString()
				.split(" ")[0];
			expect(sum).toBe(createHash("sha256").update(data).digest("hex"));
			// The first, uncached pass went through readahead raised to 1 MiB: reads arrive whole.
			expect(Math.max(...readSizes.keys())).toBe(MiB);
		});

		it("dd with block sizes, offsets, O_DIRECT and the end of the file", async () => {
			const cases: [number, number, number, string[]][] = [
				[512, 1, 7, []],
				[4096, 3, 5, ["iflag=direct"]],
				[MiB, 10, 3, []],
				[MiB, 20, 3, ["iflag=direct"]],
				[65536, 1023, 2, ["iflag=direct"]], // the last block, then EOF
				[131072, 12345, 1_000_001, ["iflag=skip_bytes,count_bytes"]],
				[4096, data.length / 4096 - 1, 10, []],
				[4096, data.length / 4096 + 5, 1, []], // past the end: nothing
				[1_000_000, 7, 3, []], // not a multiple of the page size
			];
			for (const [bs, skip, count, flags] of cases) {
				const r = await dd(s.path, bs, skip, count, flags);
				const bytes = flags.some((f) => f.includes("skip_bytes"));
				const from = bytes ? skip : skip * bs;
				const len = bytes ? count : count * bs;
				expect(r.code, `${bs} ${skip} ${count} ${flags}: ${r.stderr}`).toBe(0);
				expect(
					r.stdout.equals(
						data.subarray(
							Math.min(from, data.length),
							Math.min(from + len, data.length),
						),
					),
					`dd bs=${bs} skip=${skip} count=${count} ${flags}`,
				).toBe(true);
			}
			// O_DIRECT 1 MiB reads reach the server whole.
			expect(readSizes.get(MiB)).toBeGreaterThan(0);
		});

		it("serves many concurrent readers", async () => {
			const rnd = prng("offsets", 4 * 500);
			const at = (i: number) => rnd.readUInt32LE(i * 4);
			// 12 processes with O_DIRECT at once, and 200 reads from this process through the pool.
			const procs = Array.from({ length: 12 }, (_, i) => {
				const bs = [4096, 65536, 262144, MiB][i % 4] as number;
				const blocks = data.length / bs;
				const skip = at(i) % (blocks - 4);
				return dd(s.path, bs, skip, 4, ["iflag=direct"]).then((r) => {
					expect(r.code).toBe(0);
					expect(
						r.stdout.equals(data.subarray(skip * bs, (skip + 4) * bs)),
					).toBe(true);
				});
			});
			const fh = await open(s.path, "r");
			try {
				const reads = Array.from({ length: 200 }, async (_, i) => {
					const off = at(100 + i) % (data.length - 70_000);
					const len = 1 + (at(300 + i) % 70_000);
					const buf = Buffer.alloc(len);
					const { bytesRead } = await fh.read(buf, 0, len, off);
					expect(bytesRead).toBe(len);
					expect(buf.equals(data.subarray(off, off + len))).toBe(true);
				});
				await Promise.all([...procs, ...reads]);
			} finally {
				await fh.close();
			}
			expect(s.stats.errors).toBe(0);
			expect(s.stats.reads).toBeGreaterThan(0);
			expect(s.stats.bytesRead).toBeGreaterThanOrEqual(data.length);
		});

		it("refuses writes", async () => {
			const w = await run("sh", ["-c", `echo x >> ${s.path}`]);
			expect(w.code).not.toBe(0);
			expect(w.stderr).toMatch(/Read-only file system/);
			const t = await run("touch", [join(dir, "new")]);
			expect(t.code).not.toBe(0);
			expect(lines.filter((l) => /failed|malformed/.test(l))).toEqual([]);
		});

		it("is gone from the mount table after close", async () => {
			await s.close();
			expect(isFuseMounted(dir)).toBe(false);
			expect(await readFile("/proc/self/mounts", "utf8")).not.toContain(dir);
			expect(await readdir(dir)).toEqual([]);
			await s.close(); // idempotent
			expect(lines.join("\n")).toMatch(/unmounted/);
		});
	});

	it("answers EIO for ranges the source cannot read, and serves the rest", async () => {
		const data = prng("fuse-failing", 16 * MiB);
		const bad = { from: 4 * MiB, to: 4 * MiB + 65536 };
		const lines: string[] = [];
		const dir = join(await tempDir(), "mnt");
		await mkdir(dir);
		const s = await mountAt(dir, {
			source: {
				size: data.length,
				read: async (o, l) => {
					if (o < bad.to && o + l > bad.from)
						throw new DadiError("AUTH_FAILED", "chunk did not verify");
					return data.subarray(o, o + l);
				},
			},
			log: (l) => lines.push(l),
		});
		try {
			const direct = await dd(s.path, 4096, bad.from / 4096 + 3, 1, [
				"iflag=direct",
			]);
			expect(direct.code).toBe(1);
			expect(direct.stderr).toMatch(/Input\/output error/);
			const buffered = await dd(s.path, MiB, 3, 2);
			expect(buffered.code).toBe(1);
			expect(buffered.stderr).toMatch(/Input\/output error/);
			// Right up to the bad range, and right after it, the disk reads.
			const before = await dd(s.path, 4096, bad.from / 4096 - 1, 1, [
				"iflag=direct",
			]);
			expect(before.code).toBe(0);
			expect(
				before.stdout.equals(data.subarray(bad.from - 4096, bad.from)),
			).toBe(true);
			const after = await dd(s.path, 65536, bad.to / 65536, 16, [
				"iflag=direct",
			]);
			expect(after.stdout.equals(data.subarray(bad.to, bad.to + MiB))).toBe(
				true,
			);
			const far = await dd(s.path, MiB, 10, 6);
			expect(far.code).toBe(0);
			expect(far.stdout.equals(data.subarray(10 * MiB, 16 * MiB))).toBe(true);
			expect(s.stats.errors).toBeGreaterThanOrEqual(2);
			expect(lines.join("\n")).toMatch(/failed, answered EIO: AUTH_FAILED/);
		} finally {
			await s.close();
		}
	});

	it("backs a loop device holding an ext4 file system", async () => {
		const work = await tempDir();
		const tree = join(work, "tree");
		await mkdir(join(tree, "etc"), { recursive: true });
		const hello = "hello from a FUSE-backed loop device\n";
		const big = prng("ext4-file", 3 * MiB + 123);
		await writeFile(join(tree, "etc", "hello.txt"), hello);
		await writeFile(join(tree, "big.bin"), big);
		await copyFile("/bin/busybox", join(tree, "busybox"));
		const img = join(work, "fs.img");
		await ok("mke2fs", ["-q", "-F", "-t", "ext4", "-d", tree, img, "16M"]);
		const dir = join(work, "fuse");
		const mnt = join(work, "ext4");
		await mkdir(dir);
		await mkdir(mnt);
		const s = await mountAt(dir, { source: bufferSource(await readFile(img)) });
		let loop = "";
		let mounted = false;
		try {
			loop = (await ok("losetup", ["-r", "--find", "--show", s.path])).stdout
				.toString()
				.trim();
			expect(loop).toMatch(/^\/dev\/loop\d+$/);
			await ok("mount", ["-t", "ext4", "-o", "ro", loop, mnt]);
			mounted = true;
			expect(await readFile(join(mnt, "etc", "hello.txt"), "utf8")).toBe(hello);
			expect((await readFile(join(mnt, "big.bin"))).equals(big)).toBe(true);
			// Through sh: node's spawn suspends this thread until the child's execve is done (vfork),
			// and an execve of a binary on this mount needs this thread to serve its pages.
			const echo = await ok("sh", [
				"-c",
				`${join(mnt, "busybox")} echo ran from the image`,
			]);
			expect(echo.stdout.toString()).toBe("ran from the image\n");
			await ok("umount", [mnt]);
			mounted = false;
			await ok("losetup", ["-d", loop]);
			loop = "";
		} finally {
			if (mounted) await run("umount", ["-l", mnt]);
			if (loop) await run("losetup", ["-d", loop]);
			await s.close();
		}
		expect(s.stats.errors).toBe(0);
	});

	it("passes fio's verification, sequential and random, and fio notices corruption", async () => {
		const work = await tempDir();
		const pattern = join(work, "pattern");
		const size = 64 * MiB;
		// fio writes its verifiable pattern (a crc32c header in every 4 KiB block) into a plain file...
		await writeFioPattern(pattern, size);
		const data = await readFile(pattern);
		expect(data.length).toBe(size);
		// ... which the server then serves; one block can be made to come back corrupted.
		let corrupt = false;
		const dir = join(await tempDir(), "mnt");
		await mkdir(dir);
		const s = await mountAt(dir, {
			source: {
				size,
				read: async (o, l) => {
					const b = data.subarray(o, o + l);
					const at = 5 * MiB + 100;
					if (!corrupt || o > at || o + l <= at) return b;
					const c = Buffer.from(b);
					c[at - o] = (c[at - o] as number) ^ 1;
					return c;
				},
			},
		});
		const verify = (name: string, rw: string, bs: string) =>
			run("fio", [
				`--name=${name}`,
				`--filename=${s.path}`,
				`--size=${size}`,
				`--rw=${rw}`,
				`--bs=${bs}`,
				"--verify_interval=4096",
				"--verify=crc32c",
				"--direct=1",
				"--ioengine=psync",
				"--readonly",
				"--output-format=json",
			]);
		const passed = (r: Run) => {
			const text = r.stdout.toString() + r.stderr;
			expect(text).not.toMatch(/verify failed/);
			expect(r.code, r.stderr).toBe(0);
			const job = JSON.parse(r.stdout.toString().slice(r.stdout.indexOf("{")))
				.jobs[0];
			expect(job.error).toBe(0);
			expect(job.read.io_bytes).toBe(size); // every block read (and so verified)
		};
		try {
			passed(await verify("seq", "read", "1m"));
			passed(await verify("rand", "randread", "4k"));
			corrupt = true;
			const r = await verify("rand-corrupt", "randread", "4k");
			expect(r.stdout.toString() + r.stderr).toMatch(
				/verify failed at file .* offset 5242880/,
			);
			expect(r.code).not.toBe(0);
		} finally {
			await s.close();
		}
	});

	it("closes with a READ in flight: the reader gets EIO, the mount goes away", async () => {
		const fdsBefore = fuseFds();
		const data = prng("fuse-hang", 4 * MiB);
		let started: () => void = () => {};
		const reading = new Promise<void>((r) => {
			started = r;
		});
		let release: (b: Buffer) => void = () => {};
		const dir = join(await tempDir(), "mnt");
		await mkdir(dir);
		const lines: string[] = [];
		const s = await mountAt(dir, {
			source: {
				size: data.length,
				read: (o, l) => {
					if (o < 2 * MiB) return Promise.resolve(data.subarray(o, o + l));
					started();
					return new Promise<Buffer>((r) => {
						release = r;
					});
				},
			},
			log: (l) => lines.push(l),
			closeTimeoutMs: 300,
		});
		const reader = dd(s.path, 4096, 600, 1, ["iflag=direct"]);
		await reading;
		expect(s.stats.reads).toBeGreaterThan(0);
		const t0 = Date.now();
		await s.close();
		expect(Date.now() - t0).toBeLessThan(5000);
		const r = await reader;
		expect(r.code).not.toBe(0);
		expect(r.stderr).toMatch(/Input\/output error/);
		expect(isFuseMounted(dir)).toBe(false);
		expect(lines.join("\n")).toMatch(/detached/);
		expect(lines.join("\n")).toMatch(/1 READs in flight answered EIO/);
		release(data.subarray(0, 4096)); // the late answer is dropped quietly
		await s.close();
		expect(fuseFds()).toBe(fdsBefore);
	});

	it("lets the process exit while the mount is busy (a loop device on the file)", async () => {
		// Node joins worker threads at exit; the exit hook must get the reader out of poll(2) even
		// though the detached mount lives on (the loop device holds the file), or exit never ends.
		const work = await tempDir();
		const dir = join(work, "mnt");
		await mkdir(dir);
		// A file, not -e with --input-type=module: workers inherit execArgv, and the reader's code
		// is CommonJS.
		const script = join(work, "exit.mjs");
		await writeFile(
			script,
			`
			import { execFile } from "node:child_process";
			import { writeSync } from "node:fs";
			import { FuseServer } from ${JSON.stringify(join(ROOT, "dist/src/guest/fuse/server.js"))};
			const data = Buffer.alloc(8 << 20, 7);
			const s = await FuseServer.mount(process.env.DIR, {
				source: { size: data.length, read: async (o, l) => data.subarray(o, o + l) },
			});
			// Asynchronously: losetup opens the file, and only this thread answers its FUSE requests.
			execFile("losetup", ["-r", "--find", "--show", s.path], (e, out) => {
				if (e) {
					writeSync(2, String(e));
					process.exit(9);
				}
				writeSync(1, out);
				process.exit(3);
			});
		`,
		);
		const p = spawn(process.execPath, [script], {
			env: { ...process.env, DIR: dir },
			stdio: ["ignore", "pipe", "pipe"],
		});
		let out = "";
		let err = "";
		p.stdout?.on("data", (d: Buffer) => {
			out += d.toString();
		});
		p.stderr?.on("data", (d: Buffer) => {
			err += d.toString();
		});
		const timer = setTimeout(() => p.kill("SIGKILL"), 20_000);
		const code = await new Promise<number | null>((r) => p.on("close", r));
		clearTimeout(timer);
		const loop = out.trim();
		if (/^\/dev\/loop\d+$/.test(loop)) await run("losetup", ["-d", loop]);
		expect(loop, err).toMatch(/^\/dev\/loop\d+$/);
		expect(code, err).toBe(3); // not killed by the timer
		expect(isFuseMounted(dir)).toBe(false);
	});

	it("notices an unmount from outside and cleans up", async () => {
		const dir = join(await tempDir(), "mnt");
		await mkdir(dir);
		const lines: string[] = [];
		const s = await mountAt(dir, {
			source: bufferSource(Buffer.alloc(8192)),
			log: (l) => lines.push(l),
		});
		await ok("umount", [dir]);
		for (let i = 0; i < 100 && !lines.some((l) => /from outside/.test(l)); i++)
			await new Promise((r) => setTimeout(r, 20));
		expect(lines.join("\n")).toMatch(/unmounted from outside/);
		await s.close();
		expect(isFuseMounted(dir)).toBe(false);
	});

	it("fails to mount on a missing directory, leaving nothing open", async () => {
		const before = fuseFds();
		const e = await rejection(
			FuseServer.mount(join(await tempDir(), "absent"), {
				source: bufferSource(Buffer.alloc(4096)),
			}),
		);
		expect(e.code).toBe("INPUT_NOT_FOUND");
		expect(fuseFds()).toBe(before);
		const usage = await rejection(
			FuseServer.mount(await tempDir(), {
				source: bufferSource(Buffer.alloc(4096)),
				fileName: "a/b",
			}),
		);
		expect(usage.code).toBe("USAGE");
	});
});
