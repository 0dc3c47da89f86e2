/**
 * The thread that reads /dev/fuse.
 *
 * Why a worker_thread: a read of /dev/fuse blocks until the kernel has a request. Done with
 * node:fs's asynchronous read it would pin one libuv threadpool thread per outstanding read for as
 * long as the file system is idle — the pool has 4 threads by default and every fs call, DNS
 * lookup and zlib job of the process (the chunk cache's file reads included) shares it; a few
 * blocked FUSE reads would starve them, and a disk cache that blocks on the pool while the FUSE
 * reader waits for the disk cache is a deadlock. Raising UV_THREADPOOL_SIZE only helps if it happens
 * before the pool first starts, which a library cannot promise. So one worker reads the device with
 * synchronous reads (no pool thread involved) and posts each request, as a transferred ArrayBuffer,
 * to the main thread; the main thread handles it and writes the reply with a synchronous writev
 * (writes to /dev/fuse never wait for anything but a memory copy). Requests are handled
 * concurrently on the main thread (every READ is a promise), so one reader thread does not limit
 * how many requests are in flight.
 *
 * Stopping: the device is opened O_NONBLOCK; when no request is queued the worker waits in poll(2)
 * on the device and an eventfd. `stop()` sets a shared flag and signals the eventfd, so the worker
 * leaves within one iteration even if the file system is still mounted (lazily detached and busy),
 * where a blocking read would never return. After an unmount the device reads ENODEV and the
 * worker ends by itself.
 *
 * The worker's code is a string evaluated as CommonJS (`eval: true`) so that it runs the same from
 * the TypeScript sources (tests), the compiled dist/ tree and the single-file guest build (no
 * second file to find); it loads koffi by absolute path — the package's entry point, or in the
 * single-file build the extracted binary (src/native/addons.ts) — only for poll(2).
 */
import { writeSync } from "node:fs";
import { Worker } from "node:worker_threads";
import { koffiRequirePath } from "../../native/addons.js";

/** What the worker says when it stops. */
export interface ReaderEnd {
	reason: "stopped" | "unmounted" | "error";
	code?: string;
	message?: string;
}

const WORKER_SOURCE = `"use strict";
const { workerData, parentPort } = require("node:worker_threads");
const { fd, wakeFd, bufferSize, koffiPath, stopBuffer, maxBatch } = workerData;
const stop = new Int32Array(stopBuffer);
const koffi = require(koffiPath);
const libc = koffi.load("libc.so.6");
// koffi's read returns -1 and leaves errno instead of throwing: an empty queue (EAGAIN) is the
// common case between requests and costs no exception.
const read = libc.func("intptr_t read(int fd, _Out_ void *buf, size_t count)");
const poll = libc.func("int poll(void *fds, unsigned long nfds, int timeout)");
const POLLIN = 1;
const E = { EINTR: 4, EAGAIN: 11, ENOENT: 2, ENODEV: 19, ECONNABORTED: 103 };
// struct pollfd { int fd; short events; short revents; } x 2: the device and the wake-up eventfd.
const fds = Buffer.alloc(16);
fds.writeInt32LE(fd, 0);
fds.writeInt16LE(POLLIN, 4);
fds.writeInt32LE(wakeFd, 8);
fds.writeInt16LE(POLLIN, 12);
const buf = Buffer.allocUnsafe(bufferSize);
function run() {
	let batch = [];
	const flush = () => {
		if (batch.length === 0) return;
		parentPort.postMessage(batch, batch);
		batch = [];
	};
	for (;;) {
		if (Atomics.load(stop, 0) !== 0) return { reason: "stopped" };
		const n = read(fd, buf, bufferSize);
		if (n > 0) {
			const ab = new ArrayBuffer(n);
			new Uint8Array(ab).set(buf.subarray(0, n));
			batch.push(ab);
			// Take whatever else is queued already and post it together: one wake-up of the main
			// thread for a burst.
			if (batch.length >= maxBatch) flush();
			continue;
		}
		if (n === 0) return { reason: "unmounted" };
		const errno = koffi.errno();
		if (errno === E.EAGAIN) {
			flush();
			fds.writeInt16LE(0, 6);
			fds.writeInt16LE(0, 14);
			if (poll(fds, 2, -1) < 0 && koffi.errno() !== E.EINTR)
				return { reason: "error", code: "poll", message: "poll failed with errno " + koffi.errno() };
			continue;
		}
		// EINTR: a signal; ENOENT: the request was interrupted while being read. Take the next.
		if (errno === E.EINTR || errno === E.ENOENT) continue;
		flush();
		if (errno === E.ENODEV || errno === E.ECONNABORTED) return { reason: "unmounted" };
		return { reason: "error", code: "errno " + errno, message: "reading the FUSE device failed with errno " + errno };
	}
}
parentPort.postMessage({ end: run() });
`;

export interface Reader {
	/** Resolves once the worker has stopped, with why. */
	readonly ended: Promise<ReaderEnd>;
	/**
	 * Asks the worker to stop, without waiting: synchronous, for process exit (Node joins worker
	 * threads when the process exits, and a worker left in poll(2) on a busy mount never returns).
	 */
	wake(): void;
	/** Asks the worker to stop and waits for it (at most `timeoutMs`, then terminates it). */
	stop(timeoutMs?: number): Promise<ReaderEnd>;
}

/**
 * Starts the reader on `fd` (opened O_RDWR|O_NONBLOCK). `onRequest` gets each request in order;
 * `wakeFd` is an eventfd the caller owns (and closes after the reader ended).
 */
export function startReader(
	fd: number,
	wakeFd: number,
	bufferSize: number,
	onRequest: (msg: Buffer) => void,
): Reader {
	const stopFlag = new Int32Array(new SharedArrayBuffer(4));
	const koffiPath = koffiRequirePath();
	const worker = new Worker(WORKER_SOURCE, {
		eval: true,
		// The worker source is CommonJS: don't inherit flags such as --input-type=module.
		execArgv: [],
		workerData: {
			fd,
			wakeFd,
			bufferSize,
			koffiPath,
			stopBuffer: stopFlag.buffer,
			maxBatch: 64,
		},
		stdout: false,
		stderr: false,
	});
	let said: ReaderEnd | undefined;
	const ended = new Promise<ReaderEnd>((resolve) => {
		worker.on("message", (m: ArrayBuffer[] | { end: ReaderEnd }) => {
			if (Array.isArray(m)) for (const ab of m) onRequest(Buffer.from(ab));
			else said = m.end;
		});
		worker.on("error", (e) => {
			said = { reason: "error", code: "worker", message: e.message };
		});
		worker.on("exit", () =>
			resolve(
				said ?? {
					reason: "error",
					code: "worker",
					message: "the reader thread exited",
				},
			),
		);
	});
	const wake = () => {
		Atomics.store(stopFlag, 0, 1);
		const one = Buffer.alloc(8);
		one.writeBigUInt64LE(1n);
		try {
			writeSync(wakeFd, one);
		} catch {
			// the counter cannot overflow from one write; nothing else can fail here
		}
	};
	return {
		ended,
		wake,
		async stop(timeoutMs = 5000) {
			wake();
			let timer: NodeJS.Timeout | undefined;
			const timedOut = new Promise<"timeout">((r) => {
				timer = setTimeout(() => r("timeout"), timeoutMs);
			});
			const first = await Promise.race([ended, timedOut]);
			clearTimeout(timer);
			if (first !== "timeout") return first;
			await worker.terminate();
			return ended;
		},
	};
}
