/**
 * A minimal NBD client: fixed newstyle handshake, NBD_OPT_GO for one export, then READ requests
 * with simple replies, one at a time. Enough for the demo's userspace read when no kernel NBD
 * driver or FUSE is available, and for checks; not a performance client (use nbdcopy).
 */
import { connect, type Socket } from "node:net";
import { DadiError } from "../../errors.js";

import {
	NBD_CMD_DISC as CMD_DISC,
	NBD_CMD_READ as CMD_READ,
	NBD_OPTS_MAGIC as IHAVEOPT,
	NBD_INFO_EXPORT as INFO_EXPORT,
	NBD_INIT_MAGIC as INIT,
	NBD_OPT_GO as OPT_GO,
	NBD_OPT_REPLY_MAGIC as OPT_REPLY,
	NBD_REP_ACK as REP_ACK,
	NBD_REP_INFO as REP_INFO,
	NBD_REQUEST_MAGIC as REQUEST,
	NBD_SIMPLE_REPLY_MAGIC as SIMPLE_REPLY,
} from "./protocol.js";

export class NbdClient {
	#buf = Buffer.alloc(0);
	#waiting: (() => void) | undefined;
	#ended: Error | undefined;
	#handle = 0n;
	size = 0;
	flags = 0;

	private constructor(private readonly socket: Socket) {
		socket.on("data", (d: Buffer) => {
			this.#buf = Buffer.concat([this.#buf, d]);
			this.#waiting?.();
		});
		const end = (e?: Error) => {
			this.#ended ??= e ?? new Error("connection closed");
			this.#waiting?.();
		};
		socket.on("error", end);
		socket.on("close", () => end());
	}

	/** Connects to a unix socket path or host:port and opens `exportName`. */
	static async open(
		where: { unix: string } | { host: string; port: number },
		exportName = "",
	): Promise<NbdClient> {
		const socket =
			"unix" in where ? connect(where.unix) : connect(where.port, where.host);
		await new Promise<void>((resolve, reject) => {
			socket.once("connect", resolve);
			socket.once("error", reject);
		});
		const c = new NbdClient(socket);
		try {
			await c.#handshake(exportName);
		} catch (e) {
			socket.destroy();
			throw e;
		}
		return c;
	}

	async #take(n: number): Promise<Buffer> {
		while (this.#buf.length < n) {
			if (this.#ended)
				throw new DadiError("NETWORK", `NBD: ${this.#ended.message}`);
			await new Promise<void>((r) => {
				this.#waiting = r;
			});
			this.#waiting = undefined;
		}
		const out = this.#buf.subarray(0, n);
		this.#buf = this.#buf.subarray(n);
		return out;
	}

	async #handshake(name: string): Promise<void> {
		const hello = await this.#take(18);
		if (
			hello.readBigUInt64BE(0) !== INIT ||
			hello.readBigUInt64BE(8) !== IHAVEOPT
		)
			throw new DadiError("REMOTE_PROTOCOL", "NBD: not a newstyle NBD server");
		this.socket.write(Buffer.from([0, 0, 0, 1])); // client flags: fixed newstyle
		const n = Buffer.from(name, "utf8");
		const opt = Buffer.alloc(16 + 4 + n.length + 2);
		opt.writeBigUInt64BE(IHAVEOPT, 0);
		opt.writeUInt32BE(OPT_GO, 8);
		opt.writeUInt32BE(4 + n.length + 2, 12);
		opt.writeUInt32BE(n.length, 16);
		n.copy(opt, 20);
		opt.writeUInt16BE(0, 20 + n.length); // no information requests
		this.socket.write(opt);
		for (;;) {
			const h = await this.#take(20);
			if (h.readBigUInt64BE(0) !== OPT_REPLY)
				throw new DadiError("REMOTE_PROTOCOL", "NBD: bad option reply magic");
			const type = h.readUInt32BE(12);
			const len = h.readUInt32BE(16);
			const data = await this.#take(len);
			if (type === REP_ACK) return;
			if (
				type === REP_INFO &&
				data.length >= 12 &&
				data.readUInt16BE(0) === INFO_EXPORT
			) {
				this.size = Number(data.readBigUInt64BE(2));
				this.flags = data.readUInt16BE(10);
			} else if (type >= 0x80000000)
				throw new DadiError(
					"REMOTE_PROTOCOL",
					`NBD: the server refused export "${name}" (error ${type - 0x80000000})`,
				);
		}
	}

	/** `length` bytes at `offset`; an NBD error reply is an IO error with its errno. */
	async read(offset: number, length: number): Promise<Buffer> {
		const req = Buffer.alloc(28);
		req.writeUInt32BE(REQUEST, 0);
		req.writeUInt16BE(0, 4);
		req.writeUInt16BE(CMD_READ, 6);
		const handle = ++this.#handle;
		req.writeBigUInt64BE(handle, 8);
		req.writeBigUInt64BE(BigInt(offset), 16);
		req.writeUInt32BE(length, 24);
		this.socket.write(req);
		const h = await this.#take(16);
		if (h.readUInt32BE(0) !== SIMPLE_REPLY || h.readBigUInt64BE(8) !== handle)
			throw new DadiError("REMOTE_PROTOCOL", "NBD: unexpected reply");
		const errno = h.readUInt32BE(4);
		if (errno !== 0)
			throw new DadiError(
				"IO",
				`NBD: read of ${length} bytes at ${offset} failed (errno ${errno})`,
			);
		return Buffer.from(await this.#take(length));
	}

	/** Sends NBD_CMD_DISC and closes. */
	async close(): Promise<void> {
		const req = Buffer.alloc(28);
		req.writeUInt32BE(REQUEST, 0);
		req.writeUInt16BE(CMD_DISC, 6);
		this.socket.end(req);
		await new Promise<void>((r) => {
			if (this.socket.closed) r();
			else this.socket.once("close", () => r());
		});
	}
}
