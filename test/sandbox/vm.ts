/**
 * One guest job in a fresh VM, as the sandbox proof runs it: the job is a busybox shell script
 * (through fw_cfg, src/sandbox/init-script.ts) that runs `dadi-guest run` (or, for the control
 * run, fetches blobs with wget), samples the guest's free memory meanwhile, and afterwards prints
 * what is still mounted or attached. The console transcript and the capture of the VM's traffic
 * are written under the run's host directory, where the scan reads them.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { buildGuestBundle } from "../../src/build/guest-bundle.js";
import { buildGuest } from "../../src/sandbox/initramfs.js";
import { bootVm } from "../../src/sandbox/qemu.js";
import { ROOT } from "../helpers.js";

export interface Guest {
	kernel: string;
	initramfs: string;
	initramfsBytes: number;
	initramfsSha256: string;
}

/** `dadi-guest run --json`'s report (docs/cli.md): the parts the proof reads. */
export interface RunReport {
	ok: boolean;
	timingsMs: Record<string, number>;
	peakRssBytes?: number;
	fetched?: { bytes: number; requests: number; chunks: number };
	blockDevice?: string;
	fsType?: string;
	[k: string]: unknown;
}

export interface GuestRun {
	exitCode: number | null;
	console: string[];
	/** Host clock, ms from QEMU's start: userspace, ready (modules + network), job exit, QEMU exit. */
	timings: { userspace: number; ready: number; exit: number; total: number };
	/** `dadi-guest run`'s report line (DADI-RUN), if it printed one. */
	report?: RunReport;
	/** After the job: what is still mounted (nbd, overlay, fuse, loop) and attached (nbd). */
	check?: {
		mounted: number;
		nbdAttached: number;
		memTotalKiB: number;
		minAvailableKiB: number;
	};
	/** MemTotal − the lowest MemAvailable seen while the job ran. */
	guestMemoryMiB: number | null;
}

/** The single-file dadi-guest, built from this tree, in the guest image (cached by content). */
export async function prepareGuest(log: (l: string) => void): Promise<Guest> {
	const bundle = await buildGuestBundle(
		ROOT,
		join(ROOT, "dist/guest/dadi-guest.mjs"),
	);
	const g = await buildGuest({
		bundle: bundle.outfile,
		onProgress: (m) => log(`  guest image: ${m}`),
	});
	return {
		kernel: g.kernel,
		initramfs: g.initramfs,
		initramfsBytes: g.manifest.initramfs.bytes,
		initramfsSha256: g.manifest.initramfs.sha256,
	};
}

export interface JobOptions {
	name: string;
	/** `dadi-guest run` with these arguments (the image, the broker as the guest reaches them…). */
	run?: string[];
	/** The control job instead: URLs to fetch with wget. */
	fetch?: string[];
	hostDir: string;
	memoryMiB: number;
	log: (l: string) => void;
	timeoutMs?: number;
}

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The job's shell script (busybox sh in the guest): one line, as fw_cfg carries one argument per line. */
export function jobScript(o: JobOptions): string {
	const sampler = [
		"( m=999999999; while :; do a=$(awk '/MemAvailable/{print $2}' /proc/meminfo);",
		'[ "$a" -lt "$m" ] && m=$a && echo $m > /run/min-available; sleep 0.2; done ) &',
		"sampler=$!",
	].join(" ");
	const main = o.fetch
		? o.fetch.map((u) => `wget -q -O /dev/null ${q(u)}`).join(" && ")
		: [
				"/usr/bin/node /opt/dadi/dadi-guest.mjs run",
				...(o.run ?? []).map(q),
			].join(" ");
	return [
		sampler,
		`( ${main} ); rc=$?`,
		"kill $sampler 2>/dev/null",
		"mounted=$(grep -c -E 'nbd|overlay|fuse|/dev/loop' /proc/mounts)",
		"attached=$(ls /sys/block/nbd*/pid 2>/dev/null | wc -l)",
		"total=$(awk '/MemTotal/{print $2}' /proc/meminfo)",
		"minavail=$(cat /run/min-available 2>/dev/null || echo 0)",
		'echo "DADI-CHECK {\\"mounted\\":$mounted,\\"nbdAttached\\":$attached,\\"memTotalKiB\\":$total,\\"minAvailableKiB\\":$minavail}"',
		"exit $rc",
	].join("; ");
}

function lastJson(
	lines: string[],
	prefix: string,
): Record<string, unknown> | undefined {
	for (let i = lines.length - 1; i >= 0; i--) {
		const l = lines[i] as string;
		const at = l.indexOf(prefix);
		if (at < 0) continue;
		try {
			return JSON.parse(l.slice(at + prefix.length));
		} catch {
			// a line cut by the console: keep looking
		}
	}
	return undefined;
}

export async function runGuest(guest: Guest, o: JobOptions): Promise<GuestRun> {
	const logs = join(o.hostDir, "logs");
	const capture = join(o.hostDir, "capture");
	await mkdir(logs, { recursive: true });
	await mkdir(capture, { recursive: true });
	const r = await bootVm({
		kernel: guest.kernel,
		initramfs: guest.initramfs,
		argv: ["/bin/busybox", "sh", "-c", jobScript(o)],
		memoryMiB: o.memoryMiB,
		pcapFile: join(capture, `${o.name}.pcap`),
		timeoutMs: o.timeoutMs ?? 240_000,
		onLine: (l: string) => o.log(`  [${o.name}] ${l}`),
	});
	await writeFile(
		join(logs, `console-${o.name}.log`),
		`${r.lines.join("\n")}\n`,
	);
	const check = lastJson(r.lines, "DADI-CHECK ") as GuestRun["check"];
	const report = lastJson(r.lines, "DADI-RUN ") as RunReport | undefined;
	return {
		exitCode: r.exitCode,
		console: r.lines,
		timings: {
			userspace: r.timings.userspaceMs,
			ready: r.timings.readyMs,
			exit: r.timings.exitMs,
			total: r.timings.qemuExitMs,
		},
		report,
		check,
		guestMemoryMiB:
			check && check.minAvailableKiB > 0
				? Math.round((check.memTotalKiB - check.minAvailableKiB) / 1024)
				: null,
	};
}
