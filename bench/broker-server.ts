/**
 * The server process of the key-broker section (bench/broker-bench.ts starts it as
 * `node dist/bench/broker-server.js --mode broker|echo --dir DIR`), so that the load generator's
 * work stays off the server's core — the same for both modes, so their ratio is fair.
 *
 * - `broker`: a fresh state directory in DIR/state with a fresh master key, then the real broker
 *   (startBroker, as `dadi-broker serve --insecure-dev` runs it) on 127.0.0.1 with the repository's
 *   policies/, rate limiting off, session limits out of the way, an admin listener with a random
 *   token through which one resource is stored: default/image-key/bench, a JWK-like 32-byte key.
 *   Release lines go to stderr as the CLI writes them.
 * - `echo`: a bare node:http server with the broker's listener options that reads every request
 *   body and answers 200 with JSON of about the broker's size for that endpoint: a POST gets its
 *   own body back (auth also gets a session cookie), a GET a fixed 600-byte document.
 *
 * - `--defaults` (broker mode): the limits as `dadi-broker serve` has them by default (rate limit
 *   50/s per client, 10,000 sessions, 256 per client, connection and body limits) — for the
 *   "under attack" runs (bench/broker-attack-bench.ts), where the limits are what is measured.
 *
 * Either way one JSON line goes to stdout — {"url", "pid"} and for the broker the resource's path
 * and the SHA-256 of its value (never the value) — and the process runs until SIGTERM or SIGINT
 * (or its stdin closes: the bench is gone), then closes its listeners and exits 0.
 *
 * `--profile FILE`: SIGUSR2 starts the V8 CPU profiler of the main thread (node:inspector, 250 µs
 * sampling) and the stop signal writes the profile to FILE before the process exits, so the
 * profile covers the timed window only (not start-up and warm-up).
 */
import { createHash, randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import {
	createServer,
	type IncomingMessage,
	type Server,
	type ServerResponse,
} from "node:http";
import { Session } from "node:inspector/promises";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { AdminClient } from "../src/broker/admin-client.js";
import {
	generateMasterKeyText,
	parseMasterKey,
} from "../src/broker/master-key.js";
import { startBroker } from "../src/broker/server.js";
import { initStateDir } from "../src/broker/state-dir.js";
import {
	BENCH_RESOURCE,
	ECHO_GET_BYTES,
	type ServerHello,
} from "./broker-report.js";

const POLICIES = fileURLToPath(new URL("../../policies", import.meta.url));

async function main(): Promise<void> {
	const { values } = parseArgs({
		args: process.argv.slice(2),
		options: {
			mode: { type: "string" },
			dir: { type: "string" },
			profile: { type: "string" },
			defaults: { type: "boolean", default: false },
		},
	});
	const mode = values.mode;
	const dir = values.dir;
	if ((mode !== "broker" && mode !== "echo") || dir === undefined)
		throw new Error("usage: broker-server.js --mode broker|echo --dir DIR");
	const running =
		mode === "broker"
			? await broker(dir, values.defaults === true)
			: await echo();
	const profileFile = values.profile;
	let profiler: Promise<Session> | undefined;
	if (profileFile !== undefined)
		process.on("SIGUSR2", () => {
			profiler ??= (async () => {
				const session = new Session();
				session.connect();
				await session.post("Profiler.enable");
				await session.post("Profiler.setSamplingInterval", { interval: 250 });
				await session.post("Profiler.start");
				return session;
			})();
		});
	process.stdout.write(`${JSON.stringify(running.hello)}\n`);
	let stopping = false;
	const stop = (): void => {
		if (stopping) return;
		stopping = true;
		// Exit even if something hangs.
		setTimeout(() => process.exit(0), 10_000).unref();
		(async () => {
			if (profiler !== undefined && profileFile !== undefined) {
				const session = await profiler;
				const { profile } = await session.post("Profiler.stop");
				await writeFile(profileFile, JSON.stringify(profile));
				session.disconnect();
			}
			await running.close();
		})().then(
			() => process.exit(0),
			(e: unknown) => {
				process.stderr.write(`stopping failed: ${String(e)}\n`);
				process.exit(1);
			},
		);
	};
	process.on("SIGTERM", stop);
	process.on("SIGINT", stop);
	// The bench gone (its end of stdin closed) means stop too.
	process.stdin.on("end", stop);
	process.stdin.on("error", stop);
	process.stdin.resume();
}

interface Running {
	hello: ServerHello;
	close(): Promise<void>;
}

async function broker(dir: string, defaults: boolean): Promise<Running> {
	const stateDir = join(dir, "state");
	const masterKey = parseMasterKey(generateMasterKeyText(), "bench");
	await initStateDir(stateDir, masterKey);
	const token = randomBytes(24).toString("base64url");
	const log = (line: string): void => {
		process.stderr.write(`dadi-broker: ${line}\n`);
	};
	const running = await startBroker({
		host: "127.0.0.1",
		port: 0,
		stateDir,
		masterKey,
		policiesDir: POLICIES,
		insecureDev: true,
		admin: { host: "127.0.0.1", port: 0, token },
		...(defaults
			? {}
			: {
					rateLimit: { rate: 0, burst: 0 },
					maxSessions: 1_000_000,
					maxSessionsPerClient: 1_000_000,
				}),
		log,
	});
	try {
		const value = Buffer.from(
			JSON.stringify({
				kty: "oct",
				alg: "A256GCM",
				k: randomBytes(32).toString("base64url"),
			}),
		);
		const admin = await AdminClient.open({
			url: running.adminUrl as string,
			token,
		});
		try {
			await admin.putResource(BENCH_RESOURCE, value);
		} finally {
			await admin.close();
		}
		return {
			hello: {
				url: running.url,
				pid: process.pid,
				resource: BENCH_RESOURCE,
				valueSha256: createHash("sha256").update(value).digest("hex"),
			},
			close: () => running.close(),
		};
	} catch (e) {
		await running.close();
		throw e;
	}
}

/** A bare node:http server with the broker listener's options (src/broker/server.ts). */
async function echo(): Promise<Running> {
	const getBody = JSON.stringify({
		pad: "x".repeat(ECHO_GET_BYTES - '{"pad":""}'.length),
	});
	// A session cookie of the broker's length; a counter, not random bytes: this server is the
	// framework's ceiling and does no work of its own.
	let sessions = 0;
	const handler = (req: IncomingMessage, res: ServerResponse): void => {
		const chunks: Buffer[] = [];
		req.on("data", (c: Buffer) => chunks.push(c));
		req.on("error", () => res.destroy());
		req.on("end", () => {
			const body =
				req.method === "POST"
					? Buffer.concat(chunks).toString("utf8")
					: getBody;
			const headers: Record<string, string> = {
				"content-type": "application/json",
				"content-length": String(Buffer.byteLength(body)),
				"cache-control": "no-store",
			};
			if (req.url === "/kbs/v0/auth")
				headers["set-cookie"] =
					`kbs-session-id=${(++sessions).toString(16).padStart(32, "0")}; Path=/kbs/v0; Max-Age=300; HttpOnly; SameSite=Strict`;
			res.writeHead(200, headers);
			res.end(body);
		});
	};
	const s: Server = createServer({ maxHeaderSize: 16 << 10 }, handler);
	s.headersTimeout = 10_000;
	s.requestTimeout = 30_000;
	s.keepAliveTimeout = 5_000;
	s.maxConnections = 4096;
	s.on("clientError", (_e, socket) => {
		if (socket.writable)
			socket.end("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n");
		else socket.destroy();
	});
	const port = await new Promise<number>((resolve, reject) => {
		s.once("error", reject);
		s.listen(0, "127.0.0.1", () => resolve((s.address() as AddressInfo).port));
	});
	return {
		hello: { url: `http://127.0.0.1:${port}`, pid: process.pid },
		close: () =>
			new Promise<void>((r) => {
				s.close(() => r());
				s.closeAllConnections();
			}),
	};
}

main().catch((e: unknown) => {
	process.stderr.write(
		`broker-server failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`,
	);
	process.exit(1);
});
