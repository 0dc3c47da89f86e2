/**
 * HTTP to a key broker (the KBS listener or the admin API): the registry client's transport
 * (undici keep-alive, a private CA added to the system roots, proxies from the environment,
 * timeouts, failures mapped to NETWORK) with the broker's wording in its errors.
 */
import { readFile } from "node:fs/promises";
import { fromSystemError } from "../errors.js";
import { type ErrorHints, HttpTransport } from "../registry/http.js";

export const BROKER_HINTS: ErrorHints = {
	peer: "key broker",
	caFlag: "--broker-ca",
};

export async function openBrokerTransport(o: {
	caFile?: string;
	timeoutMs?: number;
	hints?: ErrorHints;
}): Promise<HttpTransport> {
	const ca = o.caFile
		? await readFile(o.caFile, "utf8").catch((e) => {
				throw fromSystemError(
					e,
					o.caFile as string,
					"reading the broker CA file",
				);
			})
		: undefined;
	const t = o.timeoutMs ?? 30_000;
	return new HttpTransport({
		ca: ca ? [ca] : undefined,
		timeouts: { connectMs: t, headersMs: t, bodyMs: t },
		connections: 4,
		hints: o.hints ?? BROKER_HINTS,
	});
}
