/** A client for the broker's admin API (used by `dadi-broker resource|audit` and `dadi-seal seal --broker`). */
import { readFile } from "node:fs/promises";
import { Agent, request } from "undici";
import { DadiError, fromSystemError } from "../errors.js";

export interface AdminClientOptions {
	/** The admin listener's base URL. */
	url: string;
	token: string;
	caFile?: string;
	timeoutMs?: number;
}

/** The admin token from --admin-token-file or $DADI_BROKER_ADMIN_TOKEN. */
export async function readAdminToken(
	file: string | undefined,
): Promise<string> {
	if (file) {
		const text = await readFile(file, "utf8").catch((e) => {
			throw fromSystemError(e, file, "reading the admin token file");
		});
		const t = text.trim();
		if (t.length < 16 || /\s/.test(t))
			throw new DadiError(
				"KEY_INVALID",
				`${file}: not an admin token (one line of at least 16 characters, no spaces)`,
			);
		return t;
	}
	const env = process.env.DADI_BROKER_ADMIN_TOKEN?.trim();
	if (env) return env;
	throw new DadiError(
		"USAGE",
		"the admin API needs a token: --admin-token-file FILE or DADI_BROKER_ADMIN_TOKEN",
	);
}

export class AdminClient {
	readonly #agent: Agent;
	readonly #base: URL;

	private constructor(
		private readonly o: AdminClientOptions,
		ca?: Buffer,
	) {
		try {
			this.#base = new URL(o.url);
		} catch {
			throw new DadiError(
				"USAGE",
				`"${o.url}": not a URL; expected http[s]://HOST:PORT of the broker's admin listener`,
			);
		}
		const timeout = o.timeoutMs ?? 30_000;
		this.#agent = new Agent({
			connect: ca ? { ca, timeout } : { timeout },
			headersTimeout: timeout,
			bodyTimeout: timeout,
		});
	}

	static async open(o: AdminClientOptions): Promise<AdminClient> {
		const ca = o.caFile
			? await readFile(o.caFile).catch((e) => {
					throw fromSystemError(e, o.caFile as string, "reading the CA file");
				})
			: undefined;
		return new AdminClient(o, ca);
	}

	async call(
		method: string,
		path: string,
		body?: Buffer | string,
		type?: string,
	): Promise<unknown> {
		let res: Awaited<ReturnType<typeof request>>;
		try {
			res = await request(new URL(path, this.#base).toString(), {
				method: method as "GET",
				dispatcher: this.#agent,
				headers: {
					authorization: `Bearer ${this.o.token}`,
					...(type ? { "content-type": type } : {}),
				},
				body,
			});
		} catch (e) {
			throw new DadiError(
				"NETWORK",
				`broker admin API ${this.#base.origin}: ${(e as Error).message}`,
				{ cause: e },
			);
		}
		const text = await res.body.text();
		let json: unknown;
		try {
			json = JSON.parse(text);
		} catch {
			throw new DadiError(
				"REMOTE_PROTOCOL",
				`broker admin API: ${method} ${path} answered ${res.statusCode} without JSON`,
			);
		}
		if (res.statusCode >= 200 && res.statusCode < 300) return json;
		const detail =
			typeof (json as { detail?: unknown })?.detail === "string"
				? (json as { detail: string }).detail
				: "";
		const code =
			res.statusCode === 401 || res.statusCode === 403
				? "REMOTE_DENIED"
				: res.statusCode === 404
					? "INPUT_NOT_FOUND"
					: res.statusCode === 409
						? "OUTPUT_EXISTS"
						: res.statusCode === 400
							? "INPUT_INVALID"
							: "REMOTE_PROTOCOL";
		throw new DadiError(
			code,
			`broker admin API: ${method} ${path}: ${res.statusCode} ${detail.slice(0, 500)}`,
		);
	}

	putResource(path: string, value: Buffer): Promise<unknown> {
		return this.call(
			"PUT",
			`/admin/v0/resource/${path}`,
			value,
			"application/octet-stream",
		);
	}

	async close(): Promise<void> {
		await this.#agent.close();
	}
}
