/** The runtime wrapper script: patches only at create/run, then execs the runtime with the same arguments. */
import { execFile } from "node:child_process";
import { chmod, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { wrapperScript } from "../src/runtime/wrapper.js";
import { cleanupTempDirs, tempDir, thrown } from "./helpers.js";

let dir: string;
let wrapper: string;

beforeAll(async () => {
	dir = await tempDir();
	// A runtime that records its arguments (one per line) and exits 7.
	const runtime = join(dir, "fake-runc");
	await writeFile(
		runtime,
		`#!/bin/sh\nfor a in "$@"; do echo "$a"; done > '${dir}/runtime.args'\nexit 7\n`,
	);
	await chmod(runtime, 0o755);
	// A patcher that records its arguments and fails when the bundle is named "bad".
	const program = join(dir, "patch.js");
	await writeFile(
		program,
		`require("fs").writeFileSync(${JSON.stringify(join(dir, "patch.args"))}, process.argv.slice(2).join("\\n"));
if (process.argv.at(-1) === "bad") { console.error("patch failed"); process.exit(3); }`,
	);
	wrapper = join(dir, "dadi-runc");
	await writeFile(
		wrapper,
		wrapperScript({
			runtime,
			node: process.execPath,
			program,
			snapshotterRoot: "/var/lib/dadi-snapshotter",
		}),
	);
	await chmod(wrapper, 0o755);
});
afterAll(cleanupTempDirs);

function run(args: string[]): Promise<{ code: number; stderr: string }> {
	return new Promise((resolve) =>
		execFile(wrapper, args, (err, _out, stderr) =>
			resolve({ code: err ? Number(err.code) : 0, stderr }),
		),
	);
}

const lines = async (f: string) =>
	(await readFile(join(dir, f), "utf8").catch(() => ""))
		.split("\n")
		.filter(Boolean);

describe("the runtime wrapper", () => {
	it("create with global options: patches the bundle, then runs the runtime with the very same arguments", async () => {
		const args = [
			"--root",
			"/run/containerd/runc/default",
			"--log",
			"/tmp/log.json",
			"--log-format",
			"json",
			"create",
			"--bundle",
			"/run/containerd/io.containerd.runtime.v2.task/default/c1",
			"--pid-file",
			"/tmp/pid",
			"c1",
		];
		const r = await run(args);
		expect(r.code).toBe(7);
		expect(await lines("runtime.args")).toEqual(args);
		expect(await lines("patch.args")).toEqual([
			"patch-bundle",
			"--root",
			"/var/lib/dadi-snapshotter",
			"--",
			"/run/containerd/io.containerd.runtime.v2.task/default/c1",
		]);
	});

	it("run -b=DIR and the default bundle '.'", async () => {
		await run(["run", "-b=/b2", "c2"]);
		expect((await lines("patch.args")).at(-1)).toBe("/b2");
		await run(["--debug", "create", "c3"]);
		expect((await lines("patch.args")).at(-1)).toBe(".");
	});

	it("every other command goes straight to the runtime", async () => {
		await writeFile(join(dir, "patch.args"), "");
		for (const c of [
			["start", "c1"],
			["--root", "/r", "state", "c1"],
			["delete", "--force", "c1"],
		]) {
			const r = await run(c);
			expect(r.code).toBe(7);
			expect(await lines("runtime.args")).toEqual(c);
		}
		expect(await lines("patch.args")).toEqual([]);
	});

	it("a patch failure stops the create: the runtime never runs", async () => {
		await writeFile(join(dir, "runtime.args"), "");
		const r = await run(["create", "--bundle", "bad", "c4"]);
		expect(r.code).toBe(3);
		expect(r.stderr).toContain("patch failed");
		expect(await lines("runtime.args")).toEqual([]);
	});

	it("refuses paths it cannot quote safely", () => {
		expect(
			thrown(() =>
				wrapperScript({
					runtime: "runc",
					node: "/n",
					program: "/p",
					snapshotterRoot: "/r",
				}),
			).code,
		).toBe("USAGE");
		expect(
			thrown(() =>
				wrapperScript({
					runtime: "/x'y",
					node: "/n",
					program: "/p",
					snapshotterRoot: "/r",
				}),
			).code,
		).toBe("USAGE");
	});
});
