/**
 * An NBD server (fixed newstyle, read-only) for one export from a BlockSource, on a unix socket
 * and/or TCP. See connection.ts for the protocol and protocol.ts for the wire format.
 *
 * Structured replies (NBD_OPT_STRUCTURED_REPLY) are implemented and offered by default: a failed
 * read then reaches the client as an error chunk with a message naming the error's code, a large
 * read goes out in chunks as its pieces are read (the client keeps the pieces that did read), and
 * NBD_CMD_FLAG_DF is honoured. Clients that do not ask for them get simple replies.
 */
import { chmod, lstat, unlink } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import { DadiError } from "../../errors.js";
import type { BlockSource } from "../block-source.js";
import {
	type ConnectionHooks,
	type ExportConfig,
	NbdConnection,
	type NbdStats,
} from "./connection.js";
import { encodeString } from "./protocol.js";

export type { NbdStats } from "./connection.js";
export { kernelTransmissionFlags } from "./connection.js";

export interface NbdServerOptions {
	source: BlockSource;
	/** The export's name; default "dadi". The empty name (the default export) is accepted too. */
	exportName?: string;
	/** Sent as NBD_INFO_DESCRIPTION and in NBD_OPT_LIST. */
	description?: string;
	/** NBD_INFO_BLOCK_SIZE: minimum (power of 2, <= 64 KiB; default 1). */
	minBlock?: number;
	/** NBD_INFO_BLOCK_SIZE: preferred (power of 2, >= max(minBlock, 512); default 4096). */
	preferredBlock?: number;
	/** NBD_INFO_BLOCK_SIZE: maximum payload, and the longest read served (default 32 MiB). */
	maxBlock?: number;
	/** Requests pending per connection before the server stops reading from it (default 64). */
	maxInFlight?: number;
	/** Read bytes pending (or replies unwritten) per connection before it stops reading (default 128 MiB). */
	maxInFlightBytes?: number;
	/** Connections at once; more are closed on arrival (default 64). */
	maxClients?: number;
	/** Offer NBD_OPT_STRUCTURED_REPLY (default true). */
	structuredReplies?: boolean;
	/** Structured reads longer than this go out in chunks of this size (default 1 MiB). */
	replyChunk?: number;
	/** A client that has not finished the handshake by then is dropped (default 30 s). */
	handshakeTimeoutMs?: number;
	/** One line per notable event (connections, protocol errors, failed reads: codes, never data). */
	log?: (line: string) => void;
	/** Called once per read request: its length, its time and whether all of it was served. */
	onRead?: (bytes: number, ms: number, ok: boolean) => void;
}

export type NbdListenAddress =
	| { unix: string }
	| { host: string; port: number };

interface Listener {
	server: Server;
	unix?: { path: string; ino: number };
}

const MiB = 1024 * 1024;

export class NbdServer {
	readonly stats: NbdStats = {
		connections: 0,
		requests: 0,
		bytesRead: 0,
		errors: 0,
	};

	private readonly cfg: ExportConfig;
	private readonly maxClients: number;
	private readonly hooks: ConnectionHooks;
	private readonly log: (line: string) => void;
	private readonly listeners: Listener[] = [];
	private readonly connections = new Set<NbdConnection>();
	private closing: Promise<void> | undefined;
	private nextId = 1;

	constructor(o: NbdServerOptions) {
		const name = o.exportName ?? "dadi";
		encodeString(name, "exportName");
		if (o.description !== undefined) encodeString(o.description, "description");
		const size = o.source.size;
		if (!Number.isSafeInteger(size) || size < 0)
			throw new DadiError(
				"USAGE",
				`the block source size ${size} is not valid`,
			);
		const minBlock = o.minBlock ?? 1;
		const preferredBlock = o.preferredBlock ?? Math.max(4096, minBlock);
		const maxBlock = o.maxBlock ?? Math.max(32 * MiB, preferredBlock);
		if (!isPowerOfTwo(minBlock) || minBlock > 65536)
			usage("minBlock must be a power of 2 no larger than 65536");
		if (
			!isPowerOfTwo(preferredBlock) ||
			preferredBlock < Math.max(minBlock, 512)
		)
			usage("preferredBlock must be a power of 2, at least minBlock and 512");
		if (
			!Number.isInteger(maxBlock) ||
			maxBlock < preferredBlock ||
			maxBlock > 0xffffffff ||
			maxBlock % minBlock !== 0
		)
			usage(
				"maxBlock must be a multiple of minBlock, at least preferredBlock and below 4 GiB",
			);
		const replyChunk = o.replyChunk ?? MiB;
		if (!isPowerOfTwo(replyChunk) || replyChunk < Math.max(minBlock, 512))
			usage("replyChunk must be a power of 2, at least minBlock and 512");
		this.cfg = {
			source: o.source,
			name,
			description: o.description,
			minBlock,
			preferredBlock,
			maxBlock,
			maxInFlight: positive(o.maxInFlight ?? 64, "maxInFlight"),
			maxInFlightBytes: positive(
				o.maxInFlightBytes ?? 128 * MiB,
				"maxInFlightBytes",
			),
			structuredReplies: o.structuredReplies ?? true,
			replyChunk,
			handshakeTimeoutMs: positive(
				o.handshakeTimeoutMs ?? 30_000,
				"handshakeTimeoutMs",
			),
		};
		this.maxClients = positive(o.maxClients ?? 64, "maxClients");
		const log = o.log ?? (() => {});
		this.log = (line) => {
			try {
				log(line);
			} catch {
				// a logger must not take the server down
			}
		};
		this.hooks = {
			stats: this.stats,
			log: this.log,
			onRead: o.onRead,
			shuttingDown: () => this.closing !== undefined,
		};
	}

	/**
	 * Listens on a unix socket (created 0600; a stale socket file left by a dead server is replaced,
	 * a live one is an OUTPUT_EXISTS error) or a TCP address (port 0: any free port). May be called
	 * more than once to listen on several addresses. Resolves to an NBD URI for the export.
	 */
	async listen(where: NbdListenAddress): Promise<{ address: string }> {
		if (this.closing)
			throw new DadiError("USAGE", "the NBD server has been closed");
		// half-open: a client FIN is handled by the connection (a hard disconnect), not by Node
		const server = createServer({ allowHalfOpen: true });
		server.on("connection", (s) => this.accept(s));
		server.on("error", (e) => this.log(`listener error: ${e.message}`));
		if ("unix" in where) {
			const path = where.unix;
			await removeStaleSocket(path);
			await listenOn(server, path, () => {
				// the socket must never be connectable by others, not even between bind and chmod
				let old: number | undefined;
				try {
					old = process.umask(0o177);
				} catch {
					// worker threads cannot change the umask; chmod below still applies
				}
				return () => {
					if (old !== undefined) process.umask(old);
				};
			});
			try {
				await chmod(path, 0o600);
				const st = await lstat(path);
				this.listeners.push({ server, unix: { path, ino: st.ino } });
			} catch (e) {
				server.close();
				throw new DadiError("IO", `${path}: cannot secure the socket`, {
					cause: e,
				});
			}
			await this.refuseIfClosing(server);
			this.log(`listening on unix socket ${path}`);
			return {
				address: `nbd+unix:///${encodeURIComponent(this.cfg.name)}?socket=${encodeURI(path)}`,
			};
		}
		await listenOn(server, { host: where.host, port: where.port });
		this.listeners.push({ server });
		await this.refuseIfClosing(server);
		const a = server.address();
		const port = typeof a === "object" && a ? a.port : where.port;
		const host = where.host.includes(":") ? `[${where.host}]` : where.host;
		this.log(`listening on tcp ${host}:${port}`);
		return {
			address: `nbd://${host}:${port}/${encodeURIComponent(this.cfg.name)}`,
		};
	}

	/**
	 * Graceful shutdown: stops accepting; clients still negotiating are dropped; in-flight requests
	 * are answered (later ones get NBD_ESHUTDOWN), then each connection is closed. After
	 * `timeoutMs` the remaining connections are cut. Unix socket files are removed.
	 */
	close(timeoutMs = 5000): Promise<void> {
		this.closing ??= this.shutdown(timeoutMs);
		return this.closing;
	}

	private async shutdown(timeoutMs: number): Promise<void> {
		const stopped = this.listeners.map(
			(l) =>
				new Promise<void>((resolve) => {
					l.server.close(() => resolve());
				}),
		);
		const conns = [...this.connections];
		for (const c of conns) c.shutdown();
		let timer: NodeJS.Timeout | undefined;
		const timedOut = await Promise.race([
			Promise.all(conns.map((c) => c.closed)).then(() => false),
			new Promise<boolean>((resolve) => {
				timer = setTimeout(() => resolve(true), timeoutMs);
			}),
		]);
		clearTimeout(timer);
		if (timedOut) {
			this.log(
				`close: ${this.connections.size} connections still busy after ${timeoutMs} ms; cutting them`,
			);
			for (const c of this.connections) c.destroy();
			await Promise.all(conns.map((c) => c.closed));
		}
		await Promise.all(stopped);
		for (const l of this.listeners)
			if (l.unix) await removeOwnSocket(l.unix.path, l.unix.ino);
		this.log("server closed");
	}

	/**
	 * Serves a socket that is already in the transmission phase — no handshake, simple replies,
	 * the flags of `kernelTransmissionFlags()`: the far end is the kernel's nbd driver, configured
	 * through its ioctl interface (src/guest/nbd-device.ts), which skips the handshake because
	 * userspace tells the driver the size and flags itself. Counts as one of the server's
	 * connections (close() drains it like the others). Resolves the connection's `closed`.
	 */
	serveTransmission(
		socket: Socket,
		peer = "kernel",
	): { closed: Promise<void> } {
		if (this.closing) {
			socket.destroy();
			throw new DadiError("USAGE", "the NBD server has been closed");
		}
		const conn = this.track(socket, peer, "transmission");
		return { closed: conn.closed };
	}

	/** close() ran while listen() was binding: the new listener is closed too. */
	private async refuseIfClosing(server: Server): Promise<void> {
		if (!this.closing) return;
		await new Promise<void>((resolve) => server.close(() => resolve()));
		throw new DadiError("USAGE", "the NBD server was closed while listening");
	}

	private accept(socket: Socket): void {
		const id = this.nextId++;
		const peer =
			socket.remoteAddress !== undefined
				? `tcp ${socket.remoteAddress}:${socket.remotePort} #${id}`
				: `unix #${id}`;
		if (this.closing) {
			socket.destroy();
			return;
		}
		if (this.connections.size >= this.maxClients) {
			this.stats.errors++;
			this.log(
				`${peer}: refused: ${this.maxClients} clients already connected`,
			);
			socket.destroy();
			return;
		}
		this.track(socket, peer, "handshake");
	}

	private track(
		socket: Socket,
		peer: string,
		mode: "handshake" | "transmission",
	): NbdConnection {
		socket.on("error", () => {}); // reported by the connection; never an uncaught error
		const conn = new NbdConnection(socket, this.cfg, this.hooks, peer, mode);
		this.connections.add(conn);
		this.stats.connections++;
		this.log(`${peer}: connected`);
		void conn.closed.then(() => {
			this.connections.delete(conn);
			this.stats.connections--;
		});
		return conn;
	}
}

function usage(message: string): never {
	throw new DadiError("USAGE", `NBD server: ${message}`);
}

function isPowerOfTwo(n: number): boolean {
	return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

function positive(n: number, what: string): number {
	if (!Number.isSafeInteger(n) || n < 1)
		usage(`${what} must be a positive integer`);
	return n;
}

/** server.listen as a promise; `around` runs just before and its result just after the bind. */
function listenOn(
	server: Server,
	where: string | { host: string; port: number },
	around?: () => () => void,
): Promise<void> {
	return new Promise((resolve, reject) => {
		const onError = (e: NodeJS.ErrnoException) => {
			const what =
				typeof where === "string" ? where : `${where.host}:${where.port}`;
			reject(
				e.code === "EADDRINUSE"
					? new DadiError("OUTPUT_EXISTS", `${what}: address already in use`)
					: new DadiError(
							"IO",
							`${what}: cannot listen (${e.code ?? e.message})`,
							{
								cause: e,
							},
						),
			);
		};
		server.once("error", onError);
		server.once("listening", () => {
			server.off("error", onError);
			resolve();
		});
		const restore = around?.();
		try {
			if (typeof where === "string") server.listen(where);
			else server.listen(where.port, where.host);
		} finally {
			restore?.();
		}
	});
}

/**
 * A unix socket path that exists is removed only if it is a socket nobody listens on (left by a
 * server that died); anything else there is an error.
 */
async function removeStaleSocket(path: string): Promise<void> {
	let st: Awaited<ReturnType<typeof lstat>>;
	try {
		st = await lstat(path);
	} catch (e) {
		if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
		throw new DadiError("IO", `${path}: cannot check the socket path`, {
			cause: e,
		});
	}
	if (!st.isSocket())
		throw new DadiError(
			"OUTPUT_EXISTS",
			`${path}: exists and is not a socket; refusing to replace it`,
		);
	const live = await new Promise<boolean>((resolve) => {
		const s = connect(path);
		s.once("connect", () => {
			s.destroy();
			resolve(true);
		});
		s.once("error", (e: NodeJS.ErrnoException) =>
			resolve(e.code !== "ECONNREFUSED" && e.code !== "ENOENT"),
		);
	});
	if (live)
		throw new DadiError(
			"OUTPUT_EXISTS",
			`${path}: a server is already listening on this socket`,
		);
	await unlink(path).catch((e: NodeJS.ErrnoException) => {
		if (e.code !== "ENOENT")
			throw new DadiError("IO", `${path}: cannot remove the stale socket`, {
				cause: e,
			});
	});
}

/** Removes the socket file we created (if it is still ours: same inode). */
async function removeOwnSocket(path: string, ino: number): Promise<void> {
	try {
		const st = await lstat(path);
		if (st.isSocket() && st.ino === ino) await unlink(path);
	} catch {
		// already gone (Node removes it when the listener closes)
	}
}
