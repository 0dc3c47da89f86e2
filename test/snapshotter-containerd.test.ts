/**
 * dadi-snapshotter as containerd's proxy snapshotter, against the real thing: Debian's containerd
 * 1.6 and runc, the real registry (distribution) holding a small two-layer image built with umoci
 * and pushed with skopeo. containerd pulls through the snapshotter (its differ applies the layers
 * into our mounts), runs containers on it (a file from each layer printed, a write landing in the
 * active snapshot's upper directory), survives restarts of the snapshotter (SIGTERM and SIGKILL)
 * and of containerd, and after the containers and the image are removed and garbage collected
 * nothing is left: no snapshot, directory, mount or shim.
 */
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, killDaemons, startDaemon } from "./daemon.js";
import { BIN, cleanupTempDirs, tempDir } from "./helpers.js";
import { run } from "./image-fixtures.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";
import { type Containerd, startContainerd } from "./snapshotter/containerd.js";

let dir: string;
let reg: RunningRegistry;
let ctd: Containerd | undefined;
let sn: Daemon | undefined;
let image: string;
const root = () => join(dir, "sn-root");
const socket = () => join(dir, "sn.sock");

async function startSnapshotter(): Promise<Daemon> {
	return startDaemon(BIN.snapshotter, [
		"serve",
		"--root",
		root(),
		"--address",
		`unix:${socket()}`,
		"--json",
	]);
}

/** A two-layer image: busybox and /etc/hello, then /etc/layer2 and a changed /etc/hello. */
async function buildImage(d: string): Promise<string> {
	const img = join(d, "oci");
	await run("umoci", ["init", "--layout", img]);
	await run("umoci", ["new", "--image", `${img}:v1`]);
	const b1 = join(d, "b1");
	await run("umoci", ["unpack", "--image", `${img}:v1`, b1]);
	await mkdir(join(b1, "rootfs/bin"), { recursive: true });
	await mkdir(join(b1, "rootfs/etc"), { recursive: true });
	await run("cp", ["/usr/bin/busybox", join(b1, "rootfs/bin/busybox")]);
	await symlink("busybox", join(b1, "rootfs/bin/sh"));
	await writeFile(join(b1, "rootfs/etc/hello"), "hello from layer 1\n");
	await run("umoci", ["repack", "--image", `${img}:v1`, b1]);
	const b2 = join(d, "b2");
	await run("umoci", ["unpack", "--image", `${img}:v1`, b2]);
	await writeFile(join(b2, "rootfs/etc/layer2"), "layer 2 was here\n");
	await run("umoci", ["repack", "--image", `${img}:v2`, b2]);
	await run("umoci", [
		"config",
		"--image",
		`${img}:v2`,
		"--config.cmd",
		"/bin/sh",
		"--tag",
		"v2",
	]);
	return img;
}

interface Meta {
	snapshots: { key: string; id: string; kind: string; parent: string }[];
}
const meta = async (): Promise<Meta> =>
	JSON.parse(await readFile(join(root(), "metadata.json"), "utf8"));

beforeAll(async () => {
	if (process.getuid?.() !== 0) throw new Error("these tests run as root");
	dir = await tempDir();
	reg = await startRegistry();
	const img = await buildImage(dir);
	image = `${reg.host}/snap/app:v2`;
	await run("skopeo", [
		"copy",
		"--dest-tls-verify=false",
		`oci:${img}:v2`,
		`docker://${image}`,
	]);
	sn = await startSnapshotter();
	ctd = await startContainerd(join(dir, "ctd"), socket());
});

afterAll(async () => {
	await ctd?.stop();
	await sn?.stop();
	killDaemons();
	await reg?.stop();
	await cleanupTempDirs();
});

describe("containerd with dadi-snapshotter", () => {
	it("pulls, runs, survives restarts, and leaves nothing behind", async () => {
		const c = ctd as Containerd;
		try {
			expect(await c.ctr(["plugins", "ls"])).toMatch(
				/io\.containerd\.snapshotter\.v1\s+dadi\s+-\s+ok/,
			);
			await c.ctr([
				"images",
				"pull",
				"--plain-http",
				"--snapshotter",
				"dadi",
				image,
			]);
			// Two committed layers, the second on the first, applied by containerd's differ into our mounts.
			let m = await meta();
			expect(m.snapshots.map((s) => s.kind)).toEqual([
				"committed",
				"committed",
			]);
			const [l1, l2] = m.snapshots.sort((a, b) => Number(a.id) - Number(b.id));
			expect(l2?.parent).toBe(l1?.key);
			expect(
				await readFile(
					join(root(), "snapshots", l1?.id as string, "fs/etc/hello"),
					"utf8",
				),
			).toBe("hello from layer 1\n");
			expect(
				await readdir(join(root(), "snapshots", l2?.id as string, "fs/etc")),
			).toEqual(["layer2"]);
			const listed = await c.ctr(["snapshots", "--snapshotter", "dadi", "ls"]);
			expect(listed.trim().split("\n")).toHaveLength(3);

			// Restart the snapshotter (clean stop) between pull and run.
			expect(await sn?.stop()).toBe(0);
			sn = await startSnapshotter();
			await c.waitForSnapshotter();

			const out = await c.ctr([
				"run",
				"--snapshotter",
				"dadi",
				image,
				"c1",
				"/bin/sh",
				"-c",
				"cat /etc/hello /etc/layer2; echo from-the-container > /written; cat /written",
			]);
			expect(out).toBe(
				"hello from layer 1\nlayer 2 was here\nfrom-the-container\n",
			);
			m = await meta();
			const active = m.snapshots.find((s) => s.kind === "active");
			expect(active?.key).toMatch(/\/c1$/);
			expect(
				await readFile(
					join(root(), "snapshots", active?.id as string, "fs/written"),
					"utf8",
				),
			).toBe("from-the-container\n");

			// Restart containerd, then SIGKILL the snapshotter and start it again: still runs.
			await c.restart();
			sn?.child.kill("SIGKILL");
			await sn?.exited;
			sn = await startSnapshotter();
			await c.waitForSnapshotter();
			expect(
				await c.ctr([
					"run",
					"--snapshotter",
					"dadi",
					"--rm",
					image,
					"c2",
					"/bin/sh",
					"-c",
					"cat /etc/layer2; touch /x",
				]),
			).toBe("layer 2 was here\n");
			// --rm removed c2 from containerd at once; its garbage collector removes it from us soon after.
			const actives = async () =>
				(await meta()).snapshots
					.filter((s) => s.kind === "active")
					.map((s) => s.key);
			for (
				let t = Date.now();
				(await actives()).length > 1 && Date.now() - t < 30_000;
			)
				await new Promise((r) => setTimeout(r, 250));
			expect(await actives()).toEqual([active?.key]);

			// Remove everything; containerd's garbage collector removes our snapshots.
			await c.ctr(["containers", "rm", "c1"]);
			await c.ctr(["images", "rm", "--sync", image]);
			const deadline = Date.now() + 30_000;
			while ((await meta()).snapshots.length > 0 && Date.now() < deadline)
				await new Promise((r) => setTimeout(r, 250));
			expect((await meta()).snapshots).toEqual([]);
			expect(await readdir(join(root(), "snapshots"))).toEqual([]);
			expect(
				(await c.ctr(["snapshots", "--snapshotter", "dadi", "ls"]))
					.trim()
					.split("\n"),
			).toHaveLength(1);
			expect(await c.ctr(["content", "ls", "-q"])).toBe("");
			const mountinfo = await readFile("/proc/self/mountinfo", "utf8");
			expect(mountinfo).not.toContain(root());
			expect(mountinfo).not.toContain(join(dir, "ctd"));
			expect(c.shims()).toEqual([]);
		} catch (e) {
			const log = existsSync(c.logFile)
				? (await readFile(c.logFile, "utf8")).slice(-3000)
				: "";
			throw new Error(
				`${(e as Error).message}\n--- containerd log ---\n${log}\n--- snapshotter ---\n${sn?.stderr().slice(-2000)}`,
			);
		}
	});
});
