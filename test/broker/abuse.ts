/**
 * Tools for the abuse tests: many loopback source addresses (Linux routes all of 127.0.0.0/8 to
 * loopback, so a client can bind 127.0.0.2…127.0.0.254 and look like another host), idle and slow
 * connections, and a legitimate guest's full exchange timed from a chosen address.
 */
import { readFileSync } from "node:fs";
import { type Agent, request } from "node:http";
import { connect, type Socket } from "node:net";
import { reportDataDigest } from "../../src/kbs/report-data.js";
import { generateEphemeralKey } from "../../src/kbs/tee-pubkey.js";

/** The i-th attacker address (1 → 127.0.0.2 …), never the legitimate client's 127.0.0.1. */
export const attacker = (i: number): string => `127.0.0.${1 + i}`;

export interface Answer {
	status: number;
	headers: Record<string, string | string[] | undefined>;
	text: string;
}

/** One request on a new connection from `from` (no keep-alive), with a deadline. */
export function send(
	url: string,
	o: {
		method?: string;
		path: string;
		headers?: Record<string, string>;
		body?: string | Buffer;
		from?: string;
		timeoutMs?: number;
		/** A keep-alive agent (then `from` is the agent's business). */
		agent?: Agent;
	},
): Promise<Answer> {
	const u = new URL(url);
	return new Promise((resolve, reject) => {
		const req = request(
			{
				host: u.hostname,
				port: u.port,
				method: o.method ?? "GET",
				path: o.path,
				headers: o.agent
					? { ...o.headers }
					: { connection: "close", ...o.headers },
				localAddress: o.from,
				agent: o.agent ?? false,
			},
			(res) => {
				const chunks: Buffer[] = [];
				res.on("data", (c: Buffer) => chunks.push(c));
				res.on("end", () =>
					resolve({
						status: res.statusCode ?? 0,
						headers: res.headers,
						text: Buffer.concat(chunks).toString("utf8"),
					}),
				);
				res.on("error", reject);
			},
		);
		req.setTimeout(o.timeoutMs ?? 15_000, () =>
			req.destroy(
				new Error(`${o.method ?? "GET"} ${o.path}: no answer in time`),
			),
		);
		req.on("error", reject);
		req.end(o.body);
	});
}

const KEY = generateEphemeralKey("ec");

/**
 * A legitimate guest's auth → attest → resource (sample TEE) from `from`; its latency, or the
 * first answer that was not 200.
 */
export async function legitExchange(
	url: string,
	resource: string,
	from = "127.0.0.1",
): Promise<{ ok: boolean; ms: number; failure?: string }> {
	const t0 = performance.now();
	const fail = (what: string, a: Answer) => ({
		ok: false,
		ms: performance.now() - t0,
		failure: `${what}: ${a.status} ${a.text.slice(0, 200)}`,
	});
	const auth = await send(url, {
		method: "POST",
		path: "/kbs/v0/auth",
		headers: { "content-type": "application/json" },
		body: JSON.stringify({
			version: "0.4.0",
			tee: "sample",
			"extra-params": "",
		}),
		from,
	});
	if (auth.status !== 200) return fail("auth", auth);
	const cookie = String(auth.headers["set-cookie"]).split(";")[0] as string;
	const nonce = (JSON.parse(auth.text) as { nonce: string }).nonce;
	const digest = reportDataDigest({ nonce, teePubKey: KEY.jwk });
	const attest = await send(url, {
		method: "POST",
		path: "/kbs/v0/attest",
		headers: { "content-type": "application/json", cookie },
		body: JSON.stringify({
			"init-data": null,
			"runtime-data": { nonce, "tee-pubkey": KEY.jwk },
			"tee-evidence": {
				primary_evidence: {
					svn: "1",
					report_data: digest.toString("base64"),
					init_data: "",
				},
				additional_evidence: "",
			},
		}),
		from,
	});
	if (attest.status !== 200) return fail("attest", attest);
	const res = await send(url, {
		path: `/kbs/v0/resource/${resource}`,
		headers: { cookie },
		from,
	});
	if (res.status !== 200) return fail("resource", res);
	return { ok: true, ms: performance.now() - t0 };
}

/** Opens `n` connections from `from` that send nothing (or `first`), keeping our side open. */
export async function idleConnections(
	port: number,
	n: number,
	from: string,
	first?: string,
): Promise<{ sockets: Socket[]; closedByServer(): number; destroy(): void }> {
	const sockets: Socket[] = [];
	let closed = 0;
	// one at a time: on loopback that is several times faster than many connects in flight
	for (let i = 0; i < n; i++)
		await new Promise<void>((resolve) => {
			const s = connect({
				port,
				host: "127.0.0.1",
				localAddress: from,
				allowHalfOpen: true,
			});
			sockets.push(s);
			s.on("error", () => {});
			s.on("end", () => {
				closed++;
			});
			s.on("close", () => resolve());
			s.on("connect", () => {
				if (first !== undefined) s.write(first);
				resolve();
			});
		});
	return {
		sockets,
		closedByServer: () => closed,
		destroy: () => {
			for (const s of sockets) s.destroy();
		},
	};
}

/** The resident set of a process and its peak so far (/proc/PID/status), bytes. */
export function rss(pid: number): { now: number; peak: number } {
	const text = readFileSync(`/proc/${pid}/status`, "utf8");
	const kb = (name: string) =>
		Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? "0") *
		1024;
	return { now: kb("VmRSS"), peak: kb("VmHWM") };
}

export function median(xs: number[]): number {
	const s = [...xs].sort((a, b) => a - b);
	return s.length === 0 ? Number.NaN : (s[s.length >> 1] as number);
}

export const sleep = (ms: number): Promise<void> =>
	new Promise((r) => setTimeout(r, ms));
