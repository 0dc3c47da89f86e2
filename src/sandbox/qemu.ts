/**
 * Boots the sandbox guest (src/sandbox/initramfs.ts) under QEMU and runs one job in it.
 *
 * The job goes in through fw_cfg files the guest's /init reads (src/sandbox/init-script.ts); its
 * output and /init's `DADI-INIT {json}` reports come back on the serial console (QEMU's stdout).
 * Networking is QEMU user mode (slirp): the guest is 10.0.2.15 and reaches the host's loopback
 * as 10.0.2.2; a filter-dump object can capture every guest packet to a pcap file.
 *
 * No QEMU outlives its call: a timeout or error kills it, and so does this process's exit.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DadiError } from "../errors.js";
import { type CpioEntry, cpioArchive, withParents } from "./cpio.js";
import {
	FW_CFG_ARGV,
	FW_CFG_ENV,
	FW_CFG_FILES,
	INIT_MARK,
} from "./init-script.js";

export interface BootOptions {
	kernel: string;
	initramfs: string;
	/** The job: argv[0] is an absolute path in the guest. Empty: boot, report, power off. */
	argv: readonly string[];
	env?: Readonly<Record<string, string>>;
	/** Extra files for the guest, extracted at / before the job runs. */
	files?: readonly CpioEntry[];
	/** Guest RAM (default 512). The initramfs (~111 MiB) lives in it, unpacked. */
	memoryMiB?: number;
	cpus?: number;
	/** Capture all guest network traffic here (pcap). */
	pcapFile?: string;
	/** Kill QEMU after this long (default 180 s). */
	timeoutMs?: number;
	/** Each console line as it arrives. */
	onLine?: (line: string) => void;
	/** Default "qemu-system-x86_64". */
	qemu?: string;
	/**
	 * Isolate the guest (slirp `restrict=on`: nothing on the host or beyond is reachable, not even
	 * 10.0.2.2) except these host loopback ports, which the guest reaches at
	 * 10.0.2.100:PORT (RELAY_ADDRESS), each connection relayed by `busybox nc 127.0.0.1 PORT`
	 * (slirp's guestfwd; it refuses the gateway address 10.0.2.2 for such rules).
	 */
	onlyHostPorts?: readonly number[];
	/**
	 * "pc" (default): SeaBIOS, virtio-pci, HPET and ACPI PM timer. "microvm" (no PCI, qboot,
	 * virtio-mmio) reaches userspace a little sooner but under TCG its kernel sometimes cannot
	 * calibrate the TSC (no HPET or PM timer to measure it against) and hangs: 2 boots in 8 here.
	 * "q35" boots like pc. (docs/sandbox.md)
	 */
	machine?: VmMachine;
}

export type VmMachine = "microvm" | "pc" | "q35";

/** Where a restricted guest reaches the host's allowed loopback ports (`onlyHostPorts`). */
export const RELAY_ADDRESS = "10.0.2.100";

export type VmStage = "spawned" | "userspace" | "ready" | "exited";

export interface VmResult {
	/** The job's exit status, from /init's exit report. */
	exitCode: number;
	/** Console lines (serial), "\r" removed. */
	lines: string[];
	/** Host clock, milliseconds after QEMU was spawned. */
	timings: {
		userspaceMs: number;
		readyMs: number;
		exitMs: number;
		qemuExitMs: number;
	};
	/** Guest clock (/proc/uptime seconds) at each report. */
	guestUptime: { userspace: number; ready: number; exit: number };
	memTotalKiB: number;
	memAvailableKiB: number;
}

export interface InitReport {
	event: string;
	uptime?: number;
	code?: number;
	memTotalKiB?: number;
	memAvailableKiB?: number;
	module?: string;
	stage?: string;
}

/** The `DADI-INIT {json}` report in a console line, if it holds one. Pure. */
export function parseInitReport(line: string): InitReport | undefined {
	const at = line.indexOf(INIT_MARK);
	if (at < 0) return undefined;
	try {
		const v = JSON.parse(line.slice(at + INIT_MARK.length)) as unknown;
		if (
			typeof v === "object" &&
			v !== null &&
			typeof (v as InitReport).event === "string"
		)
			return v as InitReport;
	} catch {}
	return undefined;
}

/** QEMU's command line. Pure. */
export function qemuArgs(o: {
	kernel: string;
	initramfs: string;
	memoryMiB: number;
	cpus: number;
	fwCfg: Record<string, string>;
	pcapFile?: string;
	machine?: VmMachine;
	onlyHostPorts?: readonly number[];
}): string[] {
	let netdev = "user,id=n0,ipv6=off";
	if (o.onlyHostPorts) {
		netdev += ",restrict=on";
		for (const p of o.onlyHostPorts) {
			if (!Number.isInteger(p) || p < 1 || p > 65535)
				throw new DadiError("USAGE", `host port ${p} is not a TCP port`);
			netdev += `,guestfwd=tcp:${RELAY_ADDRESS}:${p}-cmd:busybox nc 127.0.0.1 ${p}`;
		}
	}
	const machine = o.machine ?? "pc";
	const micro = machine === "microvm";
	const args = [
		"-accel",
		"tcg",
		"-machine",
		// microvm: ACPI describes the virtio-mmio transports and fw_cfg; the RTC gives the guest the
		// host's time (TLS certificate checks need it)
		micro ? "microvm,acpi=on,rtc=on" : machine,
		"-nodefaults",
		"-no-user-config",
		"-display",
		"none",
		"-serial",
		"stdio",
		"-no-reboot",
		"-m",
		String(o.memoryMiB),
		"-smp",
		String(o.cpus),
		"-kernel",
		o.kernel,
		"-initrd",
		o.initramfs,
		"-append",
		`console=ttyS0 panic=-1 quiet loglevel=3 reboot=t${micro ? " pci=off" : ""}`,
		// user networking: the guest reaches the host's loopback as 10.0.2.2 (and, through slirp, whatever
		// the host can reach) unless onlyHostPorts restricts it (docs/sandbox.md)
		"-netdev",
		netdev,
		"-device",
		micro ? "virtio-net-device,netdev=n0" : "virtio-net-pci,netdev=n0,romfile=",
	];
	if (o.pcapFile)
		args.push("-object", `filter-dump,id=d0,netdev=n0,file=${o.pcapFile}`);
	for (const [name, file] of Object.entries(o.fwCfg))
		args.push("-fw_cfg", `name=${name},file=${file}`);
	return args;
}

/** `name` if it is a path, else its first executable match on PATH. */
function findProgram(name: string): string | undefined {
	const candidates = name.includes("/")
		? [name]
		: (process.env.PATH ?? "/usr/bin:/bin")
				.split(":")
				.map((d) => join(d || ".", name));
	for (const c of candidates)
		try {
			accessSync(c, constants.X_OK);
			return c;
		} catch {}
	return undefined;
}

const live = new Set<ChildProcess>();
let exitHook = false;
function track(child: ChildProcess): void {
	live.add(child);
	child.once("exit", () => live.delete(child));
	if (!exitHook) {
		exitHook = true;
		process.once("exit", () => {
			for (const c of live) c.kill("SIGKILL");
		});
	}
}

function checkJob(o: BootOptions): void {
	for (const a of o.argv)
		if (a.includes("\n") || a.includes("\0"))
			throw new DadiError(
				"USAGE",
				`a guest argument has a newline or NUL: ${JSON.stringify(a)}`,
			);
	if (o.argv.length > 0 && !o.argv[0]?.startsWith("/"))
		throw new DadiError(
			"USAGE",
			`the guest command must be an absolute path, not ${JSON.stringify(o.argv[0])}`,
		);
	for (const [k, v] of Object.entries(o.env ?? {}))
		if (
			!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) ||
			v.includes("\n") ||
			v.includes("\0")
		)
			throw new DadiError(
				"USAGE",
				`bad guest environment variable ${JSON.stringify(k)}`,
			);
}

/** Boots the guest, runs the job, and resolves when it has reported its exit and QEMU has ended. */
export async function bootVm(o: BootOptions): Promise<VmResult> {
	checkJob(o);
	const dir = await mkdtemp(join(tmpdir(), "dadi-vm-"));
	try {
		const fwCfg: Record<string, string> = {};
		const put = async (name: string, bytes: Uint8Array | Buffer[]) => {
			const file = join(dir, name.replaceAll("/", "_"));
			await writeFile(
				file,
				Array.isArray(bytes) ? Buffer.concat(bytes) : bytes,
			);
			fwCfg[name] = file;
		};
		await put(FW_CFG_ARGV, Buffer.from(o.argv.map((a) => `${a}\n`).join("")));
		if (o.env && Object.keys(o.env).length > 0)
			await put(
				FW_CFG_ENV,
				Buffer.from(
					Object.entries(o.env)
						.map(([k, v]) => `${k}=${v}\n`)
						.join(""),
				),
			);
		if (o.files && o.files.length > 0)
			await put(FW_CFG_FILES, cpioArchive(withParents(o.files)).parts);
		return await run(o, fwCfg);
	} finally {
		await rm(dir, { recursive: true, force: true });
	}
}

function run(o: BootOptions, fwCfg: Record<string, string>): Promise<VmResult> {
	const args = qemuArgs({
		kernel: o.kernel,
		initramfs: o.initramfs,
		memoryMiB: o.memoryMiB ?? 512,
		cpus: o.cpus ?? 1,
		fwCfg,
		pcapFile: o.pcapFile,
		machine: o.machine,
		onlyHostPorts: o.onlyHostPorts,
	});
	const timeoutMs = o.timeoutMs ?? 180_000;
	return new Promise((resolve, reject) => {
		const started = performance.now();
		const since = () => Math.round(performance.now() - started);
		const qemu = findProgram(o.qemu ?? "qemu-system-x86_64");
		if (!qemu)
			return reject(
				new DadiError(
					"INPUT_NOT_FOUND",
					`cannot start ${o.qemu ?? "qemu-system-x86_64"}: not found (Debian: apt-get install qemu-system-x86)`,
				),
			);
		// setpriv --pdeathsig: the kernel kills QEMU if this process dies without its exit handler
		// running (SIGKILL, a fatal signal)
		const setpriv = findProgram("setpriv");
		const child = setpriv
			? spawn(setpriv, ["--pdeathsig", "KILL", "--", qemu, ...args], {
					stdio: ["ignore", "pipe", "pipe"],
				})
			: spawn(qemu, args, { stdio: ["ignore", "pipe", "pipe"] });
		track(child);
		const lines: string[] = [];
		let stderr = "";
		let partial = "";
		let stage: VmStage = "spawned";
		const host = { userspaceMs: -1, readyMs: -1, exitMs: -1 };
		const guest = { userspace: -1, ready: -1, exit: -1 };
		let exit: InitReport | undefined;
		let error: InitReport | undefined;
		const onLine = (raw: string) => {
			const line = raw.replaceAll("\r", "");
			lines.push(line);
			o.onLine?.(line);
			const r = parseInitReport(line);
			if (!r) return;
			if (
				r.event === "userspace" ||
				r.event === "ready" ||
				r.event === "exit"
			) {
				stage = r.event === "exit" ? "exited" : r.event;
				host[`${r.event}Ms`] = since();
				guest[r.event] = r.uptime ?? -1;
				if (r.event === "exit") exit = r;
			} else if (r.event === "error") error = r;
		};
		child.stdout.setEncoding("utf8");
		child.stdout.on("data", (s: string) => {
			const parts = (partial + s).split("\n");
			partial = parts.pop() ?? "";
			for (const p of parts) onLine(p);
		});
		child.stderr.setEncoding("utf8");
		child.stderr.on("data", (s: string) => {
			if (stderr.length < 65536) stderr += s;
		});
		const tail = () =>
			[
				...lines.slice(-15),
				...(stderr ? [`qemu stderr: ${stderr.trim()}`] : []),
			].join("\n");
		let timedOut = false;
		const timer = setTimeout(() => {
			timedOut = true;
			child.kill("SIGKILL");
		}, timeoutMs);
		child.once("error", (e) => {
			clearTimeout(timer);
			reject(
				new DadiError(
					(e as NodeJS.ErrnoException).code === "ENOENT"
						? "INPUT_NOT_FOUND"
						: "VM_FAILED",
					`cannot start ${o.qemu ?? "qemu-system-x86_64"}: ${e.message}`,
					{ cause: e },
				),
			);
		});
		child.once("close", (code, signal) => {
			clearTimeout(timer);
			if (partial) onLine(partial);
			if (timedOut)
				return reject(
					new DadiError(
						"VM_FAILED",
						`the sandbox VM timed out after ${timeoutMs} ms at stage "${stage}"; last console lines:\n${tail()}`,
					),
				);
			if (!exit || typeof exit.code !== "number")
				return reject(
					new DadiError(
						"VM_FAILED",
						`the sandbox VM ended (qemu ${signal ?? `exit ${code}`}) at stage "${stage}"${error ? ` after an /init error in ${error.stage}${error.stage === "initramfs" ? " (the initramfs did not fit in the guest's memory: raise memoryMiB)" : ""}` : ""} without reporting the job's exit; last console lines:\n${tail()}`,
					),
				);
			resolve({
				exitCode: exit.code,
				lines,
				timings: { ...host, qemuExitMs: since() },
				guestUptime: guest,
				memTotalKiB: exit.memTotalKiB ?? -1,
				memAvailableKiB: exit.memAvailableKiB ?? -1,
			});
		});
	});
}
