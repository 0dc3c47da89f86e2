/**
 * The sandbox micro-VM for real: the guest built from Debian's packages (cached), booted under
 * QEMU (TCG), running dadi-guest (its native addons extracted and loaded in the guest: zstd-napi
 * to read, koffi to mount FUSE), with the network traffic it makes captured to a pcap file.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { join, relative } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildGuestBundle } from "../src/build/guest-bundle.js";
import type { CpioEntry } from "../src/sandbox/cpio.js";
import { defaultSandboxCache } from "../src/sandbox/debs.js";
import { type BuiltGuest, buildGuest } from "../src/sandbox/initramfs.js";
import { parseModinfo } from "../src/sandbox/kmod.js";
import { bootVm, RELAY_ADDRESS } from "../src/sandbox/qemu.js";
import {
	cleanupTempDirs,
	prng,
	ROOT,
	rejection,
	sealInto,
	tempDir,
	writeDisk,
	writeKey,
} from "./helpers.js";

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

let work: string;
let bundle: string;
let guest: BuiltGuest;

beforeAll(async () => {
	work = await tempDir();
	bundle = join(work, "dadi-guest.mjs");
	await buildGuestBundle(ROOT, bundle);
	guest = await buildGuest({ bundle });
});
afterAll(cleanupTempDirs);

/** Every file under `dir`, as archive entries under `at`. */
async function filesUnder(dir: string, at: string): Promise<CpioEntry[]> {
	const out: CpioEntry[] = [];
	const walk = async (d: string) => {
		for (const e of await readdir(d, { withFileTypes: true })) {
			const p = join(d, e.name);
			if (e.isDirectory()) await walk(p);
			else
				out.push({
					type: "file",
					path: `${at}/${relative(dir, p)}`,
					data: await readFile(p),
				});
		}
	};
	await walk(dir);
	return out;
}

describe("sandbox guest image", () => {
	it("is reproducible: two builds into empty caches give the same bytes", async () => {
		const [a, b] = await Promise.all([
			buildGuest({ bundle, cache: await tempDir() }),
			buildGuest({ bundle, cache: await tempDir() }),
		]);
		expect(a.cached || b.cached).toBe(false);
		expect(a.manifest.initramfs.sha256).toBe(b.manifest.initramfs.sha256);
		expect(
			(await readFile(a.initramfs)).equals(await readFile(b.initramfs)),
		).toBe(true);
		expect(a.manifest).toEqual(b.manifest);
		// and the default cache holds the same guest (same inputs, same key)
		expect(guest.manifest.initramfs.sha256).toBe(a.manifest.initramfs.sha256);
		expect(sha256(await readFile(guest.initramfs))).toBe(
			guest.manifest.initramfs.sha256,
		);
		// the manifest names every input
		expect(guest.manifest.packages.map((p) => p.name)).toEqual([
			guest.manifest.kernel.package,
			"libc6",
			"libstdc++6",
			"libgcc-s1",
			"busybox-static",
		]);
		expect(guest.manifest.node.version).toBe(process.version);
		// Debian's kernel has PVH: QEMU boots the uncompressed vmlinux
		expect(guest.manifest.kernel.boot).toBe("pvh");
		expect(sha256(await readFile(guest.kernel))).toBe(
			guest.manifest.kernel.vmlinux?.sha256,
		);
		expect(guest.manifest.bundle.sha256).toBe(sha256(await readFile(bundle)));
		const names = guest.manifest.modules.map((m) => m.name);
		for (const m of [
			"qemu_fw_cfg",
			"virtio_pci",
			"virtio_net",
			"nbd",
			"fuse",
			"loop",
			"ext4",
			"erofs",
			"overlay",
		])
			expect(names).toContain(m);
		// soft dependency before the module that names it, hard ones too
		expect(names.indexOf("crc32c_generic")).toBeLessThan(names.indexOf("ext4"));
		expect(names.indexOf("jbd2")).toBeLessThan(names.indexOf("ext4"));
		expect(guest.manifest.missingSoftdeps).toEqual([]);
	});

	it("every module of Debian's kernel package parses", async () => {
		const kernel = guest.manifest.packages[0];
		const dir = join(
			defaultSandboxCache(),
			"pkgs",
			`${kernel?.name}_${kernel?.version.replaceAll(":", "%3a")}`,
			"lib/modules",
			guest.manifest.kernel.release,
			"kernel",
		);
		let n = 0;
		const walk = async (d: string) => {
			for (const e of await readdir(d, { withFileTypes: true })) {
				const p = join(d, e.name);
				if (e.isDirectory()) await walk(p);
				else if (e.name.endsWith(".ko")) {
					const m = parseModinfo(await readFile(p));
					expect(m.name).toBe(e.name.slice(0, -3).replaceAll("-", "_"));
					n++;
				}
			}
		};
		await walk(dir);
		expect(n).toBeGreaterThan(1000);
	});
});

describe("sandbox VM", () => {
	let server: Server;
	let port: number;
	const hello = `hello from the host ${sha256(Buffer.from(String(Date.now()))).slice(0, 16)}\n`;
	beforeAll(async () => {
		server = createServer((req, res) => {
			if (req.url === "/hello") res.end(hello);
			else res.writeHead(404).end();
		});
		await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
		port = (server.address() as { port: number }).port;
	});
	afterAll(() => new Promise<void>((r) => server.close(() => r())));

	it("boots, loads the modules, runs dadi-guest (zstd-napi and koffi in the guest) and reaches only the host", async () => {
		const dir = await tempDir();
		const disk = prng("sandbox-vm", 1 << 20);
		await writeDisk(join(dir, "disk.img"), disk.length, [
			{ at: 0, bytes: disk },
		]);
		const { key, path: keyPath } = await writeKey(dir);
		await sealInto(join(dir, "disk.img"), join(dir, "img"), "v1", key);
		const job = `
echo "MODULES $(cut -d' ' -f1 /proc/modules | tr '\\n' ' ')"
[ -b /dev/nbd0 ] && echo "NBD0 present"
read -r t0 _ < /proc/uptime; node -e 0; read -r t1 _ < /proc/uptime; echo "NODE-E-0 $t0 $t1"
G="node /opt/dadi/dadi-guest.mjs"
echo "VERSION $($G --version)"
echo "READ $($G read oci:/job/img:v1 --key /job/key.jwk --offset 4096 --length 65536 --json | tr -d '\n')"
mkdir -p /fuse
$G serve oci:/job/img:v1 --key /job/key.jwk --fuse /fuse --json > /tmp/serve.out 2>&1 &
pid=$!
i=0; while [ ! -e /fuse/disk ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
echo "FUSE $(sha256sum /fuse/disk | cut -d' ' -f1)"
kill -TERM $pid; wait $pid; rc=$?; echo "SERVE-EXIT $rc"
[ $rc = 0 ] || cat /tmp/serve.out
echo "NATIVE $(ls /root/.cache/dadi/native | tr '\\n' ' ')"
echo "WGET $(wget -q -O - http://10.0.2.2:${port}/hello)"
exit 7
`;
		const pcapFile = join(dir, "guest.pcap");
		const r = await bootVm({
			kernel: guest.kernel,
			initramfs: guest.initramfs,
			argv: ["/bin/sh", "/job/job.sh"],
			env: { DADI_TEST: "1" },
			files: [
				{
					type: "file",
					path: "job/job.sh",
					mode: 0o755,
					data: Buffer.from(job),
				},
				{
					type: "file",
					path: "job/key.jwk",
					mode: 0o600,
					data: await readFile(keyPath),
				},
				...(await filesUnder(join(dir, "img"), "job/img")),
			],
			memoryMiB: 512,
			pcapFile,
			timeoutMs: 240_000,
		});
		const out = r.lines.join("\n");
		const line = (tag: string) =>
			r.lines.find((l) => l.startsWith(`${tag} `))?.slice(tag.length + 1) ?? "";
		expect(r.exitCode, out).toBe(7);
		for (const m of [
			"nbd",
			"fuse",
			"loop",
			"ext4",
			"erofs",
			"overlay",
			"virtio_net",
			"qemu_fw_cfg",
		])
			expect(line("MODULES").split(" "), out).toContain(m);
		expect(out).toContain("NBD0 present");
		expect(out).not.toContain('"event":"module-failed"');
		expect(line("VERSION")).toMatch(/^\d+\.\d+\.\d+/);
		expect(JSON.parse(line("READ")).sha256, out).toBe(
			sha256(disk.subarray(4096, 4096 + 65536)),
		);
		expect(line("FUSE"), out).toBe(sha256(disk));
		expect(line("SERVE-EXIT"), out).toBe("0");
		expect(line("NATIVE"), out).toMatch(/koffi-.*zstd-napi-/);
		expect(line("WGET")).toBe(hello.trim());
		// the exchange is in the capture: the guest's request and the host's answer
		const pcap = await readFile(pcapFile);
		expect(pcap.readUInt32LE(0)).toBe(0xa1b2c3d4);
		expect(pcap.includes(Buffer.from("GET /hello HTTP/1.1"))).toBe(true);
		expect(pcap.includes(Buffer.from(hello))).toBe(true);
		// timings: host clock, in order; memory reported from /proc/meminfo at exit
		const t = r.timings;
		expect(
			0 < t.userspaceMs &&
				t.userspaceMs <= t.readyMs &&
				t.readyMs <= t.exitMs &&
				t.exitMs <= t.qemuExitMs,
		).toBe(true);
		expect(r.memTotalKiB).toBeGreaterThan(300_000);
		expect(r.memAvailableKiB).toBeGreaterThan(0);
		const [n0, n1] = line("NODE-E-0").split(" ").map(Number);
		console.log(
			JSON.stringify({
				timings: t,
				guestUptime: r.guestUptime,
				nodeStartSeconds: Number(((n1 as number) - (n0 as number)).toFixed(2)),
				memTotalKiB: r.memTotalKiB,
				memAvailableKiB: r.memAvailableKiB,
				initramfsBytes: guest.manifest.initramfs.bytes,
			}),
		);
	});

	it("also boots the q35 machine; restricted, the guest reaches only the allowed host port", async () => {
		const r = await bootVm({
			kernel: guest.kernel,
			initramfs: guest.initramfs,
			machine: "q35",
			onlyHostPorts: [port],
			argv: [
				"/bin/sh",
				"-c",
				`wget -q -O - http://10.0.2.2:${port}/hello && exit 9; wget -q -O - http://${RELAY_ADDRESS}:${port}/hello && grep -c . /proc/modules`,
			],
		});
		expect(r.exitCode, r.lines.join("\n")).toBe(0);
		expect(r.lines).toContain(hello.trim());
		expect(r.lines.join("\n")).not.toContain('"event":"module-failed"');
		console.log(
			JSON.stringify({
				machine: "q35",
				timings: r.timings,
				guestUptime: r.guestUptime,
			}),
		);
	});

	it("a guest too small for its initramfs says so", async () => {
		const e = await rejection(
			bootVm({
				kernel: guest.kernel,
				initramfs: guest.initramfs,
				memoryMiB: 256,
				argv: ["/bin/true"],
			}),
		);
		expect(e.code).toBe("VM_FAILED");
		expect(e.message).toContain("did not fit in the guest's memory");
	});

	it("leaves no QEMU behind when the process that started it is SIGKILLed", async () => {
		const script = join(work, "orphan.mjs");
		await writeFile(
			script,
			`import { bootVm } from ${JSON.stringify(join(ROOT, "dist/src/sandbox/qemu.js"))};
bootVm({ kernel: ${JSON.stringify(guest.kernel)}, initramfs: ${JSON.stringify(guest.initramfs)}, argv: ["/bin/sleep", "600"], onLine: (l) => { if (l.includes('"ready"')) console.log("READY"); } });`,
		);
		// Its temporary directory (the fw_cfg files) under the test's: a SIGKILLed process cannot
		// remove its own, so the test's cleanup does.
		const child = spawn(process.execPath, [script], {
			stdio: ["ignore", "pipe", "inherit"],
			env: { ...process.env, TMPDIR: work },
		});
		await new Promise<void>((resolve) =>
			child.stdout.on("data", (d) => String(d).includes("READY") && resolve()),
		);
		const qemuPids = (await readdir("/proc"))
			.filter((p) => /^\d+$/.test(p))
			.filter((p) => {
				try {
					return (
						readFileSync(`/proc/${p}/stat`, "utf8")
							.split(") ")[1]
							?.split(" ")[1] === String(child.pid)
					);
				} catch {
					return false;
				}
			});
		expect(qemuPids.length).toBe(1);
		child.kill("SIGKILL");
		const gone = async () => {
			for (let i = 0; i < 50; i++) {
				if (!existsSync(`/proc/${qemuPids[0]}`)) return true;
				await new Promise((r) => setTimeout(r, 100));
			}
			return false;
		};
		expect(await gone()).toBe(true);
	});

	it("a VM that does not finish in time is killed, saying how far it got", async () => {
		const e = await rejection(
			bootVm({
				kernel: guest.kernel,
				initramfs: guest.initramfs,
				argv: ["/bin/sleep", "600"],
				timeoutMs: 2000,
			}),
		);
		expect(e.code).toBe("VM_FAILED");
		expect(e.message).toMatch(
			/timed out after 2000 ms at stage "(spawned|userspace|ready)"/,
		);
	});
});
