/**
 * Hands the broker's per-release public-key work to worker threads (src/broker/crypto-worker.ts),
 * round-robin, so a second core does it while the event loop serves HTTP. Without workers (none
 * asked for, one core, or running from TypeScript sources where the compiled worker does not
 * exist) the same functions run inline. A worker that dies is not replaced: its pending calls
 * fail and later calls run inline.
 */
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { DadiError, type ErrorCode } from "../errors.js";
import { encryptToTeeKey, type FlattenedJwe } from "../kbs/jwe.js";
import type { ParsedTeePubKey } from "../kbs/tee-pubkey.js";

interface Pending {
	resolve: (v: unknown) => void;
	reject: (e: unknown) => void;
}

export class CryptoOffload {
	readonly #workers: Worker[] = [];
	readonly #pending = new Map<number, Pending>();
	#next = 0;
	#id = 0;

	private constructor(
		pkcs8: Buffer,
		count: number,
		file: string,
		private readonly inlineSign: (input: string) => Promise<string>,
	) {
		for (let i = 0; i < count; i++) {
			const w = new Worker(file, {
				workerData: { pkcs8: new Uint8Array(pkcs8) },
				execArgv: [],
			});
			w.unref();
			w.on(
				"message",
				(m: {
					id: number;
					ok: boolean;
					value?: unknown;
					error?: { code?: string; message: string };
				}) => {
					const p = this.#pending.get(m.id);
					if (!p) return;
					this.#pending.delete(m.id);
					if (m.ok) p.resolve(m.value);
					else
						p.reject(
							new DadiError(
								(m.error?.code as ErrorCode) ?? "INTERNAL",
								m.error?.message ?? "crypto worker failed",
							),
						);
				},
			);
			const gone = () => {
				const at = this.#workers.indexOf(w);
				if (at >= 0) this.#workers.splice(at, 1);
				for (const [id, p] of this.#pending) {
					this.#pending.delete(id);
					p.reject(new DadiError("INTERNAL", "a crypto worker stopped"));
				}
			};
			w.on("error", gone);
			w.on("exit", gone);
			this.#workers.push(w);
		}
	}

	/** `count` workers (0: everything inline). */
	static start(
		pkcs8: Buffer,
		count: number,
		inlineSign: (input: string) => Promise<string>,
	): CryptoOffload {
		const file = fileURLToPath(new URL("./crypto-worker.js", import.meta.url));
		return new CryptoOffload(
			pkcs8,
			existsSync(file) ? count : 0,
			file,
			inlineSign,
		);
	}

	get workers(): number {
		return this.#workers.length;
	}

	#call(msg: Record<string, unknown>): Promise<unknown> | undefined {
		const w = this.#workers[this.#next++ % Math.max(1, this.#workers.length)];
		if (!w) return undefined;
		const id = ++this.#id;
		return new Promise((resolve, reject) => {
			this.#pending.set(id, { resolve, reject });
			w.postMessage({ id, ...msg });
		});
	}

	jwe(plaintext: Buffer, tee: ParsedTeePubKey): Promise<FlattenedJwe> {
		return (this.#call({
			op: "jwe",
			plaintext: new Uint8Array(plaintext),
			jwk: tee.jwk,
		}) ??
			Promise.resolve().then(() =>
				encryptToTeeKey(plaintext, tee),
			)) as Promise<FlattenedJwe>;
	}

	/** The base64url ES256 signature of a JWT's signing input. */
	sign(input: string): Promise<string> {
		return (this.#call({ op: "sign", input }) ??
			this.inlineSign(input)) as Promise<string>;
	}

	async close(): Promise<void> {
		await Promise.all(this.#workers.map((w) => w.terminate()));
	}
}
