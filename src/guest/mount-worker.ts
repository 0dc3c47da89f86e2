/**
 * mount(2) and umount2(2) made on a worker thread, for mounts that may read the device this very
 * process serves. Mounting the image's file system (or an overlay on it, or anything whose path
 * crosses it) makes the kernel read the disk — through nbd or FUSE, both answered by this
 * process's main thread. A synchronous mount(2) there would wait for the thread that has to answer
 * it: a deadlock (the hazard docs/guest.md names for FUSE). So the main thread posts each call to
 * this worker and keeps serving while it waits.
 *
 * The worker's code is a string run as CommonJS (as fuse/reader.ts), so it works from the sources,
 * dist/ and the single-file guest build; it loads koffi by absolute path. Errors come back as
 * Node-style errno errors (`code` "EBUSY", `syscall`, `path`), like src/rootfs/native.ts throws.
 */
import { getSystemErrorMap } from "node:util";
import { Worker } from "node:worker_threads";
import { koffiRequirePath } from "../native/addons.js";

const SOURCE = `"use strict";
const { workerData, parentPort } = require("node:worker_threads");
const koffi = require(workerData.koffiPath);
const libc = koffi.load("libc.so.6");
// signals are the main thread's business (an interrupted mount would fail with EINTR)
libc.func("int pthread_sigmask(int how, const void *set, void *oldset)")(0, Buffer.alloc(128, 0xff), null);
const mount = libc.func("int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)");
const umount2 = libc.func("int umount2(const char *target, int flags)");
parentPort.on("message", (m) => {
	const ret = m.op === "mount"
		? mount(m.source, m.target, m.fstype, m.flags, m.data)
		: umount2(m.target, m.flags);
	parentPort.postMessage({ id: m.id, ret, errno: ret < 0 ? koffi.errno() : 0 });
});
`;

interface Reply {
	id: number;
	ret: number;
	errno: number;
}

export class MountWorker {
	private readonly worker: Worker;
	private readonly pending = new Map<
		number,
		{ resolve: () => void; reject: (e: Error) => void; what: Call }
	>();
	private nextId = 1;
	private failed: Error | undefined;

	constructor() {
		this.worker = new Worker(SOURCE, {
			eval: true,
			execArgv: [],
			name: "dadi mount(2)",
			workerData: { koffiPath: koffiRequirePath() },
			stdout: false,
			stderr: false,
		});
		this.worker.unref();
		this.worker.on("message", (r: Reply) => {
			const p = this.pending.get(r.id);
			if (!p) return;
			this.pending.delete(r.id);
			if (r.ret >= 0) p.resolve();
			else p.reject(errnoError(r.errno, p.what));
		});
		const gone = (e: Error) => {
			this.failed ??= e;
			for (const p of this.pending.values()) p.reject(e);
			this.pending.clear();
		};
		this.worker.on("error", gone);
		this.worker.on("exit", () =>
			gone(new Error("the mount(2) worker thread exited")),
		);
	}

	mount(
		source: string,
		target: string,
		fstype: string,
		flags: number,
		data: string,
	): Promise<void> {
		return this.call({ op: "mount", source, target, fstype, flags, data });
	}

	umount2(target: string, flags: number): Promise<void> {
		return this.call({ op: "umount2", target, flags });
	}

	async close(): Promise<void> {
		await this.worker.terminate();
	}

	private call(c: Call): Promise<void> {
		if (this.failed) return Promise.reject(this.failed);
		const id = this.nextId++;
		return new Promise<void>((resolve, reject) => {
			this.pending.set(id, { resolve: () => resolve(), reject, what: c });
			this.worker.ref(); // keep the process alive while a call is outstanding
			this.worker.postMessage({ id, ...c });
		}).finally(() => {
			if (this.pending.size === 0) this.worker.unref();
		});
	}
}

type Call =
	| {
			op: "mount";
			source: string;
			target: string;
			fstype: string;
			flags: number;
			data: string;
	  }
	| { op: "umount2"; target: string; flags: number };

function errnoError(errno: number, c: Call): NodeJS.ErrnoException {
	const [code, message] = getSystemErrorMap().get(-errno) ?? [
		`E${errno}`,
		`errno ${errno}`,
	];
	const e = new Error(
		`${code}: ${message}, ${c.op} '${c.target}'${c.op === "mount" ? ` (${c.fstype || "bind"})` : ""}`,
	) as NodeJS.ErrnoException;
	e.code = code;
	e.errno = -errno;
	e.syscall = c.op;
	e.path = c.target;
	return e;
}
