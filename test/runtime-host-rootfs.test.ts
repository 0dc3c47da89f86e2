/** Finding a sealed image's run settings from a real overlay mount, as the shim leaves it (root). */
import { execFile } from "node:child_process";
import { chmod, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import {
	findHostRunConfig,
	hostImagesDir,
	RUN_CONFIG_FILE,
} from "../src/runtime/host-rootfs.js";
import { cleanupTempDirs, rejection, tempDir } from "./helpers.js";

const sh = promisify(execFile);
const mounted: string[] = [];

afterAll(async () => {
	for (const m of mounted.reverse())
		await sh("umount", ["-l", m]).catch(() => {});
	await cleanupTempDirs();
});

/** An overlay at DIR/rootfs over `lowers` (topmost first), with an upper of its own. */
async function overlay(dir: string, lowers: string[]): Promise<string> {
	const rootfs = join(dir, "rootfs");
	for (const d of ["rootfs", "upper", "work"])
		await mkdir(join(dir, d), { recursive: true });
	const esc = (p: string) =>
		p.replace(/\\/g, "\\\\").replace(/:/g, "\\:").replace(/,/g, "\\,");
	await sh("mount", [
		"-t",
		"overlay",
		"overlay",
		"-o",
		`lowerdir=${lowers.map(esc).join(":")},upperdir=${join(dir, "upper")},workdir=${join(dir, "work")}`,
		rootfs,
	]);
	mounted.push(rootfs);
	return rootfs;
}

describe("findHostRunConfig", () => {
	it("reads the run settings beside the sealed image's mount under the snapshotter root", async () => {
		if (process.getuid?.() !== 0) throw new Error("runs as root");
		const root = join(await tempDir(), "snap,root");
		const image = join(hostImagesDir(root), "img-1");
		await mkdir(join(image, "mnt"), { recursive: true });
		const other = join(root, "snapshots", "7", "fs");
		await mkdir(other, { recursive: true });
		await writeFile(
			join(image, RUN_CONFIG_FILE),
			JSON.stringify({ config: { Entrypoint: ["/e"], Env: ["A=1"] } }),
			{ mode: 0o600 },
		);
		const rootfs = await overlay(await tempDir(), [other, join(image, "mnt")]);
		const run = await findHostRunConfig(rootfs, root);
		expect(run?.entrypoint).toEqual(["/e"]);
		expect(run?.env).toEqual(["A=1"]);
		// Another root: not ours.
		expect(
			await findHostRunConfig(rootfs, "/var/lib/elsewhere"),
		).toBeUndefined();
		// Not a mount point at all.
		expect(await findHostRunConfig(await tempDir(), root)).toBeUndefined();
		// A settings file others could have written is refused.
		await chmod(join(image, RUN_CONFIG_FILE), 0o666);
		const e = await rejection(findHostRunConfig(rootfs, root));
		expect(e.message).toMatch(/that only root can write/);
	});
});
