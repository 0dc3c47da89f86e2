/** dadi-k8s as a program: stdout or --out (atomic, never replacing a file without --force), --json, exit codes. */
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { parse as parseToml } from "smol-toml";
import { afterAll, describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { BIN, cleanupTempDirs, runCli, tempDir } from "./helpers.js";

afterAll(cleanupTempDirs);

const k8s = (...args: string[]) => runCli(BIN.k8s, args);

describe("dadi-k8s", () => {
	it("runtimeclasses to stdout: multi-document YAML of the chosen classes", async () => {
		const r = await k8s("runtimeclasses", "--classes", "gvisor,kata-qemu-tdx");
		expect(r.code, r.stderr).toBe(0);
		const names = parseAllDocuments(r.stdout).map(
			(d) => (d.toJS() as { metadata: { name: string } }).metadata.name,
		);
		expect(names).toEqual(["gvisor", "kata-qemu-tdx"]);
	});

	it("--out writes the file, refuses to replace it without --force (exit 3), replaces it with --force", async () => {
		const dir = await tempDir();
		const out = join(dir, "config.toml");
		const first = await k8s(
			"containerd-config",
			"--containerd",
			"1.7",
			"--out",
			out,
		);
		expect(first.code, first.stderr).toBe(0);
		expect(first.stdout).toContain(`to ${out}`);
		expect(parseToml(await readFile(out, "utf8")).version).toBe(2);

		await writeFile(out, "# the operator's own edits\n");
		const again = await k8s(
			"containerd-config",
			"--containerd",
			"2",
			"--out",
			out,
		);
		expect(again.code).toBe(3);
		expect(again.stderr).toContain("[OUTPUT_EXISTS]");
		expect(await readFile(out, "utf8")).toBe("# the operator's own edits\n");

		const forced = await k8s(
			"containerd-config",
			"--containerd",
			"2",
			"--out",
			out,
			"--force",
		);
		expect(forced.code, forced.stderr).toBe(0);
		expect(parseToml(await readFile(out, "utf8")).version).toBe(3);
		expect(await readdir(dir)).toEqual(["config.toml"]); // no temporary file left
	});

	it("--json for machines: the generated text and what it holds", async () => {
		const r = await k8s(
			"containerd-config",
			"--containerd",
			"1.6.20",
			"--classes",
			"runc-lazy",
			"--json",
		);
		expect(r.code, r.stderr).toBe(0);
		const j = JSON.parse(r.stdout);
		expect(j).toMatchObject({
			ok: true,
			containerd: "1.6",
			configVersion: 2,
			runtimes: [
				{
					name: "runc-lazy",
					runtimeType: "io.containerd.runc.v2",
					snapshotter: "dadi",
				},
			],
		});
		expect(parseToml(j.toml).version).toBe(2);
		const p = JSON.parse(
			(await k8s("pods", "--classes", "runc-lazy", "--json")).stdout,
		);
		expect(p.manifests[0].spec.runtimeClassName).toBe("runc-lazy");
	});

	it("usage errors exit 2 with the option named, also in --json", async () => {
		for (const [args, what] of [
			[["containerd-config", "--containerd", "1.5"], "--containerd"],
			[["containerd-config"], "--containerd"],
			[
				["containerd-config", "--containerd", "2", "--gvisor-shim", "kata"],
				"--gvisor-shim",
			],
			[
				["containerd-config", "--containerd", "2", "--cgroup-driver", "x"],
				"--cgroup-driver",
			],
			[["runtimeclasses", "--classes", "runc"], "runc"],
			[["runtimeclasses", "--overhead", "gvisor=1Gi"], "--overhead"],
			[["runtimeclasses", "--node-selector", "novalue"], "--node-selector"],
			[["pods", "--image", "docker://r.example.com/a:1"], "--image"],
			[["runsc-config", "--platform", "hvf"], "--platform"],
		] as const) {
			const r = await k8s(...args);
			expect(r.code, args.join(" ")).toBe(2);
			expect(r.stderr).toContain(what);
		}
		const j = await k8s("pods", "--image", "Bad", "--json");
		expect(j.code).toBe(2);
		expect(JSON.parse(j.stdout).error.code).toBe("USAGE");
	});

	it("an --out directory that does not exist: exit 3, nothing written", async () => {
		const dir = await tempDir();
		const r = await k8s("pods", "--out", join(dir, "missing", "pods.yaml"));
		expect(r.code).toBe(3);
		expect(r.stderr).toContain("[INPUT_NOT_FOUND]");
	});
});
