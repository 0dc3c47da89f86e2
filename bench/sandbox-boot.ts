/**
 * The sandbox micro-VM's figures (docs/sandbox.md): boot time to userspace and to ready on each
 * machine type, node's start-up time inside the guest, and guest memory at several -m sizes.
 * Builds (or takes from the cache) the guest first; needs dist/guest/dadi-guest.mjs.
 *
 *   node dist/bench/sandbox-boot.js [--reps N] [--json]
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildGuest } from "../src/sandbox/initramfs.js";
import { bootVm, type VmMachine } from "../src/sandbox/qemu.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const args = process.argv.slice(2);
const r = args.indexOf("--reps");
const reps = r >= 0 ? Number(args[r + 1]) : 5;

const median = (xs: number[]) => {
	const s = [...xs].sort((a, b) => a - b);
	return s[Math.floor(s.length / 2)] as number;
};

const out: Record<string, unknown> = {};
const say = (k: string, v: unknown) => {
	out[k] = v;
	if (!args.includes("--json")) console.log(`${k}: ${JSON.stringify(v)}`);
};

let t0 = performance.now();
const guest = await buildGuest({
	bundle: join(ROOT, "dist/guest/dadi-guest.mjs"),
});
say("build", {
	cached: guest.cached,
	seconds: Number(((performance.now() - t0) / 1000).toFixed(2)),
	initramfsMiB: Number((guest.manifest.initramfs.bytes / 2 ** 20).toFixed(1)),
	boot: guest.manifest.kernel.boot,
});
const base = { kernel: guest.kernel, initramfs: guest.initramfs };

for (const machine of ["pc", "q35", "microvm"] as VmMachine[]) {
	const runs = [];
	let hung = 0;
	for (let i = 0; i < reps; i++)
		try {
			runs.push(
				await bootVm({ ...base, machine, argv: [], timeoutMs: 30_000 }),
			);
		} catch {
			hung++;
		}
	if (runs.length === 0) {
		say(`boot ${machine}`, { hung });
		continue;
	}
	say(`boot ${machine} (median of ${reps}, ms from spawn; guest uptime s)`, {
		userspaceMs: median(runs.map((x) => x.timings.userspaceMs)),
		readyMs: median(runs.map((x) => x.timings.readyMs)),
		qemuExitMs: median(runs.map((x) => x.timings.qemuExitMs)),
		guestUserspace: median(runs.map((x) => x.guestUptime.userspace)),
		guestReady: median(runs.map((x) => x.guestUptime.ready)),
		hung,
	});
}

const nodeJob = `for i in 1 2 3 4 5; do read -r a _ < /proc/uptime; node -e 0; read -r b _ < /proc/uptime; echo "NODE $a $b"; done; read -r a _ < /proc/uptime; node /opt/dadi/dadi-guest.mjs --version > /dev/null; read -r b _ < /proc/uptime; echo "GUEST $a $b"`;
for (const cpus of [1, 2]) {
	const x = await bootVm({ ...base, cpus, argv: ["/bin/sh", "-c", nodeJob] });
	const spans = (tag: string) =>
		x.lines
			.filter((l) => l.startsWith(`${tag} `))
			.map((l) => {
				const [a, b] = l.split(" ").slice(1).map(Number);
				return (b as number) - (a as number);
			});
	say(`node start in the guest, -smp ${cpus} (s)`, {
		nodeE0First: spans("NODE")[0],
		nodeE0MedianOfNext4: Number(median(spans("NODE").slice(1)).toFixed(2)),
		dadiGuestVersion: spans("GUEST")[0],
	});
}

for (const memoryMiB of [384, 448, 512, 1024]) {
	t0 = performance.now();
	try {
		const x = await bootVm({
			...base,
			memoryMiB,
			timeoutMs: 60_000,
			argv: ["/usr/bin/node", "/opt/dadi/dadi-guest.mjs", "--version"],
		});
		say(`-m ${memoryMiB}`, {
			exitCode: x.exitCode,
			memTotalKiB: x.memTotalKiB,
			memAvailableKiB: x.memAvailableKiB,
			usedMiB: Math.round((x.memTotalKiB - x.memAvailableKiB) / 1024),
		});
	} catch (e) {
		say(`-m ${memoryMiB}`, { failed: (e as Error).message.split("\n")[0] });
	}
}
if (args.includes("--json")) console.log(JSON.stringify(out, null, 2));
