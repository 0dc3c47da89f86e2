/**
 * containerd configuration: every output parses as TOML (smol-toml) to the structure containerd
 * documents; the 1.6 and 1.7 files are loaded by the real containerd 1.6 (Debian's package):
 * `containerd config dump` must show every key we wrote with our value (so containerd understood
 * each one), and a started containerd must list the `dadi` snapshot proxy plugin and dial the
 * configured socket when a snapshot is asked of it. The 2.x file (config version 3) cannot be loaded
 * here (no containerd 2 is packaged): its structure is checked against the documented v3 keys.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { parse as parseToml } from "smol-toml";
import { afterAll, describe, expect, it } from "vitest";
import { CLASS_NAMES } from "../src/k8s/classes.js";
import {
	CRI_IMAGES_V3,
	CRI_RUNTIME_V3,
	CRI_V2,
	containerdConfig,
} from "../src/k8s/containerd-config.js";
import {
	CONTAINERD_DEFAULTS,
	type ContainerdLine,
	type ContainerdOptions,
	parseContainerdLine,
} from "../src/k8s/containerd-options.js";
import { runscConfig } from "../src/k8s/runsc-config.js";
import { writeToml } from "../src/k8s/toml-writer.js";
import { cleanupTempDirs, tempDir, thrown } from "./helpers.js";

afterAll(async () => {
	for (const c of started) c.kill("SIGKILL");
	await cleanupTempDirs();
});

function opts(
	containerd: ContainerdLine,
	more: Partial<ContainerdOptions> = {},
): ContainerdOptions {
	return {
		...CONTAINERD_DEFAULTS,
		containerd,
		classes: CLASS_NAMES,
		...more,
	};
}

// biome-ignore lint/suspicious/noExplicitAny: parsed TOML trees are walked freely
type Tree = any;
const toml = (o: ContainerdOptions): Tree =>
	parseToml(containerdConfig(o).toml);

describe("containerd configuration (parsed)", () => {
	it("1.6: config version 2, dadi as the CRI-wide snapshotter, no per-runtime snapshotter, annotations on", () => {
		const t = toml(opts("1.6"));
		expect(t.version).toBe(2);
		expect(t.proxy_plugins).toEqual({
			dadi: {
				type: "snapshot",
				address: "/run/dadi-snapshotter/snapshotter.sock",
			},
		});
		const c = t.plugins[CRI_V2].containerd;
		expect(c.snapshotter).toBe("dadi");
		expect(c.disable_snapshot_annotations).toBe(false);
		expect(c.discard_unpacked_layers).toBe(false);
		expect(c.default_runtime_name).toBe("runc");
		expect(Object.keys(c.runtimes)).toEqual(["runc", ...CLASS_NAMES]);
		for (const name of CLASS_NAMES)
			expect(c.runtimes[name].snapshotter, name).toBeUndefined();
		expect(c.runtimes["runc-lazy"]).toMatchObject({
			runtime_type: "io.containerd.runc.v2",
			pod_annotations: ["io.dadi.*"],
			options: { BinaryName: "/usr/local/bin/dadi-runc", SystemdCgroup: true },
		});
		expect(c.runtimes.gvisor).toMatchObject({
			runtime_type: "io.containerd.runsc.v1",
			options: {
				TypeUrl: "io.containerd.runsc.v1.options",
				ConfigPath: "/etc/containerd/runsc.toml",
			},
		});
		expect(c.runtimes["kata-qemu-snp"]).toEqual({
			runtime_type: "io.containerd.kata-qemu-snp.v2",
			runtime_path: "/opt/kata/bin/containerd-shim-kata-v2",
			privileged_without_host_devices: true,
			pod_annotations: ["io.katacontainers.*", "io.dadi.*"],
			container_annotations: ["io.katacontainers.*", "io.dadi.*"],
			options: {
				ConfigPath:
					"/opt/kata/share/defaults/kata-containers/configuration-qemu-snp.toml",
			},
		});
	});

	it("1.7: per-runtime snapshotter, the default snapshotter left alone, proxy exports root", () => {
		const t = toml(opts("1.7"));
		expect(t.version).toBe(2);
		expect(t.proxy_plugins.dadi.exports).toEqual({
			root: "/var/lib/dadi-snapshotter",
		});
		const c = t.plugins[CRI_V2].containerd;
		expect(c.snapshotter).toBeUndefined();
		expect(c.runtimes.runc.snapshotter).toBeUndefined();
		for (const name of CLASS_NAMES)
			expect(c.runtimes[name].snapshotter, name).toBe(
				name.startsWith("kata-") ? "dadi-guest" : "dadi",
			);
		// Kata classes use the guest-mode snapshotter: a second proxy plugin with its own root.
		expect(t.proxy_plugins["dadi-guest"]).toEqual({
			type: "snapshot",
			address: "/run/dadi-snapshotter/guest.sock",
			exports: { root: "/var/lib/dadi-snapshotter-guest" },
		});
	});

	it("2.x: config version 3, the split CRI plugins, runtime_platforms for pulls, no version-2 CRI section", () => {
		const t = toml(opts("2"));
		expect(t.version).toBe(3);
		expect(Object.keys(t.plugins).sort()).toEqual(
			[CRI_IMAGES_V3, CRI_RUNTIME_V3].sort(),
		);
		const images = t.plugins[CRI_IMAGES_V3];
		expect(images.disable_snapshot_annotations).toBe(false);
		expect(images.discard_unpacked_layers).toBe(false);
		expect(images.snapshotter).toBeUndefined();
		expect(Object.keys(images.runtime_platforms)).toEqual([...CLASS_NAMES]);
		for (const name of CLASS_NAMES)
			expect(images.runtime_platforms[name]).toEqual({
				snapshotter: name.startsWith("kata-") ? "dadi-guest" : "dadi",
			});
		const runtimes = t.plugins[CRI_RUNTIME_V3].containerd.runtimes;
		expect(Object.keys(runtimes)).toEqual([...CLASS_NAMES]);
		for (const name of CLASS_NAMES) {
			expect(runtimes[name].snapshotter).toBe(
				name.startsWith("kata-") ? "dadi-guest" : "dadi",
			);
			// Only keys containerd 2.x's CRI runtime config has (internal/cri/config Runtime).
			for (const k of Object.keys(runtimes[name]))
				expect([
					"runtime_type",
					"runtime_path",
					"pod_annotations",
					"container_annotations",
					"options",
					"privileged_without_host_devices",
					"snapshotter",
				]).toContain(k);
		}
		expect(runtimes["kata-qemu-tdx"].runtime_type).toBe(
			"io.containerd.kata-qemu-tdx.v2",
		);
	});

	it("options reach the output: paths, names, cgroup driver, annotations, gVisor on the runc shim", () => {
		const o = opts("1.7", {
			snapshotterName: "dadi2",
			snapshotterSocket: "/run/x/s.sock",
			runcBinary: "/opt/dadi/bin/dadi-runc",
			runscBinary: "/opt/dadi/bin/dadi-runsc",
			gvisorShim: "runc",
			kataShimPath: "/usr/bin/containerd-shim-kata-v2",
			kataConfigDir: "/etc/kata",
			systemdCgroup: false,
			extraAnnotations: ["example.com/*", "io.dadi.*"],
			discardUnpackedLayers: true,
		});
		const t = toml(o);
		expect(t.proxy_plugins.dadi2.address).toBe("/run/x/s.sock");
		const c = t.plugins[CRI_V2].containerd;
		expect(c.discard_unpacked_layers).toBe(true);
		expect(c.runtimes.gvisor).toMatchObject({
			runtime_type: "io.containerd.runc.v2",
			snapshotter: "dadi2",
			pod_annotations: ["io.dadi.*", "example.com/*"],
			options: { BinaryName: "/opt/dadi/bin/dadi-runsc", SystemdCgroup: false },
		});
		expect(c.runtimes["runc-lazy"].options.BinaryName).toBe(
			"/opt/dadi/bin/dadi-runc",
		);
		expect(c.runtimes["kata-qemu-coco-dev"].options.ConfigPath).toBe(
			"/etc/kata/configuration-qemu-coco-dev.toml",
		);
		expect(c.runtimes["kata-qemu-coco-dev"].runtime_path).toBe(
			"/usr/bin/containerd-shim-kata-v2",
		);
	});

	it("bad values are USAGE errors naming the option", () => {
		for (const [more, what] of [
			[{ snapshotterSocket: "run/s.sock" }, "--snapshotter-socket"],
			[{ snapshotterSocket: `/${"s".repeat(120)}` }, "107 bytes"],
			[{ runcBinary: "dadi-runc" }, "--runc-binary"],
			[{ kataConfigDir: "/etc/kata\n[x]" }, "--kata-config-dir"],
			[{ snapshotterName: "Dadi" }, "--snapshotter-name"],
			[{ extraAnnotations: ["*"] }, "--annotations"],
			[{ classes: [] }, "--classes"],
		] as const) {
			const e = thrown(() => containerdConfig(opts("2", more as never)));
			expect(e.code).toBe("USAGE");
			expect(e.message).toContain(what);
		}
		for (const v of ["1.6", "1.6.20", "1.7.x"])
			expect(parseContainerdLine(v)).toBe(v.slice(0, 3));
		for (const v of ["2", "2.0", "2.1.4", "2.x"])
			expect(parseContainerdLine(v)).toBe("2");
		for (const v of ["1.5", "3", "v2", ""])
			expect(thrown(() => parseContainerdLine(v)).code).toBe("USAGE");
	});

	it("runsc shim options: binary_name and the platform", () => {
		expect(
			parseToml(
				runscConfig({
					runscBinary: "/usr/local/bin/dadi-runsc",
					platform: "ptrace",
				}),
			),
		).toEqual({
			binary_name: "/usr/local/bin/dadi-runsc",
			runsc_config: { platform: "ptrace" },
		});
	});

	it("property: the TOML writer round-trips any keys and string values through a real parser", () => {
		fc.assert(
			fc.property(
				fc.uniqueArray(fc.string({ minLength: 1, maxLength: 12 }), {
					minLength: 1,
					maxLength: 4,
				}),
				fc.array(
					fc.tuple(
						fc.string({ minLength: 1, maxLength: 10 }),
						fc.oneof(
							fc.string({ maxLength: 30 }),
							fc.boolean(),
							fc.integer(),
							fc.array(fc.string({ maxLength: 8 }), { maxLength: 3 }),
						),
					),
					{ maxLength: 6 },
				),
				fc.string({ maxLength: 40 }),
				(path, entries, comment) => {
					const uniq = new Map(entries);
					const text = writeToml(
						[
							{
								path,
								comment,
								entries: [...uniq].map(([key, value]) => ({
									key,
									value,
									comment,
								})),
							},
						],
						comment,
					);
					let node: Tree = parseToml(text);
					for (const p of path) node = node[p];
					expect(node).toEqual(Object.fromEntries(uniq));
				},
			),
			{ numRuns: 200 },
		);
	});

	it("property: any valid paths and annotation patterns give a config that parses to them", () => {
		const seg = fc.stringMatching(/^[A-Za-z0-9._-]{1,12}$/);
		const path = fc
			.array(seg, { minLength: 1, maxLength: 4 })
			.map((a) => `/${a.join("/")}`);
		fc.assert(
			fc.property(
				fc.constantFrom<ContainerdLine>("1.6", "1.7", "2"),
				path,
				path,
				path,
				fc.array(fc.stringMatching(/^[a-z][a-z0-9.-]{0,15}(\/\*|\.\*)?$/), {
					maxLength: 3,
				}),
				(line, sock, runc, kata, ann) => {
					const o = opts(line, {
						snapshotterSocket: sock,
						runcBinary: runc,
						kataConfigDir: kata,
						extraAnnotations: ann,
					});
					const t = toml(o);
					const cri =
						line === "2"
							? t.plugins[CRI_RUNTIME_V3].containerd
							: t.plugins[CRI_V2].containerd;
					expect(t.proxy_plugins.dadi.address).toBe(sock);
					expect(cri.runtimes["runc-lazy"].options.BinaryName).toBe(runc);
					expect(cri.runtimes["kata-qemu-snp"].options.ConfigPath).toBe(
						`${kata}/configuration-qemu-snp.toml`,
					);
					for (const a of ann)
						expect(cri.runtimes.gvisor.pod_annotations).toContain(a);
				},
			),
			{ numRuns: 100 },
		);
	});
});

// ---- the real containerd 1.6 -------------------------------------------------------------------

const started = new Set<ChildProcess>();

function run(
	cmd: string,
	args: string[],
): Promise<{ code: number; stdout: string; stderr: string; ms: number }> {
	const t0 = Date.now();
	return new Promise((resolve) =>
		execFile(cmd, args, { timeout: 90_000 }, (err, stdout, stderr) =>
			resolve({
				code: err ? (typeof err.code === "number" ? err.code : 1) : 0,
				stdout,
				stderr,
				ms: Date.now() - t0,
			}),
		),
	);
}

/**
 * A containerd whose every path is under `dir`: root, state, sockets and the opt plugin's
 * directory (which otherwise defaults to /opt/containerd). The generated file is read through
 * `imports`, the way an operator adds a file.
 */
async function containerdConfigFile(
	dir: string,
	fragment: string,
): Promise<string> {
	await writeFile(join(dir, "dadi.toml"), fragment);
	const main = [
		"version = 2",
		`root = "${dir}/root"`,
		`state = "${dir}/state"`,
		`imports = ["${dir}/dadi.toml"]`,
		"[grpc]",
		`  address = "${dir}/containerd.sock"`,
		"[ttrpc]",
		`  address = "${dir}/containerd.sock.ttrpc"`,
		'[plugins."io.containerd.internal.v1.opt"]',
		`  path = "${dir}/opt"`,
		"",
	].join("\n");
	const path = join(dir, "config.toml");
	await writeFile(path, main);
	return path;
}

/** Keys of `want` (leaves) missing from `have` or with another value, as dotted paths. */
function differences(want: Tree, have: Tree, at = ""): string[] {
	const out: string[] = [];
	for (const [k, v] of Object.entries(want)) {
		const p = at === "" ? k : `${at}.${k}`;
		if (v !== null && typeof v === "object" && !Array.isArray(v))
			out.push(...differences(v, have?.[k] ?? {}, p));
		else if (JSON.stringify(have?.[k]) !== JSON.stringify(v)) out.push(p);
	}
	return out;
}

async function dump(line: ContainerdLine): Promise<{ want: Tree; have: Tree }> {
	const dir = await tempDir();
	const text = containerdConfig(opts(line)).toml;
	const cfg = await containerdConfigFile(dir, text);
	const r = await run("containerd", ["--config", cfg, "config", "dump"]);
	expect(r.code, r.stderr).toBe(0);
	return { want: parseToml(text), have: parseToml(r.stdout) };
}

describe("the real containerd 1.6", () => {
	it("is installed (apt-get install containerd runc; .ci/run does)", async () => {
		const r = await run("containerd", ["--version"]);
		expect(r.code, r.stderr).toBe(0);
		expect(r.stdout).toMatch(/containerd .*1\.6\./);
	});

	it("config dump: containerd 1.6 understood every key of the 1.6 file, with our values", async () => {
		const { want, have } = await dump("1.6");
		delete want.version; // the main file's
		expect(differences(want, have)).toEqual([]);
		expect(have.plugins[CRI_V2].containerd.snapshotter).toBe("dadi");
	});

	it("config dump: of the 1.7 file, containerd 1.6 drops exactly the per-runtime snapshotters and the proxy exports", async () => {
		const { want, have } = await dump("1.7");
		delete want.version;
		expect(differences(want, have).sort()).toEqual(
			[
				"proxy_plugins.dadi.exports.root",
				"proxy_plugins.dadi-guest.exports.root",
				...CLASS_NAMES.map(
					(n) => `plugins.${CRI_V2}.containerd.runtimes.${n}.snapshotter`,
				),
			].sort(),
		);
		// ...so 1.6 would pull and run every pod with overlayfs: the reason for the 1.6 file.
		expect(have.plugins[CRI_V2].containerd.snapshotter).toBe("overlayfs");
	});

	it("why the 1.x file is a whole CRI section: an imported file replaces the main file's CRI settings", async () => {
		const dir = await tempDir();
		const cfg = await containerdConfigFile(
			dir,
			containerdConfig(opts("1.7")).toml,
		);
		// The operator's own CRI setting in the main file…
		await writeFile(
			cfg,
			`${await readFile(cfg, "utf8")}[plugins."${CRI_V2}"]\n  sandbox_image = "registry.example.com/pause:9"\n`,
		);
		const r = await run("containerd", ["--config", cfg, "config", "dump"]);
		expect(r.code, r.stderr).toBe(0);
		const have = parseToml(r.stdout) as Tree;
		// …is gone: the import's CRI section replaced it whole (containerd 1.x mergeConfig).
		expect(have.plugins[CRI_V2].sandbox_image).not.toBe(
			"registry.example.com/pause:9",
		);
		expect(have.plugins[CRI_V2].containerd.runtimes["runc-lazy"]).toBeDefined();
	});

	it("started: the dadi proxy plugin and CRI load; containerd dials the configured socket only when a snapshot is asked for", async () => {
		const dir = await tempDir();
		const socket = join(dir, "dadi-snapshotter.sock"); // never created
		const cfg = await containerdConfigFile(
			dir,
			containerdConfig(opts("1.6", { snapshotterSocket: socket })).toml,
		);
		const child = spawn("containerd", ["--config", cfg], {
			stdio: ["ignore", "ignore", "pipe"],
		});
		started.add(child);
		let log = "";
		child.stderr?.on("data", (d) => {
			log += d;
		});
		const exited = new Promise<number | null>((r) =>
			child.once("exit", (code) => {
				started.delete(child);
				r(code);
			}),
		);
		try {
			const address = join(dir, "containerd.sock");
			for (let i = 0; i < 100; i++) {
				if (
					await stat(address).then(
						() => true,
						() => false,
					)
				)
					break;
				await new Promise((r) => setTimeout(r, 100));
			}
			const ctr = (...a: string[]) => run("ctr", ["--address", address, ...a]);
			const plugins = await ctr("plugins", "ls");
			expect(plugins.code, plugins.stderr).toBe(0);
			const row = (type: string, id: string) =>
				plugins.stdout
					.split("\n")
					.map((l) => l.trim().split(/\s+/))
					.find((c) => c[0] === type && c[1] === id);
			expect(row("io.containerd.snapshotter.v1", "dadi")?.at(-1)).toBe("ok");
			expect(row("io.containerd.grpc.v1", "cri")?.at(-1)).toBe("ok");
			// CRI started with our runtimes and dadi as its snapshotter (its start-up log line).
			expect(log).toContain("Snapshotter:dadi");
			expect(log).toContain("DisableSnapshotAnnotations:false");
			expect(log).toMatch(
				/kata-qemu-snp:\{Type:io\.containerd\.kata-qemu-snp\.v2/,
			);
			// The socket does not exist: listing works (metadata only), preparing a snapshot
			// reaches the proxy, which reports the address it could not dial.
			const ls = await ctr("snapshots", "--snapshotter", "dadi", "ls");
			expect(ls.code, ls.stderr).toBe(0);
			const prep = await ctr(
				"snapshots",
				"--snapshotter",
				"dadi",
				"prepare",
				"k1",
			);
			expect(prep.code).not.toBe(0);
			expect(prep.stderr).toContain(socket);
			expect(prep.stderr).toMatch(/unavailable|connection error/);
		} finally {
			child.kill("SIGTERM");
			const code = await Promise.race([
				exited,
				new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 15_000)),
			]);
			if (code === "timeout") child.kill("SIGKILL");
			await exited;
		}
	});
});
