/**
 * One NBD client connection: the fixed-newstyle handshake, then the transmission phase serving
 * one read-only export. Requests are parsed from a byte queue by a small state machine; reads run
 * concurrently and are answered as each completes (out of order, as the protocol allows).
 *
 * Back-pressure: the socket is paused while `maxInFlight` requests (or `maxInFlightBytes` of reads)
 * are pending, or while that many reply bytes wait to be written; it resumes as they drain.
 * A client that goes away mid-request only makes the late replies be dropped.
 */
import type { Socket } from "node:net";
import { performance } from "node:perf_hooks";
import { DadiError, isDadiError } from "../../errors.js";
import type { BlockSource } from "../block-source.js";
import { ByteQueue } from "./byte-queue.js";
import {
	CLIENT_FLAGS_LENGTH,
	decodeClientFlags,
	decodeInfoRequest,
	decodeOptionHeader,
	decodeRequest,
	decodeString,
	encodeErrorChunk,
	encodeExportNameReply,
	encodeGreeting,
	encodeInfo,
	encodeNoneChunk,
	encodeOffsetDataHeader,
	encodeOptionError,
	encodeOptionReply,
	encodeServerReply,
	encodeSimpleReply,
	NBD_CMD_CACHE,
	NBD_CMD_DISC,
	NBD_CMD_FLAG_DF,
	NBD_CMD_FLAG_FAST_ZERO,
	NBD_CMD_FLAG_FUA,
	NBD_CMD_FLAG_NO_HOLE,
	NBD_CMD_FLUSH,
	NBD_CMD_READ,
	NBD_CMD_TRIM,
	NBD_CMD_WRITE,
	NBD_CMD_WRITE_ZEROES,
	NBD_EINVAL,
	NBD_EIO,
	NBD_EPERM,
	NBD_ESHUTDOWN,
	NBD_FLAG_C_NO_ZEROES,
	NBD_FLAG_CAN_MULTI_CONN,
	NBD_FLAG_FIXED_NEWSTYLE,
	NBD_FLAG_HAS_FLAGS,
	NBD_FLAG_NO_ZEROES,
	NBD_FLAG_READ_ONLY,
	NBD_FLAG_SEND_CACHE,
	NBD_FLAG_SEND_DF,
	NBD_FLAG_SEND_FLUSH,
	NBD_INFO_DESCRIPTION,
	NBD_INFO_NAME,
	NBD_OPT_ABORT,
	NBD_OPT_EXPORT_NAME,
	NBD_OPT_GO,
	NBD_OPT_INFO,
	NBD_OPT_LIST,
	NBD_OPT_STRUCTURED_REPLY,
	NBD_REP_ACK,
	NBD_REP_ERR_INVALID,
	NBD_REP_ERR_SHUTDOWN,
	NBD_REP_ERR_UNKNOWN,
	NBD_REP_ERR_UNSUP,
	NBD_REP_INFO,
	NBD_REP_SERVER,
	NBD_REPLY_FLAG_DONE,
	OPTION_HEADER_LENGTH,
	REQUEST_LENGTH,
} from "./protocol.js";

/** Option data longer than this is not read: the connection is closed (a denial-of-service guard). */
export const MAX_OPTION_DATA = 64 * 1024;
/** Options one handshake may send before the server gives up on the client. */
export const MAX_OPTIONS = 1024;
/**
 * A write's payload up to this size is read and discarded (then EPERM); a longer one closes the
 * connection. The spec asks servers not to treat payloads up to 2^25 bytes as an attack.
 */
const MIN_DISCARD_LIMIT = 32 * 1024 * 1024;
/** After the server ends a connection, how long the client gets to close its side. */
const LINGER_MS = 2000;

/** What the server hands every connection. */
export interface ExportConfig {
	source: BlockSource;
	name: string;
	description: string | undefined;
	minBlock: number;
	preferredBlock: number;
	maxBlock: number;
	maxInFlight: number;
	maxInFlightBytes: number;
	structuredReplies: boolean;
	/** Structured reads longer than this are answered in chunks of this size (aligned), each sent as it is read. */
	replyChunk: number;
	handshakeTimeoutMs: number;
}

export interface NbdStats {
	/** Connections open now. */
	connections: number;
	/** Transmission requests received. */
	requests: number;
	/** Bytes of export data sent. */
	bytesRead: number;
	/** Requests answered with an error, and connections dropped for a protocol violation. */
	errors: number;
}

export interface ConnectionHooks {
	stats: NbdStats;
	log: (line: string) => void;
	onRead: ((bytes: number, ms: number, ok: boolean) => void) | undefined;
	/** True once the server is closing: options get NBD_REP_ERR_SHUTDOWN, requests NBD_ESHUTDOWN. */
	shuttingDown: () => boolean;
}

type State =
	| "client-flags"
	| "option-header"
	| "option-data"
	| "request"
	| "discard"
	| "ended";

/** Command flags each command accepts (others are EINVAL). */
const WRITE_FLAGS = NBD_CMD_FLAG_FUA;
const WRITE_ZEROES_FLAGS =
	NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;

export class NbdConnection {
	/** Resolves when the socket has closed. */
	readonly closed: Promise<void>;

	private readonly q = new ByteQueue();
	private state: State = "client-flags";
	private option = 0;
	private optionLength = 0;
	private options = 0;
	private discardLeft = 0;
	/** The reply to send once a write's payload has been discarded. */
	private afterDiscard: (() => void) | undefined;
	private noZeroes = false;
	private structured = false;
	private inTransmission = false;
	private inFlight = 0;
	private inFlightBytes = 0;
	private paused = false;
	private dead = false;
	private ending = false;
	private corked = false;
	private handshakeTimer: NodeJS.Timeout | undefined;
	private lingerTimer: NodeJS.Timeout | undefined;
	private lastSocketError: string | undefined;
	private requests = 0;

	constructor(
		private readonly socket: Socket,
		private readonly cfg: ExportConfig,
		private readonly hooks: ConnectionHooks,
		readonly peer: string,
		/**
		 * "handshake" (a network client: greeting, options, then transmission) or "transmission"
		 * (a socket whose handshake happened out of band: the kernel's ioctl interface, where
		 * userspace tells the driver size and flags itself and hands it a connected socket; simple
		 * replies, and the flags of `kernelTransmissionFlags()`).
		 */
		mode: "handshake" | "transmission" = "handshake",
	) {
		this.closed = new Promise((resolve) => {
			socket.once("close", () => {
				this.onClose();
				resolve();
			});
		});
		socket.setNoDelay(true);
		socket.on("data", (b: Buffer) => this.onData(b));
		socket.on("end", () => this.onEnd());
		socket.on("error", (e: NodeJS.ErrnoException) => {
			this.lastSocketError = e.code ?? e.message;
		});
		socket.on("drain", () => {
			if (this.paused) this.pump();
		});
		if (mode === "transmission") {
			this.enterTransmission();
			return;
		}
		this.handshakeTimer = setTimeout(
			() =>
				this.violation(
					`handshake not finished within ${cfg.handshakeTimeoutMs} ms`,
				),
			cfg.handshakeTimeoutMs,
		);
		this.handshakeTimer.unref();
		this.send(encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
	}

	/** Server shutdown: a connection still negotiating is dropped; one in transmission drains. */
	shutdown(): void {
		if (this.dead) return;
		if (!this.inTransmission) {
			this.socket.destroy();
			return;
		}
		if (this.inFlight === 0) this.end();
	}

	/** Hard disconnect. */
	destroy(): void {
		this.socket.destroy();
	}

	// --- input -----------------------------------------------------------------------------------

	private onData(b: Buffer): void {
		if (this.state === "ended" || this.dead) return;
		this.q.push(b);
		this.pump();
	}

	/**
	 * The client closed its side. Without NBD_CMD_DISC that is a hard disconnect (the spec's
	 * soft disconnect is DISC): replies still in flight are dropped and the socket closed now,
	 * rather than held open until a slow source answers.
	 */
	private onEnd(): void {
		if (this.dead) return;
		this.state = "ended";
		this.socket.destroy();
	}

	private blocked(): boolean {
		if (this.socket.writableLength >= this.cfg.maxInFlightBytes) return true;
		if (this.state !== "request") return false;
		return (
			this.inFlight >= this.cfg.maxInFlight ||
			(this.inFlight > 0 && this.inFlightBytes >= this.cfg.maxInFlightBytes)
		);
	}

	/** Parses as much of the queue as it can; pauses the socket while blocked. */
	private pump(): void {
		for (;;) {
			if (this.dead || this.state === "ended") return;
			if (this.blocked()) {
				if (!this.paused) {
					this.paused = true;
					this.socket.pause();
				}
				return;
			}
			if (!this.step()) break;
		}
		if (this.paused) {
			this.paused = false;
			this.socket.resume();
		}
	}

	/** One parsing step; false when more bytes are needed. */
	private step(): boolean {
		const q = this.q;
		switch (this.state) {
			case "client-flags": {
				if (q.length < CLIENT_FLAGS_LENGTH) return false;
				let flags: number;
				try {
					flags = decodeClientFlags(q.take(CLIENT_FLAGS_LENGTH));
				} catch (e) {
					return this.violation(describe(e));
				}
				this.noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;
				this.state = "option-header";
				return true;
			}
			case "option-header": {
				if (q.length < OPTION_HEADER_LENGTH) return false;
				let h: { option: number; length: number };
				try {
					h = decodeOptionHeader(q.take(OPTION_HEADER_LENGTH));
				} catch (e) {
					return this.violation(describe(e));
				}
				if (h.length > MAX_OPTION_DATA)
					return this.violation(
						`option ${h.option} carries ${h.length} bytes (limit ${MAX_OPTION_DATA})`,
					);
				if (++this.options > MAX_OPTIONS)
					return this.violation(`more than ${MAX_OPTIONS} options`);
				this.option = h.option;
				this.optionLength = h.length;
				this.state = "option-data";
				return true;
			}
			case "option-data": {
				if (q.length < this.optionLength) return false;
				const data = q.take(this.optionLength);
				this.state = "option-header";
				this.handleOption(this.option, data);
				return true;
			}
			case "request": {
				if (q.length < REQUEST_LENGTH) return false;
				let r: ReturnType<typeof decodeRequest>;
				try {
					r = decodeRequest(q.take(REQUEST_LENGTH));
				} catch (e) {
					return this.violation(describe(e));
				}
				this.handleRequest(r.flags, r.type, r.cookie, r.offset, r.length);
				return true;
			}
			case "discard": {
				if (q.length === 0) return false;
				this.discardLeft -= q.skip(this.discardLeft);
				if (this.discardLeft > 0) return false;
				this.state = "request";
				const reply = this.afterDiscard;
				this.afterDiscard = undefined;
				reply?.();
				return true;
			}
			case "ended":
				return false;
		}
	}

	/** Hard disconnect for a client that broke the protocol. Returns false (stop parsing). */
	private violation(reason: string): false {
		if (this.dead || this.state === "ended") return false;
		this.state = "ended";
		this.hooks.stats.errors++;
		this.hooks.log(`${this.peer}: protocol error: ${reason}; disconnecting`);
		this.socket.destroy();
		return false;
	}

	// --- option haggling -------------------------------------------------------------------------

	private handleOption(option: number, data: Buffer): void {
		if (this.hooks.shuttingDown() && option !== NBD_OPT_ABORT) {
			this.send(
				encodeOptionError(
					option,
					NBD_REP_ERR_SHUTDOWN,
					"the server is shutting down",
				),
			);
			return;
		}
		switch (option) {
			case NBD_OPT_EXPORT_NAME: {
				this.exportName(data);
				return;
			}
			case NBD_OPT_INFO:
			case NBD_OPT_GO: {
				this.infoOrGo(option, data);
				return;
			}
			case NBD_OPT_LIST:
				if (data.length > 0) {
					this.optionError(
						option,
						NBD_REP_ERR_INVALID,
						"NBD_OPT_LIST takes no data",
					);
					return;
				}
				this.send(
					Buffer.concat([
						encodeOptionReply(
							option,
							NBD_REP_SERVER,
							encodeServerReply(this.cfg.name, this.cfg.description ?? ""),
						),
						encodeOptionReply(option, NBD_REP_ACK),
					]),
				);
				return;
			case NBD_OPT_ABORT:
				this.send(encodeOptionReply(option, NBD_REP_ACK));
				this.end();
				return;
			case NBD_OPT_STRUCTURED_REPLY:
				if (!this.cfg.structuredReplies) {
					this.optionError(
						option,
						NBD_REP_ERR_UNSUP,
						"structured replies are disabled on this server",
					);
					return;
				}
				if (data.length > 0) {
					this.optionError(
						option,
						NBD_REP_ERR_INVALID,
						"NBD_OPT_STRUCTURED_REPLY takes no data",
					);
					return;
				}
				if (this.structured) {
					this.optionError(
						option,
						NBD_REP_ERR_INVALID,
						"structured replies are already negotiated",
					);
					return;
				}
				this.structured = true;
				this.send(encodeOptionReply(option, NBD_REP_ACK));
				return;
			default: {
				this.optionError(
					option,
					NBD_REP_ERR_UNSUP,
					`option ${option} is not supported`,
				);
				return;
			}
		}
	}

	private optionError(option: number, type: number, message: string): void {
		this.send(encodeOptionError(option, type, message));
	}

	private matches(name: string): boolean {
		return name === this.cfg.name || name === "";
	}

	private transmissionFlags(): number {
		return transmissionFlags(this.structured);
	}

	private exportName(data: Buffer): void {
		let name: string;
		try {
			name = decodeString(data, "export name");
		} catch (e) {
			this.violation(`NBD_OPT_EXPORT_NAME: ${describe(e)}`);
			return;
		}
		if (!this.matches(name)) {
			// NBD_OPT_EXPORT_NAME cannot carry an error: the spec says to terminate the session
			this.violation(`NBD_OPT_EXPORT_NAME: no export named ${quote(name)}`);
			return;
		}
		this.send(
			encodeExportNameReply(
				this.cfg.source.size,
				this.transmissionFlags(),
				this.noZeroes,
			),
		);
		this.enterTransmission();
	}

	private infoOrGo(option: number, data: Buffer): void {
		let req: { name: string; requests: number[] };
		try {
			req = decodeInfoRequest(data);
		} catch (e) {
			this.optionError(option, NBD_REP_ERR_INVALID, describe(e));
			return;
		}
		if (!this.matches(req.name)) {
			this.optionError(
				option,
				NBD_REP_ERR_UNKNOWN,
				`no export named ${quote(req.name)}; this server exports ${quote(this.cfg.name)}`,
			);
			return;
		}
		const info = (item: Parameters<typeof encodeInfo>[0]) =>
			encodeOptionReply(option, NBD_REP_INFO, encodeInfo(item));
		const replies = [
			info({
				type: "export",
				size: this.cfg.source.size,
				flags: this.transmissionFlags(),
			}),
		];
		if (req.requests.includes(NBD_INFO_NAME))
			replies.push(info({ type: "name", name: this.cfg.name }));
		if (
			req.requests.includes(NBD_INFO_DESCRIPTION) &&
			this.cfg.description !== undefined
		)
			replies.push(
				info({ type: "description", description: this.cfg.description }),
			);
		// sent whether asked or not, as the spec recommends (clients ignore what they did not ask for)
		replies.push(
			info({
				type: "block-size",
				minimum: this.cfg.minBlock,
				preferred: this.cfg.preferredBlock,
				maximum: this.cfg.maxBlock,
			}),
		);
		replies.push(encodeOptionReply(option, NBD_REP_ACK));
		this.send(Buffer.concat(replies));
		if (option === NBD_OPT_GO) this.enterTransmission();
	}

	private enterTransmission(): void {
		clearTimeout(this.handshakeTimer);
		this.handshakeTimer = undefined;
		this.inTransmission = true;
		this.state = "request";
		this.hooks.log(
			`${this.peer}: transmission on export ${quote(this.cfg.name)} (${this.structured ? "structured" : "simple"} replies)`,
		);
	}

	// --- transmission ----------------------------------------------------------------------------

	private handleRequest(
		flags: number,
		type: number,
		cookie: bigint,
		offset64: bigint,
		length: number,
	): void {
		this.hooks.stats.requests++;
		this.requests++;
		if (type === NBD_CMD_DISC) {
			// no reply; answer what is in flight, then close
			this.state = "ended";
			if (this.inFlight === 0) this.end();
			return;
		}
		if (type === NBD_CMD_WRITE) {
			// the payload follows the header whatever the answer; read it, or give up on the client
			const limit = Math.max(this.cfg.maxBlock, MIN_DISCARD_LIMIT);
			if (length > limit) {
				this.violation(
					`a write of ${length} bytes (payloads over ${limit} bytes are not read)`,
				);
				return;
			}
			const reply = () => {
				if (this.hooks.shuttingDown())
					this.replyError(cookie, NBD_ESHUTDOWN, "the server is shutting down");
				else if ((flags & ~WRITE_FLAGS) !== 0)
					this.replyError(cookie, NBD_EINVAL, badFlags(flags, "NBD_CMD_WRITE"));
				else this.replyError(cookie, NBD_EPERM, "the export is read-only");
			};
			if (length === 0) reply();
			else {
				this.state = "discard";
				this.discardLeft = length;
				this.afterDiscard = reply;
			}
			return;
		}
		if (this.hooks.shuttingDown()) {
			this.replyError(cookie, NBD_ESHUTDOWN, "the server is shutting down");
			return;
		}
		switch (type) {
			case NBD_CMD_READ: {
				const df = (flags & NBD_CMD_FLAG_DF) !== 0;
				const allowed = this.structured ? NBD_CMD_FLAG_DF : 0;
				if ((flags & ~allowed) !== 0) {
					this.replyError(cookie, NBD_EINVAL, badFlags(flags, "NBD_CMD_READ"));
					return;
				}
				const offset = this.checkRange(cookie, offset64, length);
				if (offset === undefined) return;
				if (this.structured) this.readStructured(cookie, offset, length, df);
				else this.readSimple(cookie, offset, length);
				return;
			}
			case NBD_CMD_FLUSH:
				if (flags !== 0) {
					this.replyError(cookie, NBD_EINVAL, badFlags(flags, "NBD_CMD_FLUSH"));
					return;
				}
				// read-only: nothing is ever dirty
				this.replyOk(cookie);
				return;
			case NBD_CMD_TRIM:
			case NBD_CMD_WRITE_ZEROES: {
				const allowed =
					type === NBD_CMD_TRIM ? WRITE_FLAGS : WRITE_ZEROES_FLAGS;
				if ((flags & ~allowed) !== 0) {
					this.replyError(
						cookie,
						NBD_EINVAL,
						badFlags(flags, `command ${type}`),
					);
					return;
				}
				this.replyError(cookie, NBD_EPERM, "the export is read-only");
				return;
			}
			case NBD_CMD_CACHE: {
				if (flags !== 0) {
					this.replyError(cookie, NBD_EINVAL, badFlags(flags, "NBD_CMD_CACHE"));
					return;
				}
				const offset = this.checkRange(cookie, offset64, length);
				if (offset === undefined) return;
				this.cache(cookie, offset, length);
				return;
			}
			default: {
				this.replyError(cookie, NBD_EINVAL, `command ${type} is not supported`);
				return;
			}
		}
	}

	/** The offset as a number when [offset, offset + length) is a valid read; else replies EINVAL. */
	private checkRange(
		cookie: bigint,
		offset64: bigint,
		length: number,
	): number | undefined {
		const size = this.cfg.source.size;
		if (offset64 + BigInt(length) > BigInt(size)) {
			this.replyError(
				cookie,
				NBD_EINVAL,
				`${length} bytes at ${offset64} reach past the end of the export (${size} bytes)`,
			);
			return undefined;
		}
		if (length > this.cfg.maxBlock) {
			this.replyError(
				cookie,
				NBD_EINVAL,
				`a request of ${length} bytes exceeds the maximum of ${this.cfg.maxBlock}`,
			);
			return undefined;
		}
		const offset = Number(offset64);
		const min = this.cfg.minBlock;
		if (min > 1 && (offset % min !== 0 || length % min !== 0)) {
			this.replyError(
				cookie,
				NBD_EINVAL,
				`${length} bytes at ${offset} are not aligned to the minimum block size ${min}`,
			);
			return undefined;
		}
		return offset;
	}

	private readSimple(cookie: bigint, offset: number, length: number): void {
		const t0 = performance.now();
		if (length === 0) {
			this.send(encodeSimpleReply(0, cookie));
			this.metric(0, 0, true);
			return;
		}
		this.begin(length);
		this.sourceRead(offset, length).then(
			(data) => {
				this.send(encodeSimpleReply(0, cookie), data);
				this.readDone(offset, length, t0, undefined);
			},
			(e) => {
				this.send(encodeSimpleReply(NBD_EIO, cookie));
				this.readDone(offset, length, t0, e);
			},
		);
	}

	/**
	 * A structured read: reads longer than `replyChunk` are split at multiples of it and each piece
	 * is sent as an NBD_REPLY_TYPE_OFFSET_DATA chunk as soon as it has been read; a piece that fails
	 * becomes an NBD_REPLY_TYPE_ERROR_OFFSET chunk (EIO, with the error's code as the message), so
	 * the client keeps the pieces that were read. The last chunk to go out carries
	 * NBD_REPLY_FLAG_DONE (its bytes are all in hand, so no error can follow it).
	 */
	private readStructured(
		cookie: bigint,
		offset: number,
		length: number,
		df: boolean,
	): void {
		const t0 = performance.now();
		if (length === 0) {
			this.send(encodeNoneChunk(cookie));
			this.metric(0, 0, true);
			return;
		}
		this.begin(length);
		const piece = this.cfg.replyChunk;
		const end = offset + length;
		const pieces: number[] = [offset];
		if (!df && length > piece)
			for (
				let o = (Math.floor(offset / piece) + 1) * piece;
				o < end;
				o += piece
			)
				pieces.push(o);
		let left = pieces.length;
		let firstError: unknown;
		let failedBytes = 0;
		for (const [i, o] of pieces.entries()) {
			const n = (pieces[i + 1] ?? end) - o;
			this.sourceRead(o, n).then(
				(data) => {
					left--;
					this.send(
						encodeOffsetDataHeader(
							left === 0 ? NBD_REPLY_FLAG_DONE : 0,
							cookie,
							o,
							n,
						),
						data,
					);
					if (left === 0)
						this.readDone(offset, length, t0, firstError, failedBytes);
				},
				(e) => {
					left--;
					firstError ??= e;
					failedBytes += n;
					this.send(
						encodeErrorChunk(
							left === 0 ? NBD_REPLY_FLAG_DONE : 0,
							cookie,
							NBD_EIO,
							`read of ${n} bytes at ${o} failed (${errorCode(e)})`,
							o,
						),
					);
					if (left === 0)
						this.readDone(offset, length, t0, firstError, failedBytes);
				},
			);
		}
	}

	/** NBD_CMD_CACHE: read the range and drop it, which warms the source's caches (a lazy image). */
	private cache(cookie: bigint, offset: number, length: number): void {
		this.begin(length);
		this.sourceRead(offset, length).then(
			() => {
				this.replyOk(cookie);
				this.settle(length);
			},
			(e) => {
				this.hooks.log(
					`${this.peer}: cache of ${length} bytes at ${offset} failed (${errorCode(e)})`,
				);
				this.replyError(
					cookie,
					NBD_EIO,
					`cache of ${length} bytes at ${offset} failed (${errorCode(e)})`,
				);
				this.settle(length);
			},
		);
	}

	/** The source's read as a promise that rejects (never throws) and checks the length it gives. */
	private sourceRead(offset: number, length: number): Promise<Buffer> {
		try {
			return this.cfg.source.read(offset, length).then((b) => {
				if (!(b instanceof Uint8Array) || b.length !== length)
					throw new DadiError(
						"INTERNAL",
						`the block source returned ${b?.length} bytes for a read of ${length}`,
					);
				return b;
			});
		} catch (e) {
			return Promise.reject(e);
		}
	}

	private begin(length: number): void {
		this.inFlight++;
		this.inFlightBytes += length;
	}

	private readDone(
		offset: number,
		length: number,
		t0: number,
		error: unknown,
		failedBytes = error === undefined ? 0 : length,
	): void {
		const ok = error === undefined;
		this.hooks.stats.bytesRead += length - failedBytes;
		if (!ok) {
			this.hooks.stats.errors++;
			this.hooks.log(
				`${this.peer}: read of ${length} bytes at ${offset} failed (${errorCode(error)}): replied EIO${failedBytes < length ? ` for ${failedBytes} bytes` : ""}`,
			);
		}
		this.metric(length, performance.now() - t0, ok);
		this.settle(length);
	}

	private metric(bytes: number, ms: number, ok: boolean): void {
		try {
			this.hooks.onRead?.(bytes, ms, ok);
		} catch {
			// a metrics hook must not take the connection down
		}
	}

	/** A request has been answered: admit more, or finish a pending disconnect. */
	private settle(length: number): void {
		this.inFlight--;
		this.inFlightBytes -= length;
		if (this.dead) return;
		if (this.inFlight === 0 && (this.state === "ended" || this.draining()))
			this.end();
		else if (this.paused) this.pump();
	}

	private draining(): boolean {
		return this.hooks.shuttingDown() && this.inTransmission;
	}

	private replyOk(cookie: bigint): void {
		this.send(
			this.structured ? encodeNoneChunk(cookie) : encodeSimpleReply(0, cookie),
		);
		if (this.draining() && this.inFlight === 0) this.end();
	}

	private replyError(cookie: bigint, error: number, message: string): void {
		this.hooks.stats.errors++;
		this.send(
			this.structured
				? encodeErrorChunk(NBD_REPLY_FLAG_DONE, cookie, error, message)
				: encodeSimpleReply(error, cookie),
		);
		if (this.draining() && this.inFlight === 0) this.end();
	}

	// --- output ----------------------------------------------------------------------------------

	/**
	 * Writes a message (a header and, for data, the bytes that follow it) without copying. Writes
	 * made in one tick are corked together into one writev. Dropped once the client is gone.
	 */
	private send(a: Buffer, b?: Buffer): void {
		if (this.dead || this.ending) return;
		const s = this.socket;
		if (!this.corked) {
			this.corked = true;
			s.cork();
			process.nextTick(() => {
				this.corked = false;
				s.uncork();
			});
		}
		s.write(a);
		if (b !== undefined) s.write(b);
	}

	/** Graceful close: flush what was written, then close; a client that lingers is cut off. */
	private end(): void {
		if (this.dead || this.ending) return;
		this.ending = true;
		this.state = "ended";
		this.socket.end();
		// keep reading (and dropping) so that the client's close is seen even if we had paused
		this.socket.resume();
		this.lingerTimer = setTimeout(() => this.socket.destroy(), LINGER_MS);
		this.lingerTimer.unref();
	}

	private onClose(): void {
		this.dead = true;
		this.state = "ended";
		this.q.clear();
		clearTimeout(this.handshakeTimer);
		clearTimeout(this.lingerTimer);
		const pending =
			this.inFlight > 0 ? `, ${this.inFlight} replies dropped` : "";
		const err = this.lastSocketError ? ` (${this.lastSocketError})` : "";
		this.hooks.log(
			`${this.peer}: disconnected after ${this.requests} requests${pending}${err}`,
		);
	}
}

/** The export's transmission flags: read-only, so several connections are safe. */
function transmissionFlags(structured: boolean): number {
	return (
		NBD_FLAG_HAS_FLAGS |
		NBD_FLAG_READ_ONLY |
		NBD_FLAG_SEND_FLUSH |
		NBD_FLAG_CAN_MULTI_CONN |
		NBD_FLAG_SEND_CACHE |
		(structured ? NBD_FLAG_SEND_DF : 0)
	);
}

/**
 * The flags a "transmission" connection serves with (simple replies: the kernel's ioctl interface
 * never negotiates structured replies). Whoever sets up the other end tells it these.
 */
export function kernelTransmissionFlags(): number {
	return transmissionFlags(false);
}

function describe(e: unknown): string {
	if (e instanceof Error) return e.message;
	return String(e);
}

/** A failed read's code for logs and error messages: never the error's text (it stays inside). */
function errorCode(e: unknown): string {
	if (isDadiError(e)) return e.code;
	const code = (e as NodeJS.ErrnoException | undefined)?.code;
	return typeof code === "string" && /^[A-Z0-9_]{1,32}$/.test(code)
		? code
		: "INTERNAL";
}

function badFlags(flags: number, what: string): string {
	return `${what} does not accept the command flags 0x${flags.toString(16)}`;
}

function quote(s: string): string {
	return JSON.stringify(s.length > 256 ? `${s.slice(0, 256)}…` : s);
}
