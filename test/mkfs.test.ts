/** File-system builds: reproducible (same tree → same bytes, whatever the clock) and faithful. */
import {
	chown,
	mkdir,
	readFile,
	stat,
	utimes,
	writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { buildFilesystem } from "../src/rootfs/mkfs.js";
import { cleanupTempDirs, tempDir } from "./helpers.js";
import { run, sh } from "./image-fixtures.js";

afterAll(cleanupTempDirs);

const T = new Date("2023-03-04T05:06:07Z");

async function tree(dir: string): Promise<string> {
	const s = join(dir, "rootfs");
	await mkdir(join(s, "etc/systemd"), { recursive: true });
	for (const name of [
		'q"uote',
		"a\\x2db",
		"system-systemd\\x2dcryptsetup.slice",
		"plain",
	]) {
		await writeFile(join(s, "etc/systemd", name), `${name}\n`);
		await utimes(join(s, "etc/systemd", name), T, T);
	}
	await mkdir(join(s, 'dir"with-quote'));
	await writeFile(join(s, 'dir"with-quote/inside'), "x\n");
	// This file's atime/ctime reach the image unfixed (its parent's name cannot be quoted to
	// debugfs), so the host must not change them between builds: an atime later than mtime and
	// ctime keeps relatime from updating it when the first build reads the file.
	await utimes(
		join(s, 'dir"with-quote/inside'),
		new Date("2090-01-01T00:00:00Z"),
		T,
	);
	await chown(s, 0, 0);
	for (const d of ["etc/systemd", "etc", 'dir"with-quote', ""])
		await utimes(join(s, d), T, T);
	return s;
}

describe("ext4 builds", () => {
	it("are byte-identical across builds at different times, names debugfs cannot quote included", async () => {
		const dir = await tempDir();
		const staging = await tree(dir);
		const opts = {
			fsType: "ext4" as const,
			staging,
			sizeBytes: 16 << 20,
			inodes: 256,
			uuid: "0b6e7a0c-1111-4222-8333-444455556666",
			timestamp: 1700000000,
		};
		const a = await buildFilesystem({ ...opts, out: join(dir, "a.img") });
		await new Promise((r) => setTimeout(r, 1100)); // the clock moves on; reading the tree touches atimes
		await readFile(join(staging, "etc/systemd/plain"));
		const b = await buildFilesystem({ ...opts, out: join(dir, "b.img") });
		expect(
			(await readFile(join(dir, "a.img"))).equals(
				await readFile(join(dir, "b.img")),
			),
		).toBe(true);
		// only the file inside a directory whose own name cannot be quoted keeps its build-time ctime
		expect(a.unfixedTimes).toBe(1);
		expect(b.unfixedTimes).toBe(1);
		await run("e2fsck", ["-fn", join(dir, "a.img")]);
		// the root directory keeps the staging root's time, and inode times are the fixed timestamp
		const { stdout: rootStat } = await sh("debugfs", [
			"-R",
			"stat /",
			join(dir, "a.img"),
		]);
		expect(rootStat).toMatch(
			new RegExp(`mtime: 0x${(T.getTime() / 1000).toString(16)}`),
		);
		const { stdout: q } = await sh("debugfs", [
			"-R",
			'stat "/etc/systemd/a\\x2db"',
			join(dir, "a.img"),
		]);
		expect(q).toMatch(/ctime: 0x6553f100/);
		expect(q).toMatch(
			new RegExp(`mtime: 0x${(T.getTime() / 1000).toString(16)}`),
		);
		expect((await stat(join(dir, "a.img"))).size).toBe(16 << 20);
	});
});

describe("EROFS builds", () => {
	it("are byte-identical across builds and keep every mtime", async () => {
		const dir = await tempDir();
		const staging = await tree(dir);
		const opts = {
			fsType: "erofs" as const,
			staging,
			uuid: "0b6e7a0c-1111-4222-8333-444455556666",
			timestamp: 1600000000,
		};
		await buildFilesystem({ ...opts, out: join(dir, "a.img") });
		await new Promise((r) => setTimeout(r, 1100));
		await buildFilesystem({ ...opts, out: join(dir, "b.img") });
		expect(
			(await readFile(join(dir, "a.img"))).equals(
				await readFile(join(dir, "b.img")),
			),
		).toBe(true);
	});
});
