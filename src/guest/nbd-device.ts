/**
 * Attaching a BlockSource to the guest kernel's nbd driver (/dev/nbdN) through its ioctl
 * interface (numbers and geometry in nbd-ioctl.ts), so the kernel mounts the decrypted disk
 * directly — no FUSE file and no loop device in between.
 *
 * The ioctl interface has no handshake: userspace creates a connected socket pair, tells the
 * driver the block size, size, flags and timeout, hands it one end (NBD_SET_SOCK) and calls
 * NBD_DO_IT, which starts the device and blocks until the connection ends. The other end is served
 * by our NBD server in its transmission-only mode (NbdServer.serveTransmission): the kernel sends
 * NBD_REQUEST_MAGIC requests and expects simple replies.
 *
 * Why a worker thread for NBD_DO_IT: it blocks for the device's whole life. koffi's async calls
 * would hold one of libuv's four threadpool threads that long, which the lazy reader's disk cache
 * and every fs call share (the FUSE reader avoids the pool for the same reason, fuse/reader.ts).
 * A worker_thread making one synchronous ioctl holds no pool thread. Its code is a string run as
 * CommonJS so it works the same from the sources, dist/ and the single-file guest build.
 *
 * Detach: NBD_DISCONNECT makes the kernel send NBD_CMD_DISC; our connection answers what is in
 * flight and closes the socket, the kernel's receive thread sees the end, and NBD_DO_IT returns.
 * Should that not happen within 5 s, NBD_CLEAR_SOCK shuts the kernel's socket down and our end is
 * destroyed. Then NBD_CLEAR_SOCK and closing /dev/nbdN free the device. On process exit (a second
 * signal) the same NBD_CLEAR_SOCK runs synchronously, so the blocked thread can end and the process
 * can exit.
 *
 * Why not netlink (genl "nbd"): it needs a generic-netlink client (family lookup, attribute
 * encoding) and gains nothing here — one device, one connection, configured once; the ioctl
 * interface is in every kernel with nbd, and busybox/nbd-client use it.
 */
import {
	closeSync,
	constants,
	existsSync,
	openSync,
	readdirSync,
} from "node:fs";
import { Socket } from "node:net";
import { getSystemErrorMap } from "node:util";
import { Worker } from "node:worker_threads";
import { DadiError } from "../errors.js";
import { type Koffi, koffiRequirePath, loadKoffi } from "../native/addons.js";
import { kernelTransmissionFlags, type NbdServer } from "./nbd/server.js";
import {
	NBD_CLEAR_SOCK,
	NBD_DISCONNECT,
	NBD_DO_IT,
	NBD_SET_BLKSIZE,
	NBD_SET_FLAGS,
	NBD_SET_SIZE_BLOCKS,
	NBD_SET_SOCK,
	NBD_SET_TIMEOUT,
	nbdDevicesIn,
	nbdGeometry,
	noNbdMessage,
} from "./nbd-ioctl.js";

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const EBUSY = 16;

interface Calls {
	koffi: Koffi;
	ioctl: (fd: number, request: number, type: string, arg: number) => number;
	socketpair: (
		domain: number,
		type: number,
		protocol: number,
		sv: Int32Array,
	) => number;
	close: (fd: number) => number;
}

let calls: Calls | undefined;

function load(): Calls {
	if (calls) return calls;
	const koffi = loadKoffi();
	const libc = koffi.load("libc.so.6");
	calls = {
		koffi,
		ioctl: libc.func("int ioctl(int fd, unsigned long request, ...)"),
		socketpair: libc.func(
			"int socketpair(int domain, int type, int protocol, _Out_ int *sv)",
		),
		close: libc.func("int close(int fd)"),
	};
	return calls;
}

function errnoName(errno: number): string {
	return getSystemErrorMap().get(-errno)?.[0] ?? `errno ${errno}`;
}

class IoctlError extends DadiError {
	constructor(
		readonly errno: number,
		message: string,
	) {
		super("IO", message);
	}
}

function ioctl(
	c: Calls,
	fd: number,
	name: string,
	req: number,
	arg: number,
	device: string,
): void {
	if (c.ioctl(fd, req, "unsigned long", arg) >= 0) return;
	const errno = c.koffi.errno();
	throw new IoctlError(
		errno,
		`${name} on ${device} failed (${errnoName(errno)})${errno === 25 ? ": not an nbd device" : errno === EBUSY ? ": the device is in use or being set up by another process" : ""}`,
	);
}

/**
 * A connected unix stream socket pair, close-on-exec (the container's process must not inherit
 * the decrypted disk's transport). Returns [kernel end, our end].
 */
export function unixSocketPair(): [number, number] {
	const c = load();
	const sv = new Int32Array(2);
	if (c.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) !== 0)
		throw new DadiError(
			"IO",
			`socketpair failed (${errnoName(c.koffi.errno())})`,
		);
	return [sv[0] as number, sv[1] as number];
}

/** A node socket over a connected stream socket's fd (node owns the fd from here on). */
export function socketOnFd(fd: number): Socket {
	return new Socket({
		fd,
		readable: true,
		writable: true,
		allowHalfOpen: true,
	});
}

export interface NbdAttachment {
	/** /dev/nbdN */
	device: string;
	/** Disconnects and frees the device (after everything on it is unmounted); idempotent. */
	detach(): Promise<void>;
}

export interface AttachOptions {
	server: NbdServer;
	size: number;
	/** A device number, or undefined for the first free one. */
	device?: number;
	/** NBD_SET_TIMEOUT seconds; 0: the kernel never gives up on a request (default). */
	timeoutSec?: number;
	log: (line: string) => void;
	/** Test seam: where the block devices are listed (default /sys/block). */
	sysBlock?: string;
}

/**
 * Fails (PRECONDITION_FAILED, with the advice) when the kernel has no nbd devices at all, or not the
 * one named: checked before attesting, so a sandbox without the driver never asks for the key.
 */
export function checkNbdPresent(
	device: number | undefined,
	sysBlock = "/sys/block",
): void {
	let entries: string[] = [];
	try {
		entries = readdirSync(sysBlock);
	} catch {
		// no sysfs: as no devices
	}
	const all = nbdDevicesIn(entries);
	const want = device ?? 0;
	if (device === undefined ? all.length === 0 : !all.includes(want))
		throw new DadiError("PRECONDITION_FAILED", noNbdMessage(`/dev/nbd${want}`));
}

/** Attaches the server's export to an nbd device; resolves once the kernel has started it. */
export async function attachNbd(o: AttachOptions): Promise<NbdAttachment> {
	const sysBlock = o.sysBlock ?? "/sys/block";
	const geometry = nbdGeometry(o.size);
	let candidates: number[];
	if (o.device !== undefined) candidates = [o.device];
	else {
		let entries: string[] = [];
		try {
			entries = readdirSync(sysBlock);
		} catch {
			// no sysfs: treated as no devices
		}
		const all = nbdDevicesIn(entries);
		if (all.length === 0)
			throw new DadiError("PRECONDITION_FAILED", noNbdMessage("/dev/nbd0"));
		candidates = all.filter((n) => !existsSync(`${sysBlock}/nbd${n}/pid`));
		if (candidates.length === 0)
			throw new DadiError(
				"PRECONDITION_FAILED",
				`all ${all.length} nbd devices are in use; load the driver with more (modprobe nbd nbds_max=…) or use --block loop`,
			);
	}
	let lastBusy: Error | undefined;
	for (const n of candidates) {
		try {
			return await attachTo(n, geometry, o, sysBlock);
		} catch (e) {
			// another process took this device between the look and NBD_SET_SOCK: try the next
			if (
				o.device === undefined &&
				e instanceof IoctlError &&
				e.errno === EBUSY
			) {
				lastBusy = e;
				continue;
			}
			throw e;
		}
	}
	throw new DadiError(
		"PRECONDITION_FAILED",
		`every free nbd device was taken by another process meanwhile (${lastBusy?.message})`,
	);
}

async function attachTo(
	n: number,
	g: { blockSize: number; blocks: number },
	o: AttachOptions,
	sysBlock: string,
): Promise<NbdAttachment> {
	const device = `/dev/nbd${n}`;
	const c = load();
	let fd: number;
	try {
		// libuv opens every file close-on-exec
		fd = openSync(device, constants.O_RDWR);
	} catch (e) {
		const code = (e as NodeJS.ErrnoException).code;
		if (code === "ENOENT" || code === "ENXIO" || code === "ENODEV")
			throw new DadiError(
				"PRECONDITION_FAILED",
				existsSync(`${sysBlock}/nbd${n}`)
					? `no device node ${device} although the kernel has nbd${n}: mount devtmpfs on /dev`
					: noNbdMessage(device),
			);
		throw new DadiError("IO", `${device}: cannot open (${code ?? e})`);
	}
	const steps: (() => void)[] = [() => closeSync(fd)];
	const undo = () => {
		for (const s of steps.reverse())
			try {
				s();
			} catch {
				// best effort while failing
			}
	};
	let socket: Socket | undefined;
	try {
		// NBD_SET_SOCK first: it claims the device for this thread (another process setting it up
		// gets EBUSY), so a device someone else is configuring is left untouched.
		const [kernelEnd, ourEnd] = unixSocketPair();
		try {
			ioctl(c, fd, "NBD_SET_SOCK", NBD_SET_SOCK, kernelEnd, device);
		} catch (e) {
			c.close(ourEnd);
			throw e;
		} finally {
			// the driver holds its own reference to the socket from NBD_SET_SOCK on
			c.close(kernelEnd);
		}
		steps.push(() => ioctl(c, fd, "NBD_CLEAR_SOCK", NBD_CLEAR_SOCK, 0, device));
		socket = socketOnFd(ourEnd);
		const s = socket;
		steps.push(() => s.destroy());
		// Size and flags are stored and applied when NBD_DO_IT starts the device.
		ioctl(c, fd, "NBD_SET_BLKSIZE", NBD_SET_BLKSIZE, g.blockSize, device);
		ioctl(c, fd, "NBD_SET_SIZE_BLOCKS", NBD_SET_SIZE_BLOCKS, g.blocks, device);
		ioctl(
			c,
			fd,
			"NBD_SET_FLAGS",
			NBD_SET_FLAGS,
			kernelTransmissionFlags(),
			device,
		);
		ioctl(c, fd, "NBD_SET_TIMEOUT", NBD_SET_TIMEOUT, o.timeoutSec ?? 0, device);
		const conn = o.server.serveTransmission(socket, `kernel ${device}`);
		const doIt = startDoIt(fd, n);
		// on exit (a second signal) the blocked thread must be released, or the process cannot end
		const onExit = () => {
			try {
				c.ioctl(fd, NBD_CLEAR_SOCK, "unsigned long", 0);
			} catch {
				// exiting anyway
			}
		};
		process.once("exit", onExit);
		steps.push(() => {
			onExit();
			process.off("exit", onExit);
		});
		await waitStarted(sysBlock, n, doIt.ended, device);
		let detaching: Promise<void> | undefined;
		void doIt.ended.then((r) => {
			if (!detaching)
				o.log(
					`${device}: the kernel ended the device unexpectedly (${r.ret < 0 ? errnoName(r.errno) : "connection closed"})`,
				);
		});
		o.log(
			`${device}: attached (${g.blocks} blocks of ${g.blockSize} bytes, read-only)`,
		);
		return {
			device,
			detach: () => {
				detaching ??= detach(
					c,
					fd,
					device,
					s,
					conn.closed,
					doIt,
					onExit,
					o.log,
				);
				return detaching;
			},
		};
	} catch (e) {
		undo();
		throw e;
	}
}

interface DoIt {
	ended: Promise<{ ret: number; errno: number }>;
}

/**
 * NBD_DO_IT waits interruptibly: a signal delivered to its thread (a SIGCHLD when any child of this
 * process exits — the container's starter, losetup — may land on any thread that does not block
 * it) would end the wait, and the driver would then shut the device down under the container. So
 * the thread blocks every signal first (SIG_BLOCK with a full 1024-bit sigset_t).
 */
const DO_IT_SOURCE = `"use strict";
const { workerData, parentPort } = require("node:worker_threads");
const koffi = require(workerData.koffiPath);
const libc = koffi.load("libc.so.6");
const sigmask = libc.func("int pthread_sigmask(int how, const void *set, void *oldset)");
sigmask(0, Buffer.alloc(128, 0xff), null);
const ioctl = libc.func("int ioctl(int fd, unsigned long request, ...)");
const ret = ioctl(workerData.fd, workerData.request, "unsigned long", 0);
parentPort.postMessage({ ret, errno: ret < 0 ? koffi.errno() : 0 });
`;

function startDoIt(fd: number, n: number): DoIt {
	const worker = new Worker(DO_IT_SOURCE, {
		eval: true,
		execArgv: [],
		name: `nbd${n} NBD_DO_IT`,
		workerData: { fd, request: NBD_DO_IT, koffiPath: koffiRequirePath() },
		stdout: false,
		stderr: false,
	});
	let result: { ret: number; errno: number } | undefined;
	const ended = new Promise<{ ret: number; errno: number }>((resolve) => {
		worker.on("message", (m: { ret: number; errno: number }) => {
			result = m;
		});
		worker.on("error", () => {
			result ??= { ret: -1, errno: 0 };
		});
		worker.on("exit", () => resolve(result ?? { ret: -1, errno: 0 }));
	});
	worker.unref();
	return { ended };
}

/** The driver creates /sys/block/nbdN/pid when NBD_DO_IT has started the device. */
async function waitStarted(
	sysBlock: string,
	n: number,
	ended: DoIt["ended"],
	device: string,
): Promise<void> {
	let early: { ret: number; errno: number } | undefined;
	void ended.then((r) => {
		early = r;
	});
	const deadline = Date.now() + 10_000;
	for (;;) {
		if (early)
			throw new DadiError(
				"IO",
				`NBD_DO_IT on ${device} failed (${early.ret < 0 ? errnoName(early.errno) : "returned at once"})`,
			);
		if (existsSync(`${sysBlock}/nbd${n}/pid`)) return;
		if (Date.now() > deadline)
			throw new DadiError(
				"IO",
				`${device}: the kernel did not start the device within 10 s`,
			);
		await new Promise((r) => setTimeout(r, 10));
	}
}

async function detach(
	c: Calls,
	fd: number,
	device: string,
	socket: Socket,
	connClosed: Promise<void>,
	doIt: DoIt,
	onExit: () => void,
	log: (line: string) => void,
): Promise<void> {
	const within = (p: Promise<unknown>, ms: number) =>
		new Promise<boolean>((resolve) => {
			const t = setTimeout(() => resolve(false), ms);
			void p.then(() => {
				clearTimeout(t);
				resolve(true);
			});
		});
	try {
		ioctl(c, fd, "NBD_DISCONNECT", NBD_DISCONNECT, 0, device);
	} catch (e) {
		log(`${(e as Error).message}; clearing the socket instead`);
	}
	if (!(await within(doIt.ended, 5000))) {
		log(`${device}: no disconnect within 5 s; clearing the socket`);
		onExit(); // NBD_CLEAR_SOCK: shuts the kernel's end down
		socket.destroy();
		if (!(await within(doIt.ended, 5000)))
			log(`${device}: NBD_DO_IT still has not returned; leaving the device`);
	}
	try {
		ioctl(c, fd, "NBD_CLEAR_SOCK", NBD_CLEAR_SOCK, 0, device);
	} catch {
		// already cleared
	}
	process.off("exit", onExit);
	closeSync(fd);
	socket.destroy();
	await within(connClosed, 2000);
	log(`${device}: detached`);
}
