/**
 * A FUSE file system serving one read-only file, MOUNTPOINT/disk, whose bytes come from a
 * BlockSource — what a loop device (`losetup -r`) turns into a block device in a guest without
 * NBD. Speaks the kernel ABI on /dev/fuse directly (abi.ts); the file system is handler.ts; this
 * module is the I/O around them.
 *
 * Concurrency (see reader.ts for why): one worker thread reads requests from /dev/fuse with
 * synchronous reads and posts them to the main thread; the main thread decodes and answers them,
 * asking the source for READs (promises, so any number are in flight at once), and writes each
 * reply with one synchronous writev. No libuv threadpool thread is ever held by the file system.
 *
 * The thread that runs the server must never wait for the file system it serves: no synchronous
 * fs call on DIR (fs.statSync(DIR/disk) would wait for a GETATTR only this thread can answer), and
 * no child_process spawn of a program stored on it, or on anything it backs (a loop-mounted image):
 * libuv spawns with vfork semantics, so this thread is suspended until the child's execve has read
 * the program — from us. Spawn through a shell or another process instead. fs.promises calls
 * (libuv's pool) and child processes reading the mount are fine.
 */
import { closeSync, writeSync, writevSync } from "node:fs";
import { resolve as resolvePath } from "node:path";
import { DadiError } from "../../errors.js";
import { EFD_CLOEXEC, EFD_NONBLOCK, eventfd } from "../../rootfs/native.js";
import type { BlockSource } from "../block-source.js";
import { assertLittleEndian, Errno } from "./abi.js";
import {
	DEFAULT_MAX_READ,
	describeError,
	FuseHandler,
	type FuseStats,
	type Reply,
} from "./handler.js";
import {
	detachQuietly,
	mountFuse,
	openFuseDevice,
	raiseReadahead,
	unmountFuse,
} from "./mount.js";
import { type Reader, type ReaderEnd, startReader } from "./reader.js";

export interface FuseServerOptions {
	source: BlockSource;
	/** The file's name in the mount point (default "disk"). */
	fileName?: string;
	/** The largest READ, negotiated in INIT as max_pages (default 1 MiB: such reads arrive whole). */
	maxRead?: number;
	log?: (line: string) => void;
	/** Called after each READ with the bytes answered, the source's time and whether it worked. */
	onRead?: (bytes: number, ms: number, ok: boolean) => void;
	/**
	 * On close of a busy mount, how long READs already asked of the source may take before they
	 * are answered EIO (default 2000 ms).
	 */
	closeTimeoutMs?: number;
	/** How long mount() waits for the kernel's INIT (default 10 s). */
	initTimeoutMs?: number;
}

/** Requests are at most a few KiB (we never accept writes); the kernel wants at least 8 KiB. */
const READ_BUFFER = 128 * 1024 + 4096;

const live = new Set<FuseServer>();
let exitHookInstalled = false;

/**
 * On process exit, mounts still open are detached so no dead mount (ENOTCONN) is left behind, and
 * each reader thread is told to stop: Node joins worker threads when the process exits, and a
 * reader waiting in poll(2) on a mount that stays busy after the detach (a loop device on the file,
 * a process holding it open) would never return, so the process would never exit.
 */
function installExitHook(): void {
	if (exitHookInstalled) return;
	exitHookInstalled = true;
	process.on("exit", () => {
		for (const s of live) s.detachAtExit();
	});
}

export class FuseServer {
	/** The mount point. */
	readonly dir: string;
	/** The served file: DIR/disk. */
	readonly path: string;
	private readonly handler: FuseHandler;
	private readonly log: (line: string) => void;
	private readonly closeTimeoutMs: number;
	private fd = -1;
	private wakeFd = -1;
	private reader: Reader | undefined;
	private mounted = false;
	private closing: Promise<void> | undefined;
	private initWaiter:
		| { resolve: () => void; reject: (e: Error) => void }
		| undefined;

	private constructor(dir: string, o: FuseServerOptions) {
		this.dir = resolvePath(dir);
		this.handler = new FuseHandler({
			source: o.source,
			fileName: o.fileName,
			maxRead: o.maxRead ?? DEFAULT_MAX_READ,
			log: o.log,
			onRead: o.onRead,
		});
		this.path = `${this.dir}/${this.handler.fileName}`;
		this.log = o.log ?? (() => {});
		this.closeTimeoutMs = o.closeTimeoutMs ?? 2000;
	}

	/** Mounts at `dir` (an existing directory); resolves once INIT is done and `path` is usable. */
	static async mount(dir: string, o: FuseServerOptions): Promise<FuseServer> {
		assertLittleEndian();
		const s = new FuseServer(dir, o);
		try {
			await s.start(o.initTimeoutMs ?? 10_000);
		} catch (e) {
			await s.close().catch(() => {});
			throw e;
		}
		return s;
	}

	/** For the exit hook only: detach the mount and stop the reader thread, synchronously. */
	detachAtExit(): void {
		detachQuietly(this.dir);
		this.reader?.wake();
	}

	/** Live counters (the same object throughout). */
	get stats(): FuseStats {
		return this.handler.stats;
	}

	/** What INIT settled (protocol minor, flags, max_pages, readahead). */
	get negotiated() {
		return this.handler.negotiated;
	}

	private async start(initTimeoutMs: number): Promise<void> {
		this.fd = openFuseDevice();
		this.wakeFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		const initDone = new Promise<void>((resolve, reject) => {
			this.initWaiter = { resolve, reject };
		});
		initDone.catch(() => {}); // observed below, unless mount(2) itself fails first
		this.reader = startReader(this.fd, this.wakeFd, READ_BUFFER, (m) =>
			this.onRequest(m),
		);
		void this.reader.ended.then((end) => this.onReaderEnd(end));
		mountFuse(this.dir, this.fd, this.handler.maxRead);
		this.mounted = true;
		live.add(this);
		installExitHook();
		let timer: NodeJS.Timeout | undefined;
		try {
			await Promise.race([
				initDone,
				new Promise<never>((_, reject) => {
					timer = setTimeout(
						() =>
							reject(
								new DadiError(
									"IO",
									`${this.dir}: the kernel sent no FUSE INIT within ${initTimeoutMs} ms`,
								),
							),
						initTimeoutMs,
					);
				}),
			]);
		} finally {
			clearTimeout(timer);
		}
		// sysfs and /proc, not our mount: synchronous calls cannot wait on this thread.
		const ra = raiseReadahead(
			this.dir,
			Math.floor(this.handler.maxRead / 1024),
		);
		const n = this.handler.negotiated;
		this.log(
			`fuse: mounted ${this.dir} (FUSE 7.${n?.minor}, kernel 7.${n?.kernelMinor}, max_pages ${n?.maxPages}, readahead ${ra ?? "?"} KiB)`,
		);
	}

	private onRequest(msg: Buffer): void {
		let r: ReturnType<FuseHandler["handle"]>;
		try {
			r = this.handler.handle(msg);
		} catch (e) {
			this.log(`fuse: dropped a malformed request: ${describeError(e)}`);
			return;
		}
		if (r === undefined) return;
		if (Array.isArray(r)) {
			this.write(r);
			if (this.initWaiter && this.handler.negotiated) {
				this.initWaiter.resolve();
				this.initWaiter = undefined;
			}
			return;
		}
		r.then(
			(reply) => {
				if (reply) this.write(reply);
			},
			(e) => this.log(`fuse: internal error: ${describeError(e)}`),
		);
	}

	/** One reply, one write(2)/writev(2). */
	private write(reply: Reply): void {
		if (this.fd < 0) return;
		try {
			const n =
				reply.length === 1
					? writeSync(this.fd, reply[0] as Buffer)
					: writevSync(this.fd, reply);
			let want = 0;
			for (const b of reply) want += b.length;
			if (n !== want)
				this.log(`fuse: short write to the device (${n} of ${want} bytes)`);
		} catch (e) {
			const code = (e as NodeJS.ErrnoException).code;
			// ENOENT: the request is gone (interrupted, or the connection aborted); ENODEV: unmounted.
			if (code === "ENOENT" || code === "ENODEV") return;
			this.handler.stats.errors++;
			this.log(`fuse: writing a reply failed: ${describeError(e)}`);
		}
	}

	private onReaderEnd(end: ReaderEnd): void {
		if (this.initWaiter) {
			this.initWaiter.reject(
				new DadiError(
					"IO",
					`${this.dir}: the FUSE connection ended before INIT (${end.reason}${end.message ? `: ${end.message}` : ""})`,
				),
			);
			this.initWaiter = undefined;
		}
		if (this.closing) return;
		if (end.reason === "unmounted")
			this.log(`fuse: ${this.dir} was unmounted from outside; stopping`);
		else
			this.log(
				`fuse: the reader stopped (${end.reason}: ${end.message ?? ""}); unmounting ${this.dir}`,
			);
		void this.close().catch((e) =>
			this.log(`fuse: closing after the reader ended: ${describeError(e)}`),
		);
	}

	/**
	 * Unmounts (lazily detached if busy), answers or fails the READs in flight, stops the reader and
	 * closes the device. Idempotent: every call returns the same promise.
	 */
	close(): Promise<void> {
		this.closing ??= this.shutdown();
		return this.closing;
	}

	private async shutdown(): Promise<void> {
		let failure: unknown;
		let how: ReturnType<typeof unmountFuse> | undefined;
		if (this.mounted) {
			try {
				how = unmountFuse(this.dir);
			} catch (e) {
				failure = e;
			}
			this.mounted = false;
			live.delete(this);
		}
		// Still busy (detached): READs in flight may finish for a while, then they are failed.
		// Unmounted: the kernel has aborted the connection; nobody waits for those replies.
		if (how === "detached" && this.handler.inFlight > 0) {
			let timer: NodeJS.Timeout | undefined;
			await Promise.race([
				this.handler.idle(),
				new Promise<void>((r) => {
					timer = setTimeout(r, this.closeTimeoutMs);
				}),
			]);
			clearTimeout(timer);
		}
		const failed = this.handler.failPending(Errno.EIO);
		for (const reply of failed) this.write(reply);
		if (failed.length > 0)
			this.log(`fuse: ${failed.length} READs in flight answered EIO at close`);
		if (this.reader) {
			const end = await this.reader.stop();
			if (end.reason === "error")
				this.log(`fuse: the reader ended with an error: ${end.message ?? ""}`);
		}
		// Closing the device aborts the connection: anything still using a detached mount gets
		// ENOTCONN from now on.
		for (const fd of [this.fd, this.wakeFd])
			if (fd >= 0)
				try {
					closeSync(fd);
				} catch {
					// already closed
				}
		this.fd = -1;
		this.wakeFd = -1;
		if (how) this.log(`fuse: ${how} ${this.dir}`);
		if (failure) throw failure;
	}
}
