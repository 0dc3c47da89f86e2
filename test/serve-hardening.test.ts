/**
 * `dadi-guest serve` against what a new user runs into (issue 12), as root with the real registry:
 * the decrypted disk refused on non-loopback TCP; mount points checked before attesting; what a
 * SIGKILLed server leaves behind cleaned by `dadi-guest cleanup` or by the next start; a hung
 * registry answered with EIO in bounded time, logged, while serving goes on.
 */
import { execFile } from "node:child_process";
import { open, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkNbdExposure, parseListen } from "../src/guest/serve.js";
import { type Daemon, killDaemons, startDaemon } from "./daemon.js";
import {
	BIN,
	cleanupTempDirs,
	must,
	runCli,
	tempDir,
	thrown,
	writeKey,
} from "./helpers.js";
import { buildTestImage } from "./image-fixtures.js";
import {
	type FaultProxy,
	isBlobGet,
	startFaultProxy,
} from "./registry/fault-proxy.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";

const sh = promisify(execFile);
let reg: RunningRegistry;
let proxy: FaultProxy;
let dir: string;
let keyPath: string;
let ref: string;

beforeAll(async () => {
	if (process.getuid?.() !== 0) throw new Error("these tests run as root");
	reg = await startRegistry();
	proxy = await startFaultProxy({ host: reg.host });
	dir = await tempDir();
	keyPath = (await writeKey(dir)).path;
	const src = await buildTestImage(await tempDir());
	ref = `docker://${reg.host}/hardening/app:v3`;
	await must(
		runCli(BIN.seal, [
			"seal",
			`oci:${src}:v3`,
			ref,
			"--key",
			keyPath,
			"--insecure",
			"--quiet",
		]),
	);
});

afterAll(async () => {
	killDaemons();
	await proxy?.close();
	await reg?.stop();
	await cleanupTempDirs();
});

function serve(args: string[]): Promise<Daemon> {
	return startDaemon(BIN.guest, ["serve", ...args, "--json"]);
}

const mountinfo = () => readFile("/proc/self/mountinfo", "utf8");
const loops = async () => (await sh("losetup", ["-a"])).stdout;

describe("the decrypted disk on the network", () => {
	it("is refused on non-loopback TCP unless --nbd-allow-remote; loopback, unix and bare paths are fine", () => {
		const ok = (t: string) =>
			checkNbdExposure(parseListen(t, "--nbd"), t, false);
		for (const t of [
			"tcp:127.0.0.1:10809",
			"tcp:127.9.9.9:1",
			"tcp:[::1]:0",
			"tcp:localhost:0",
			"unix:/run/x.sock",
			"/run/x.sock",
			"./x.sock",
		])
			expect(() => ok(t), t).not.toThrow();
		for (const t of [
			"tcp:0.0.0.0:10809",
			"tcp:[::]:10809",
			"tcp:10.0.2.15:10809",
			"tcp:nbd.example.com:10809",
		]) {
			const e = thrown(() => ok(t));
			expect(e.code).toBe("USAGE");
			expect(e.message).toMatch(/refusing to serve the decrypted disk/);
		}
		expect(() =>
			checkNbdExposure(
				parseListen("tcp:0.0.0.0:1", "--nbd"),
				"tcp:0.0.0.0:1",
				true,
			),
		).not.toThrow();
		expect(parseListen("/run/x.sock", "--nbd")).toEqual({
			unix: "/run/x.sock",
		});
	});

	it("the CLI exits 2 before opening anything; with --nbd-allow-remote it serves and warns", async () => {
		const r = await runCli(BIN.guest, [
			"serve",
			ref,
			"--key",
			join(dir, "no-such-key.jwk"),
			"--nbd",
			"tcp:0.0.0.0:0",
		]);
		expect(r.code).toBe(2);
		expect(r.stderr).toMatch(
			/--nbd "tcp:0\.0\.0\.0:0": refusing to serve the decrypted disk on a non-loopback address.*--nbd-allow-remote.*\[USAGE\]/,
		);
		const s = await serve([
			ref,
			"--key",
			keyPath,
			"--insecure",
			"--nbd",
			"tcp:0.0.0.0:0",
			"--nbd-allow-remote",
		]);
		try {
			expect(String(s.ready.nbd)).toMatch(/^nbd:\/\/0\.0\.0\.0:\d+\/dadi$/);
			expect(s.stderr()).toMatch(
				/warning: the decrypted disk will be readable by anyone who can reach 0\.0\.0\.0/,
			);
		} finally {
			expect(await s.stop(), s.stderr()).toBe(0);
		}
	});
});

describe("--mount-at is checked before attesting", () => {
	// A broker nobody listens on: had serve attested first, it would fail on the broker instead.
	const viaBroker = (mnt: string) =>
		runCli(BIN.guest, [
			"serve",
			ref,
			"--broker",
			"http://127.0.0.1:9",
			"--attester",
			"sample",
			"--insecure",
			"--mount-at",
			mnt,
		]);

	it("a missing directory, a file, and a mount point each get their own error", async () => {
		let r = await viaBroker(join(dir, "missing"));
		expect(r.code).toBe(3);
		expect(r.stderr).toMatch(
			/--mount-at .*missing: no such directory; create it first.*\[INPUT_NOT_FOUND\]/,
		);
		const file = join(dir, "a-file");
		await writeFile(file, "x");
		r = await viaBroker(file);
		expect(r.code).toBe(3);
		expect(r.stderr).toMatch(/not a directory.*\[INPUT_INVALID\]/);
		const busy = join(dir, "busy");
		await sh("mkdir", ["-p", busy]);
		await sh("mount", ["-t", "tmpfs", "-o", "size=1m", "dadi-test", busy]);
		try {
			r = await viaBroker(busy);
			expect(r.code).toBe(3);
			expect(r.stderr).toMatch(
				/already a mount point \(tmpfs from dadi-test\); unmount it or choose another directory.*\[INPUT_INVALID\]/,
			);
		} finally {
			await sh("umount", [busy]);
		}
		expect(r.stderr).not.toMatch(/key broker/);
	});
});

describe("after SIGKILL", () => {
	async function killedServe(mnt: string) {
		const s = await serve([
			ref,
			"--key",
			keyPath,
			"--insecure",
			"--mount-at",
			mnt,
		]);
		const device = String(s.ready.loopDevice);
		s.child.kill("SIGKILL");
		await s.exited;
		// The scenario: all three layers stay behind.
		const m = await mountinfo();
		expect(m).toContain(` ${mnt} `);
		expect(m).toMatch(/fuse\.dadi/);
		expect(await loops()).toContain(`${device}:`);
		return device;
	}

	it("'dadi-guest cleanup MOUNTPOINT' removes the mount, the loop device and the FUSE mount", async () => {
		const mnt = join(dir, "killed");
		await sh("mkdir", ["-p", mnt]);
		const device = await killedServe(mnt);
		const dry = JSON.parse(
			(await must(runCli(BIN.guest, ["cleanup", "--dry-run", "--json"])))
				.stdout,
		);
		expect(dry.dryRun).toBe(true);
		expect(
			dry.stale.some((c: { loops: { device: string }[] }) =>
				c.loops.some((l) => l.device === device),
			),
		).toBe(true);
		expect(await mountinfo()).toContain(` ${mnt} `);
		const r = JSON.parse(
			(await must(runCli(BIN.guest, ["cleanup", mnt, "--json"]))).stdout,
		);
		expect(r.ok).toBe(true);
		expect(r.steps.map((s: { what: string }) => s.what)).toEqual([
			"unmount",
			"detach-loop",
			"unmount-fuse",
			"remove-dir",
		]);
		const m = await mountinfo();
		expect(m).not.toContain(` ${mnt} `);
		expect(m).not.toMatch(/dadi-fuse-/);
		// losetup -d on a device still busy only marks it autoclear: wait for it to go.
		for (let i = 0; i < 50 && (await loops()).includes(`${device}:`); i++)
			await new Promise((res) => setTimeout(res, 100));
		expect(await loops()).not.toContain(`${device}:`);
		// Nothing left: a second run says so.
		const again = await must(runCli(BIN.guest, ["cleanup"]));
		expect(again.stdout).toMatch(/^nothing to clean up/);
		// Not ours: refused clearly.
		const notOurs = await runCli(BIN.guest, ["cleanup", dir]);
		expect(notOurs.code).toBe(3);
		expect(notOurs.stderr).toMatch(/not a mount dadi-guest made/);
	});

	it("the next 'serve --mount-at' on the same directory cleans up and serves", async () => {
		const mnt = join(dir, "killed-again");
		await sh("mkdir", ["-p", mnt]);
		await killedServe(mnt);
		const s = await serve([
			ref,
			"--key",
			keyPath,
			"--insecure",
			"--mount-at",
			mnt,
		]);
		try {
			expect(s.stderr()).toMatch(
				/was left mounted by a dadi-guest that did not stop cleanly; cleaned up: unmount/,
			);
			const { stdout } = await sh("cat", [join(mnt, "etc/app.conf")]);
			expect(stdout).toBe("port=8080\n");
			// a live server's mount is not taken over
			const r = await runCli(BIN.guest, [
				"serve",
				ref,
				"--key",
				keyPath,
				"--insecure",
				"--mount-at",
				mnt,
			]);
			expect(r.code).toBe(3);
			expect(r.stderr).toMatch(
				/a running dadi-guest already serves an image there/,
			);
		} finally {
			expect(await s.stop(), s.stderr()).toBe(0);
		}
		const m = await mountinfo();
		expect(m).not.toContain(` ${mnt} `);
		expect(m).not.toMatch(/dadi-fuse-/);
	});
});

describe("a hung registry", () => {
	it("a read through FUSE gets EIO within the stall timeout, the stall is logged at once, and the file reads again once the registry answers", async () => {
		const fuse = join(dir, "fuse");
		await sh("mkdir", ["-p", fuse]);
		const s = await serve([
			`docker://${proxy.host}/hardening/app:v3`,
			"--key",
			keyPath,
			"--insecure",
			"--fuse",
			fuse,
			"--stall-timeout",
			"2",
			"--hedge-after",
			"0.5",
		]);
		try {
			proxy.setRule((req) =>
				isBlobGet(true)(req) ? { kind: "stall" } : undefined,
			);
			const disk = join(fuse, "disk");
			const started = Date.now();
			const err = await readAt(disk, 1 << 20, 4096).catch(
				(e: NodeJS.ErrnoException) => e,
			);
			const waited = Date.now() - started;
			expect((err as NodeJS.ErrnoException).code).toBe("EIO");
			expect(waited).toBeLessThan(6000);
			expect(s.stderr()).toMatch(
				/registry stalled: no answer to blob sha256:[0-9a-f]+… bytes \d+-\d+ for 0\.5 s; re-issued the request/,
			);
			expect(s.stderr()).toMatch(/made no progress for 2 s/);
			proxy.setRule(undefined);
			const ok = await readAt(disk, 1 << 20, 4096);
			expect(ok.length).toBe(4096);
		} finally {
			proxy.setRule(undefined);
			expect(await s.stop(), s.stderr()).toBe(0);
		}
	});
});

/** One read at `offset`, bypassing the page cache so it reaches the server. */
async function readAt(
	path: string,
	offset: number,
	n: number,
): Promise<Buffer> {
	const fh = await open(path, "r");
	try {
		const b = Buffer.alloc(n);
		const { bytesRead } = await fh.read(b, 0, n, offset);
		return b.subarray(0, bytesRead);
	} finally {
		await fh.close();
	}
}
