/** The deterministic cpio newc writer (src/sandbox/cpio.ts): read back by our reader and by busybox cpio. */
import { execFile } from "node:child_process";
import { lstat, readFile, readlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import {
	type CpioEntry,
	cpioArchive,
	withParents,
} from "../src/sandbox/cpio.js";
import { readCpio } from "../src/sandbox/cpio-reader.js";
import { cleanupTempDirs, tempDir, thrown } from "./helpers.js";

afterAll(cleanupTempDirs);

function sh(cmd: string, args: string[], cwd?: string): Promise<string> {
	return new Promise((resolve, reject) =>
		execFile(cmd, args, { cwd, maxBuffer: 1 << 26 }, (err, out, errOut) =>
			err
				? reject(new Error(`${cmd} ${args.join(" ")}: ${errOut}`))
				: resolve(out),
		),
	);
}

const bytes = (p: { parts: Buffer[] }) => Buffer.concat(p.parts);

const SAMPLE: CpioEntry[] = [
	{ type: "dir", path: "bin" },
	{
		type: "file",
		path: "bin/busybox",
		mode: 0o755,
		data: Buffer.from("#!x\n"),
	},
	{ type: "symlink", path: "bin/sh", target: "/bin/busybox" },
	{ type: "dir", path: "dev" },
	{ type: "chardev", path: "dev/console", major: 5, minor: 1 },
	{ type: "blockdev", path: "dev/nbd0", mode: 0o660, major: 43, minor: 0 },
	{ type: "dir", path: "tmp", mode: 0o1777 },
	{ type: "file", path: "empty", data: Buffer.alloc(0) },
	{ type: "file", path: "odd", data: Buffer.from("abcde") },
];

describe("cpio newc writer", () => {
	it("writes sorted entries with sequential inodes, owner 0, mtime 0 and a trailer", () => {
		const archive = bytes(cpioArchive(SAMPLE));
		const records = readCpio(archive);
		expect(records.map((r) => r.path)).toEqual([
			"bin",
			"bin/busybox",
			"bin/sh",
			"dev",
			"dev/console",
			"dev/nbd0",
			"empty",
			"odd",
			"tmp",
		]);
		expect(records.map((r) => r.ino)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
		for (const r of records) {
			expect(r.uid).toBe(0);
			expect(r.gid).toBe(0);
			expect(r.mtime).toBe(0);
		}
		const by = new Map(records.map((r) => [r.path, r]));
		expect(by.get("bin")?.mode).toBe(0o040755);
		expect(by.get("bin/busybox")?.mode).toBe(0o100755);
		expect(by.get("bin/sh")?.mode).toBe(0o120777);
		expect(by.get("bin/sh")?.data.toString()).toBe("/bin/busybox");
		expect(by.get("dev/console")?.mode).toBe(0o020600);
		expect([
			by.get("dev/nbd0")?.rdevMajor,
			by.get("dev/nbd0")?.rdevMinor,
		]).toEqual([43, 0]);
		expect(by.get("tmp")?.mode).toBe(0o041777);
		expect(by.get("odd")?.data.toString()).toBe("abcde");
		expect(archive.length % 4).toBe(0);
		expect(archive.subarray(-124).toString("latin1")).toContain("TRAILER!!!");
	});

	it("rejects bad paths, duplicates and entries without their directory", () => {
		for (const path of ["", "/abs", "a//b", "a/./b", "../x", "a/"])
			expect(thrown(() => cpioArchive([{ type: "dir", path }])).code).toBe(
				"INPUT_INVALID",
			);
		expect(
			thrown(() =>
				cpioArchive([
					{ type: "dir", path: "a" },
					{ type: "dir", path: "a" },
				]),
			).code,
		).toBe("INPUT_INVALID");
		expect(
			thrown(() =>
				cpioArchive([{ type: "file", path: "a/b", data: Buffer.alloc(1) }]),
			).code,
		).toBe("INPUT_INVALID");
		expect(
			thrown(() => cpioArchive([{ type: "dir", path: "a", mode: 0o10000 }]))
				.code,
		).toBe("INPUT_INVALID");
		// withParents adds the missing directories
		expect(
			readCpio(
				bytes(
					cpioArchive(
						withParents([
							{ type: "file", path: "a/b/c", data: Buffer.alloc(1) },
						]),
					),
				),
			).map((r) => r.path),
		).toEqual(["a", "a/b", "a/b/c"]);
	});

	it("round-trips any tree, and the bytes do not depend on the entries' order (property)", () => {
		const name = fc
			.stringMatching(/^[a-zA-Z0-9._-]{1,12}$/)
			.filter((s) => s !== "." && s !== "..");
		const entry = fc.oneof(
			fc.record({
				type: fc.constant("file" as const),
				data: fc.uint8Array({ maxLength: 70 }),
				mode: fc.integer({ min: 0, max: 0o7777 }),
			}),
			fc.record({
				type: fc.constant("symlink" as const),
				target: fc.stringMatching(/^[a-z/.]{1,20}$/),
			}),
			fc.record({
				type: fc.constant("dir" as const),
				mode: fc.integer({ min: 0, max: 0o7777 }),
			}),
			fc.record({
				type: fc.constant("chardev" as const),
				major: fc.nat(4095),
				minor: fc.nat(1 << 20),
			}),
		);
		fc.assert(
			fc.property(
				fc.uniqueArray(
					fc.tuple(fc.array(name, { minLength: 1, maxLength: 3 }), entry),
					{
						selector: ([p]) => p.join("/"),
						maxLength: 25,
					},
				),
				fc.integer(),
				(list, seed) => {
					const given = list.map(
						([p, e]) => ({ ...e, path: p.join("/") }) as CpioEntry,
					);
					// a path cannot be both a directory (someone's parent) and something else
					const entries = withParents(
						given.filter(
							(e) =>
								e.type === "dir" ||
								!given.some((o) => o.path.startsWith(`${e.path}/`)),
						),
					);
					const archive = bytes(cpioArchive(entries));
					const shuffled = [...entries].sort(
						(a, b) =>
							((a.path.length * 31 + seed) % 7) -
							((b.path.length * 31 + seed) % 7),
					);
					expect(bytes(cpioArchive(shuffled)).equals(archive)).toBe(true);
					const back = readCpio(archive);
					expect(back.map((r) => r.path)).toEqual(
						entries
							.map((e) => e.path)
							.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))),
					);
					const byPath = new Map(entries.map((e) => [e.path, e]));
					for (const r of back) {
						const e = byPath.get(r.path) as CpioEntry;
						if (e.type === "file") {
							expect(Buffer.from(e.data).equals(r.data)).toBe(true);
							expect(r.mode).toBe(0o100000 | (e.mode ?? 0o644));
						} else if (e.type === "symlink")
							expect(r.data.toString()).toBe(e.target);
						else if (e.type === "chardev")
							expect([r.rdevMajor, r.rdevMinor]).toEqual([e.major, e.minor]);
						else if (e.type === "dir") expect(r.mode & 0o170000).toBe(0o040000);
					}
				},
			),
			{ numRuns: 300 },
		);
	});

	it("the reader rejects truncated or corrupt archives with FORMAT_INVALID only", () => {
		const archive = bytes(cpioArchive(SAMPLE));
		fc.assert(
			fc.property(
				fc.nat(archive.length - 1),
				fc.nat(255),
				fc.boolean(),
				(at, v, cut) => {
					const b = Buffer.from(archive);
					if (!cut) b.writeUInt8(v, at);
					const input = cut ? b.subarray(0, at) : b;
					try {
						readCpio(input);
					} catch (e) {
						expect((e as { code?: string }).code).toBe("FORMAT_INVALID");
					}
				},
			),
			{ numRuns: 500 },
		);
	});

	it("busybox cpio lists and extracts what it wrote (as root: device nodes too)", async () => {
		const dir = await tempDir();
		const file = join(dir, "a.cpio");
		await writeFile(file, bytes(cpioArchive(SAMPLE)));
		const listed = (await sh("busybox", ["cpio", "-t", "-F", file]))
			.trim()
			.split("\n");
		expect(listed).toEqual(readCpio(await readFile(file)).map((r) => r.path));
		const out = join(dir, "x");
		await sh("sh", [
			"-c",
			`mkdir ${out} && cd ${out} && busybox cpio -i -d -m -F ${file}`,
		]);
		expect((await readFile(join(out, "odd"))).toString()).toBe("abcde");
		expect((await lstat(join(out, "bin/busybox"))).mode).toBe(0o100755);
		expect(await readlink(join(out, "bin/sh"))).toBe("/bin/busybox");
		expect((await lstat(join(out, "tmp"))).mode & 0o7777).toBe(0o1777);
		expect((await lstat(join(out, "empty"))).size).toBe(0);
		if (process.getuid?.() === 0) {
			const c = await lstat(join(out, "dev/console"));
			expect(c.isCharacterDevice()).toBe(true);
			expect(c.rdev).toBe((5 << 8) | 1);
			expect((await lstat(join(out, "dev/nbd0"))).isBlockDevice()).toBe(true);
		}
	});
});
