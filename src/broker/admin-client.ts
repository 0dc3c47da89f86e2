/** A client for the broker's admin API (used by `dadi-broker resource|audit` and `dadi-seal seal --broker`). */
import { DadiError } from "../errors.js";
import { openBrokerTransport } from "../kbs/broker-transport.js";
import { printable } from "../printable.js";
import { type HttpTransport, type Method, readBody } from "../registry/http.js";
import { readSecretFile } from "./secret-file.js";

export interface AdminClientOptions {
	/** The admin listener's base URL. */
	url: string;
	token: string;
	caFile?: string;
	timeoutMs?: number;
}

/** An admin token file is one short line. */
const MAX_TOKEN_FILE = 4096;

/**
 * The admin token from --admin-token-file (a file only its owner may read) or
 * $DADI_BROKER_ADMIN_TOKEN.
 */
export async function readAdminToken(
	file: string | undefined,
): Promise<string> {
	if (file) {
		const bytes = await readSecretFile(
			file,
			"admin token file",
			MAX_TOKEN_FILE,
		);
		const t = bytes.toString("utf8").trim();
		bytes.fill(0);
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

/** Audit queries return up to 10,000 records of bounded size. */
const MAX_ANSWER = 64 << 20;

export class AdminClient {
	private constructor(
		private readonly o: AdminClientOptions,
		private readonly base: URL,
		private readonly transport: HttpTransport,
	) {}

	static async open(o: AdminClientOptions): Promise<AdminClient> {
		let base: URL;
		try {
			base = new URL(o.url);
		} catch {
			throw new DadiError(
				"USAGE",
				`"${o.url}": not a URL; expected http[s]://HOST:PORT of the broker's admin listener`,
			);
		}
		const transport = await openBrokerTransport({
			caFile: o.caFile,
			timeoutMs: o.timeoutMs,
			hints: { peer: "broker admin API", caFlag: "--ca-file" },
		});
		return new AdminClient(o, base, transport);
	}

	async call(
		method: Method,
		path: string,
		body?: Buffer | string,
		type?: string,
	): Promise<unknown> {
		const res = await this.transport.send({
			method,
			url: new URL(path, this.base),
			headers: {
				authorization: `Bearer ${this.o.token}`,
				...(type ? { "content-type": type } : {}),
			},
			body: typeof body === "string" ? Buffer.from(body) : body,
			followRedirects: false,
		});
		const what = `broker admin API: ${method} ${path}`;
		const text = (
			await readBody(res, MAX_ANSWER, what, this.transport.hints)
		).toString("utf8");
		let json: unknown;
		try {
			json = JSON.parse(text);
		} catch {
			throw new DadiError(
				"REMOTE_PROTOCOL",
				`${what} answered ${res.status} without JSON`,
			);
		}
		if (res.status >= 200 && res.status < 300) return json;
		const detail =
			typeof (json as { detail?: unknown })?.detail === "string"
				? (json as { detail: string }).detail
				: "";
		const code =
			res.status === 401 || res.status === 403
				? "REMOTE_DENIED"
				: res.status === 404
					? "INPUT_NOT_FOUND"
					: res.status === 409
						? "OUTPUT_EXISTS"
						: res.status === 400
							? "INPUT_INVALID"
							: "REMOTE_PROTOCOL";
		throw new DadiError(
			code,
			`${what}: ${res.status} ${printable(detail.slice(0, 500))}`,
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
		await this.transport.close();
	}
}
