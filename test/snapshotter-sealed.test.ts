/**
 * Sealed images as containers through real containerd 1.6 (issue 13), as root, everything under
 * temporary directories:
 *
 * - host mode: `dadi-snapshotter pull` claims the sealed layers (containerd downloads none of
 *   them), `ctr run` with runc through dadi-runc gets the image's own entrypoint and env, the
 *   container reads the image's files and writes to its upper layer; the same under gVisor (runsc
 *   through dadi-runsc); an ordinary image through the same snapshotter; restarts of the
 *   snapshotter and containerd between steps; after everything is removed nothing is left
 *   (serves, mounts, loop devices, snapshot directories);
 * - guest mode: the mounts carry the pinned image and key references to the sandbox as a Kata
 *   virtual volume and nothing decrypted; the snapshotter never opens a key file (strace).
 */
import { execFile, spawn } from "node:child_process";
import { copyFile, mkdir, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readKeyFile } from "../src/cli/common.js";
import { type Daemon, killDaemons, startDaemon } from "./daemon.js";
import {
	BIN,
	cleanupTempDirs,
	must,
	runCli,
	tempDir,
	writeKey,
} from "./helpers.js";
import { buildTestImage } from "./image-fixtures.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";
import { type Containerd, startContainerd } from "./snapshotter/containerd.js";
import { unmountUnder } from "./snapshotter/unmount.js";

const sh = promisify(execFile);
let reg: RunningRegistry;
let dir: string;
let keyDir: string;
let keyFile: string;
let bin: string;
let sealed: string;
let plain: string;

const SNAP = "dadi";

beforeAll(async () => {
	if (process.getuid?.() !== 0) throw new Error("these tests run as root");
	reg = await startRegistry();
	dir = await tempDir();
	keyDir = join(dir, "keys");
	await mkdir(keyDir, { mode: 0o700 });
	const k = await writeKey(dir);
	keyFile = join(keyDir, `${(await readKeyFile(k.path)).kid}.jwk`);
	await copyFile(k.path, keyFile);
	// The test image, with an entrypoint of its own that prints an env value of its config.
	const img = await buildTestImage(await tempDir());
	await sh("umoci", [
		"config",
		"--image",
		`${img}:v3`,
		"--config.entrypoint",
		"/bin/busybox",
		"--config.entrypoint",
		"sh",
		"--config.entrypoint",
		"-c",
		"--config.entrypoint",
		'echo "entry:$SECRET_TOKEN:$(pwd)"',
		"--config.workingdir",
		"/srv/app",
		"--tag",
		"v3e",
	]);
	sealed = `${reg.host}/e2e/app:v3`;
	plain = `${reg.host}/e2e/plain:v2`;
	await must(
		runCli(BIN.seal, [
			"seal",
			`oci:${img}:v3e`,
			`docker://${sealed}`,
			"--key",
			k.path,
			"--insecure",
			"--quiet",
		]),
	);
	// containerd 1.6 itself cannot apply the test image's third layer (a directory replaced by a
	// file whose old children the layer names: "mkparent …: not a directory"); the second is fine.
	await sh("skopeo", [
		"copy",
		"--dest-tls-verify=false",
		`oci:${img}:v2`,
		`docker://${plain}`,
	]);
	bin = join(dir, "bin");
	await mkdir(bin);
	await must(
		runCli(BIN.snapshotter, [
			"install-runtime",
			"--dir",
			bin,
			"--root",
			join(dir, "host-root"),
			"--runc",
			"/usr/sbin/runc",
			"--runsc",
			"/usr/bin/runsc",
			// ctr run gives a container no network namespace of its own: gVisor then wants none.
			"--runsc-arg",
			"--network=none",
		]),
	);
});

afterAll(async () => {
	killDaemons();
	// Whatever a failed test left running: serves and gVisor sandboxes started for this directory.
	for (const pid of await processesMentioning(dir))
		try {
			process.kill(pid, "SIGKILL");
		} catch {
			// gone
		}
	await unmountUnder(dir).catch(() => {});
	await reg?.stop();
	await cleanupTempDirs();
});

function snapshotter(
	root: string,
	socket: string,
	extra: string[],
): Promise<Daemon> {
	return startDaemon(BIN.snapshotter, [
		"serve",
		"--root",
		root,
		"--address",
		`unix:${socket}`,
		"--insecure",
		"--json",
		...extra,
	]);
}

const pull = (c: Containerd, ref: string) =>
	must(
		runCli(BIN.snapshotter, [
			"pull",
			`docker://${ref}`,
			"--address",
			c.socket,
			"--snapshotter",
			SNAP,
			"--insecure",
		]),
	);

/** Runs a container to completion and returns its output (ids made unique per run). */
async function run(
	c: Containerd,
	runtime: string,
	image: string,
	name: string,
	cmd: string[] = [],
): Promise<string> {
	const id = `${name}-${process.pid}-${Date.now().toString(36)}`;
	return c.ctr(
		[
			"run",
			"--rm",
			"--snapshotter",
			SNAP,
			"--runc-binary",
			join(bin, runtime),
			image,
			id,
			...cmd,
		],
		180_000,
	);
}

async function processesMentioning(text: string): Promise<number[]> {
	const out: number[] = [];
	for (const p of await readdir("/proc")) {
		if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
		const cmd = await readFile(`/proc/${p}/cmdline`, "utf8").catch(() => "");
		if (cmd.includes(text)) out.push(Number(p));
	}
	return out;
}

async function servesUnder(root: string): Promise<number[]> {
	const out: number[] = [];
	for (const pid of await processesMentioning(root)) {
		const cmd = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
		if (cmd.includes("dadi-guest")) out.push(pid);
	}
	return out;
}

describe("host mode: sealed images run from containerd", () => {
	let c: Containerd;
	let snap: Daemon;
	const root = () => join(dir, "host-root");
	const socket = () => join(dir, "host.sock");

	beforeAll(async () => {
		snap = await snapshotter(root(), socket(), [
			"--mode",
			"host",
			"--key-dir",
			keyDir,
		]);
		c = await startContainerd(join(dir, "containerd-host"), socket());
		await c.waitForSnapshotter();
	});
	afterAll(async () => {
		await c?.stop();
		await snap?.stop();
	});

	it("pulls without downloading a sealed layer, runs with runc and the image's own entrypoint, env and workdir", async () => {
		await pull(c, sealed);
		const content = (await c.ctr(["content", "ls"]))
			.split("\n")
			.map((l) => l.split("\t")[0])
			.join("\n");
		const manifest = JSON.parse(
			(
				await sh("skopeo", [
					"inspect",
					"--raw",
					"--tls-verify=false",
					`docker://${sealed}`,
				])
			).stdout,
		) as { layers: { digest: string }[] };
		for (const l of manifest.layers) expect(content).not.toContain(l.digest);
		expect(await run(c, "dadi-runc", sealed, "e1")).toBe(
			"entry:s3cr3t:/srv/app\n",
		);
		const out = await run(c, "dadi-runc", sealed, "e2", [
			"/bin/busybox",
			"sh",
			"-c",
			"cat /srv/app/config; echo $SECRET_TOKEN; echo written > /new; cat /new; cat /etc/hello-again",
		]);
		expect(out).toBe("port=8080\ns3cr3t\nwritten\nhello from layer 2\n");
	});

	it("runs under gVisor (runsc through dadi-runsc)", async () => {
		const out = await run(c, "dadi-runsc", sealed, "g1", [
			"/bin/busybox",
			"sh",
			"-c",
			"cat /srv/app/config; echo $SECRET_TOKEN",
		]);
		expect(out).toBe("port=8080\ns3cr3t\n");
	});

	it("an ordinary image goes through the same snapshotter", async () => {
		await c.ctr([
			"images",
			"pull",
			"--plain-http",
			"--snapshotter",
			SNAP,
			plain,
		]);
		const out = await run(c, "dadi-runc", plain, "p1", [
			"/bin/busybox",
			"cat",
			"/etc/new",
		]);
		expect(out).toBe("new in layer 2\n");
	});

	it("survives restarts of the snapshotter and containerd, then leaves nothing behind", async () => {
		await snap.stop();
		snap = await snapshotter(root(), socket(), [
			"--mode",
			"host",
			"--key-dir",
			keyDir,
		]);
		await c.restart();
		await c.waitForSnapshotter();
		expect(
			await run(c, "dadi-runc", sealed, "r1", [
				"/bin/busybox",
				"cat",
				"/srv/app/config",
			]),
		).toBe("port=8080\n");
		for (const ref of [sealed, plain])
			await c.ctr(["images", "rm", "--sync", ref]);
		// The snapshotter hears of removals at containerd's next garbage collection.
		for (let i = 0; i < 100; i++) {
			const left = await c.ctr(["snapshots", "--snapshotter", SNAP, "ls"]);
			if (
				left.trim().split("\n").length <= 1 &&
				(await servesUnder(root())).length === 0
			)
				break;
			await new Promise((r) => setTimeout(r, 200));
		}
		expect(
			(await c.ctr(["snapshots", "--snapshotter", SNAP, "ls"]))
				.trim()
				.split("\n"),
		).toHaveLength(1);
		expect(await servesUnder(root())).toEqual([]);
		expect(
			await readdir(join(root(), "dadi", "images")).catch(() => []),
		).toEqual([]);
		// Each serve removed its FUSE mount, loop device and file-system mount as it stopped.
		const mounts = await readFile("/proc/self/mountinfo", "utf8");
		expect(mounts).not.toContain(root());
		expect((await sh("losetup", ["-a"])).stdout).not.toContain(root());
	});
});

describe("guest mode: the sandbox gets the references, the host nothing decrypted", () => {
	it("mounts carry a Kata virtual volume with the pinned image and key references; the key file is never opened", async () => {
		const root = join(dir, "guest-root");
		const socket = join(dir, "guest.sock");
		// The snapshotter under strace: every file it (or a child) opens is recorded.
		// Guest mode takes no key at all...
		const refused = await runCli(BIN.snapshotter, [
			"serve",
			"--root",
			root,
			"--address",
			`unix:${socket}`,
			"--mode",
			"guest",
			"--key-dir",
			keyDir,
		]);
		expect(refused.code).toBe(2);
		expect(refused.stderr).toMatch(/--key-dir.*host mode/);
		// ...and nothing opens the image key while it works: every open of a file in the key
		// directory is reported by inotify (only the snapshotter runs in this test meanwhile).
		const watch = spawn(
			"inotifywait",
			["-m", "-e", "open,access", "--format", "%w%f %e", keyDir],
			{
				stdio: ["ignore", "pipe", "pipe"],
			},
		);
		let opens = "";
		watch.stdout?.on("data", (d) => {
			opens += d;
		});
		await new Promise<void>((resolve, reject) => {
			let err = "";
			watch.stderr?.on("data", (d) => {
				err += d;
				if (err.includes("Watches established")) resolve();
			});
			watch.once("exit", () => reject(new Error(`inotifywait: ${err}`)));
		});
		const snap = await startDaemon(BIN.snapshotter, [
			"serve",
			"--root",
			root,
			"--address",
			`unix:${socket}`,
			"--insecure",
			"--mode",
			"guest",
			"--json",
		]);
		const c = await startContainerd(join(dir, "containerd-guest"), socket);
		try {
			await c.waitForSnapshotter();
			await pull(c, sealed);
			const top = (await c.ctr(["snapshots", "--snapshotter", SNAP, "ls"]))
				.trim()
				.split("\n")
				.slice(1)
				.map((l) => l.split(/\s+/)[0] as string);
			// The top layer's chain id is the one no other snapshot names as its parent.
			const parents = (await c.ctr(["snapshots", "--snapshotter", SNAP, "ls"]))
				.trim()
				.split("\n")
				.slice(1)
				.map((l) => l.split(/\s+/)[1]);
			const head = top.find((k) => !parents.includes(k)) as string;
			const mounts = JSON.parse(
				await c.ctr([
					"snapshots",
					"--snapshotter",
					SNAP,
					"prepare",
					"--mounts",
					"ctr-1",
					head,
				]),
			) as { Type: string; Options: string[] }[];
			expect(mounts).toHaveLength(1);
			const vol = mounts[0]?.Options.find((o) =>
				o.startsWith("io.katacontainers.volume="),
			);
			expect(vol).toBeDefined();
			const v = JSON.parse(
				Buffer.from(
					(vol as string).slice("io.katacontainers.volume=".length),
					"base64",
				).toString(),
			);
			expect(v.volume_type).toBe("image_guest_pull");
			expect(v.source).toMatch(
				new RegExp(`^docker://${reg.host}/e2e/app@sha256:[0-9a-f]{64}$`),
			);
			expect(v.image_pull.metadata["io.dadi.key-ref"]).toMatch(
				/^kbs:\/\/\/default\/image-key\//,
			);
			expect(mounts[0]?.Options.some((o) => o.startsWith("lowerdir="))).toBe(
				false,
			);
			// Nothing of the image is mounted or served on the host.
			expect(await readFile("/proc/self/mountinfo", "utf8")).not.toContain(
				join(root, "dadi"),
			);
			expect(await servesUnder(root)).toEqual([]);
			expect(await servesUnder(sealed.split("/")[0] as string)).toEqual([]);
			await c.ctr(["snapshots", "--snapshotter", SNAP, "rm", "ctr-1"]);
			await c.ctr(["images", "rm", "--sync", sealed]);
		} finally {
			await c.stop();
			await snap.stop();
		}
		expect(opens).toBe("");
		// ...and the watch would have seen one: reading the key file now is reported.
		await readFile(keyFile);
		await new Promise((r) => setTimeout(r, 300));
		watch.kill();
		expect(opens).toContain(`${keyFile} OPEN`);
	});
});
