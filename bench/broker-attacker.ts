/**
 * The attacker process of the "under attack" runs (bench/broker-attack-bench.ts starts it as
 * `node dist/bench/broker-attacker.js --attack NAME --url URL`), in its own process so that its
 * work is not the legitimate client's. Each attack is what the abuse review did, from loopback
 * addresses other than the legitimate clients' (Linux routes all of 127.0.0.0/8 to loopback):
 *
 * - `idle`: 4,200 connections from 127.0.0.2 that send nothing, re-opened as the broker closes them;
 * - `bodies`: 8 parallel POST /kbs/v0/attest of 1 MiB of (deeply nested) JSON without a session
 *   cookie, from 127.0.0.2, about 9 requests a second in all (under the rate limit);
 * - `sessions`: POST /kbs/v0/auth as fast as each of 40 addresses (127.0.0.2–127.0.0.41) may — it
 *   waits out a 429's Retry-After, and retries a 503 after 100 ms — to fill the session table;
 * - `slow`: from 4 addresses (127.0.0.2–5), up to 128 connections each at a time, each a TDX
 *   session's attest declaring 1 MiB, of which 1 MiB − 1 byte is sent before it stalls; re-opened
 *   as the broker closes them.
 *
 * It runs until SIGTERM (or its stdin closes), then prints one JSON line of what it did and exits.
 */
import { Agent, request } from "node:http";
import { connect, type Socket } from "node:net";
import { parseArgs } from "node:util";

export type AttackName = "idle" | "bodies" | "sessions" | "slow";

/** What the attacker did, printed at the end. */
export interface AttackStats {
	attack: AttackName;
	/** Requests sent (HTTP) or connections opened (idle). */
	sent: number;
	/** Answers by status ("net" for connection errors). */
	answers: Record<string, number>;
	/** Connections the broker closed on us. */
	closedByBroker: number;
	/** Most connections held at once. */
	maxHeld: number;
}

const ADDRESS = (i: number) => `127.0.0.${2 + i}`;
let stop = false;
const stats: AttackStats = {
	attack: "idle",
	sent: 0,
	answers: {},
	closedByBroker: 0,
	maxHeld: 0,
};
const count = (k: string | number) => {
	stats.answers[k] = (stats.answers[k] ?? 0) + 1;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Answer {
	status: number;
	headers: Record<string, string | string[] | undefined>;
	text: string;
}

function send(
	url: URL,
	agent: Agent,
	method: string,
	path: string,
	headers: Record<string, string>,
	body?: string | Buffer,
): Promise<Answer | undefined> {
	stats.sent++;
	return new Promise((resolve) => {
		const req = request(
			{
				host: url.hostname,
				port: url.port,
				method,
				path,
				headers,
				agent,
			},
			(res) => {
				const chunks: Buffer[] = [];
				res.on("data", (c: Buffer) => chunks.push(c));
				res.on("end", () => {
					count(res.statusCode ?? 0);
					resolve({
						status: res.statusCode ?? 0,
						headers: res.headers,
						text: Buffer.concat(chunks).toString("utf8"),
					});
				});
				res.on("error", () => resolve(undefined));
			},
		);
		req.setTimeout(30_000, () => req.destroy());
		req.on("error", () => {
			count("net");
			resolve(undefined);
		});
		req.end(body);
	});
}

async function idle(url: URL): Promise<void> {
	let held = 0;
	while (!stop) {
		if (held >= 4200) {
			await sleep(50);
			continue;
		}
		await new Promise<void>((resolve) => {
			const s = connect({
				port: Number(url.port),
				host: url.hostname,
				localAddress: ADDRESS(0),
				allowHalfOpen: true,
			});
			stats.sent++;
			let counted = false;
			const gone = () => {
				if (counted) {
					held--;
					stats.closedByBroker++;
					counted = false;
				}
				s.destroy();
			};
			s.on("error", () => {
				count("net");
				gone();
				resolve();
			});
			s.on("end", gone);
			s.on("close", () => {
				gone();
				resolve();
			});
			s.on("connect", () => {
				counted = true;
				held++;
				stats.maxHeld = Math.max(stats.maxHeld, held);
				resolve();
			});
		});
	}
}

async function bodies(url: URL): Promise<void> {
	const agent = new Agent({ keepAlive: true, localAddress: ADDRESS(0) });
	const body = `${"[".repeat(1 << 19)}${"]".repeat(1 << 19)}`;
	await Promise.all(
		Array.from({ length: 8 }, async (_, i) => {
			await sleep(i * 110);
			while (!stop) {
				const t0 = performance.now();
				await send(
					url,
					agent,
					"POST",
					"/kbs/v0/attest",
					{ "content-type": "application/json" },
					body,
				);
				await sleep(Math.max(0, 880 - (performance.now() - t0)));
			}
		}),
	);
	agent.destroy();
}

const AUTH = (tee: string) =>
	JSON.stringify({ version: "0.4.0", tee, "extra-params": "" });

async function sessions(url: URL): Promise<void> {
	await Promise.all(
		Array.from({ length: 40 }, async (_, i) => {
			const agent = new Agent({ keepAlive: true, localAddress: ADDRESS(i) });
			while (!stop) {
				const r = await send(
					url,
					agent,
					"POST",
					"/kbs/v0/auth",
					{ "content-type": "application/json" },
					AUTH("sample"),
				);
				if (!r) await sleep(100);
				else if (r.status === 429)
					await sleep(1000 * Number(r.headers["retry-after"] ?? 1));
				else if (r.status !== 200) await sleep(100);
			}
			agent.destroy();
		}),
	);
}

async function slow(url: URL): Promise<void> {
	const filler = Buffer.alloc((1 << 20) - 1, 0x20);
	let held = 0;
	const one = async (from: string, agent: Agent): Promise<void> => {
		const auth = await send(
			url,
			agent,
			"POST",
			"/kbs/v0/auth",
			{ "content-type": "application/json" },
			AUTH("tdx"),
		);
		if (auth?.status !== 200) {
			await sleep(auth?.status === 429 ? 1000 : 100);
			return;
		}
		const cookie = String(auth.headers["set-cookie"]).split(";")[0];
		await new Promise<void>((resolve) => {
			const s: Socket = connect({
				port: Number(url.port),
				host: url.hostname,
				localAddress: from,
			});
			stats.sent++;
			let answered = "";
			s.on("data", (d: Buffer) => {
				answered ||= d.toString("latin1").slice(9, 12);
			});
			s.on("error", () => {});
			s.on("close", () => {
				held--;
				stats.closedByBroker++;
				if (answered) count(answered);
				resolve();
			});
			s.on("connect", () => {
				held++;
				stats.maxHeld = Math.max(stats.maxHeld, held);
				s.write(
					`POST /kbs/v0/attest HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncookie: ${cookie}\r\ncontent-length: ${1 << 20}\r\n\r\n`,
				);
				s.write(filler);
			});
		});
	};
	await Promise.all(
		Array.from({ length: 4 }, async (_, a) => {
			const from = ADDRESS(a);
			const agent = new Agent({ keepAlive: false, localAddress: from });
			await Promise.all(
				Array.from({ length: 128 }, async () => {
					while (!stop) await one(from, agent);
				}),
			);
		}),
	);
}

async function main(): Promise<void> {
	const { values } = parseArgs({
		args: process.argv.slice(2),
		options: { attack: { type: "string" }, url: { type: "string" } },
	});
	const attack = values.attack as AttackName;
	if (
		!["idle", "bodies", "sessions", "slow"].includes(attack) ||
		values.url === undefined
	)
		throw new Error(
			"usage: broker-attacker.js --attack idle|bodies|sessions|slow --url URL",
		);
	stats.attack = attack;
	const url = new URL(values.url);
	const finish = (): void => {
		if (stop) return;
		stop = true;
		process.stdout.write(`${JSON.stringify(stats)}\n`);
		// connections left open are the point of some attacks: do not wait for them
		setTimeout(() => process.exit(0), 200).unref();
	};
	process.on("SIGTERM", finish);
	process.on("SIGINT", finish);
	process.stdin.on("end", finish);
	process.stdin.on("error", finish);
	process.stdin.resume();
	const run = { idle, bodies, sessions, slow }[attack];
	await run(url);
}

main().catch((e: unknown) => {
	process.stderr.write(
		`broker-attacker failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`,
	);
	process.exit(1);
});
