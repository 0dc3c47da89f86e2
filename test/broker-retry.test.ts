/**
 * The guest's key-broker client retries what retrying can fix — a broker not listening yet, 429,
 * 5xx — with backoff inside a deadline, restarting at auth (a nonce is spent by any attest), and
 * never retries a denial. Real broker in this process; a loopback proxy counts requests and
 * injects failures.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sampleAttester } from "../src/attest/attester.js";
import { DadiError } from "../src/errors.js";
import { fetchResource } from "../src/kbs/client.js";
import { startTestBroker, type TestBroker } from "./broker/harness.js";
import { BIN, cleanupTempDirs, runCli } from "./helpers.js";

const RESOURCE = "default/image-key/retry";
let broker: TestBroker;

beforeAll(async () => {
	broker = await startTestBroker();
	await broker.put(RESOURCE, Buffer.from("the-secret-value"));
});

afterAll(async () => {
	await broker?.close();
	await cleanupTempDirs();
});

/** A port nothing listens on (yet). */
async function freePort(): Promise<number> {
	const s = http.createServer();
	await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
	const { port } = s.address() as AddressInfo;
	await new Promise<void>((r) => s.close(() => r()));
	return port;
}

/** Forwards to the broker; `fail(path, n)` may answer a status instead (n counts from 0). */
async function proxy(
	fail: (path: string, n: number) => number | undefined,
	listenPort = 0,
): Promise<{ url: string; seen: string[]; close(): Promise<void> }> {
	const target = new URL(broker.url);
	const seen: string[] = [];
	const server = http.createServer((req, res) => {
		const path = (req.url ?? "").split("?")[0] as string;
		const status = fail(path, seen.length);
		seen.push(`${req.method} ${path}${status ? ` → ${status}` : ""}`);
		if (status) {
			req.resume();
			res.writeHead(status, { "content-type": "text/plain" }).end("no");
			return;
		}
		const up = http.request(
			{
				host: target.hostname,
				port: target.port,
				method: req.method,
				path: req.url,
				headers: req.headers,
			},
			(ur) => {
				res.writeHead(ur.statusCode ?? 502, ur.headers);
				ur.pipe(res);
			},
		);
		up.on("error", () => res.destroy());
		req.pipe(up);
	});
	await new Promise<void>((r) =>
		server.listen(listenPort, "127.0.0.1", () => r()),
	);
	const { port } = server.address() as AddressInfo;
	return {
		url: `http://127.0.0.1:${port}`,
		seen,
		close: () =>
			new Promise<void>((r) => {
				server.closeAllConnections();
				server.close(() => r());
			}),
	};
}

describe("the guest's broker client", () => {
	it("waits for a broker that starts late (connection refused for 2.5 s), with backoff", async () => {
		const port = await freePort();
		const retries: string[] = [];
		const started = Date.now();
		const asking = fetchResource(
			{
				url: `http://127.0.0.1:${port}`,
				attester: sampleAttester,
				onRetry: (e) => retries.push(e.message),
			},
			`kbs:///${RESOURCE}`,
		);
		await new Promise((r) => setTimeout(r, 2500));
		// The broker "starts": something now listens on its port.
		const p = await proxy(() => undefined, port);
		try {
			const r = await asking;
			expect(r.value.toString()).toBe("the-secret-value");
			expect(retries.length).toBeGreaterThan(1);
			expect(retries[0]).toMatch(/connection refused/);
			expect(Date.now() - started).toBeGreaterThanOrEqual(2500);
			expect(p.seen[0]).toBe("POST /kbs/v0/auth");
		} finally {
			await p.close();
		}
	});

	it("retries 503 and 500 from any step, starting again at auth", async () => {
		let attests = 0;
		const p = await proxy((path) => {
			if (path === "/kbs/v0/attest" && attests++ < 2)
				return attests === 1 ? 503 : 500;
			return undefined;
		});
		try {
			const r = await fetchResource(
				{ url: p.url, attester: sampleAttester },
				`kbs:///${RESOURCE}`,
			);
			expect(r.value.toString()).toBe("the-secret-value");
			expect(p.seen).toEqual([
				"POST /kbs/v0/auth",
				"POST /kbs/v0/attest → 503",
				"POST /kbs/v0/auth",
				"POST /kbs/v0/attest → 500",
				"POST /kbs/v0/auth",
				"POST /kbs/v0/attest",
				`GET /kbs/v0/resource/${RESOURCE}`,
			]);
		} finally {
			await p.close();
		}
	});

	it("never retries a denial: 401, 403 and 404 end at the first answer", async () => {
		for (const [status, code] of [
			[401, "SESSION_INVALID"],
			[403, "POLICY_DENIED"],
			[404, "INPUT_NOT_FOUND"],
		] as const) {
			const p = await proxy((path) =>
				path.startsWith("/kbs/v0/resource/") ? status : undefined,
			);
			try {
				const err = await fetchResource(
					{ url: p.url, attester: sampleAttester },
					`kbs:///${RESOURCE}`,
				).catch((e: unknown) => e);
				expect((err as DadiError).code).toBe(code);
				expect(p.seen).toHaveLength(3);
			} finally {
				await p.close();
			}
		}
		// A real policy denial (no policy for this resource path) is not retried either.
		const p = await proxy(() => undefined);
		try {
			const err = await fetchResource(
				{ url: p.url, attester: sampleAttester },
				"kbs:///other/image-key/x",
			).catch((e: unknown) => e);
			expect(err).toBeInstanceOf(DadiError);
			expect((err as DadiError).code).toBe("POLICY_DENIED");
			expect(p.seen).toHaveLength(3);
		} finally {
			await p.close();
		}
	});

	it("gives up at the deadline with how many attempts it made; the CLI exits 8", async () => {
		const port = await freePort();
		const started = Date.now();
		const err = await fetchResource(
			{
				url: `http://127.0.0.1:${port}`,
				attester: sampleAttester,
				retryForMs: 1500,
			},
			`kbs:///${RESOURCE}`,
		).catch((e: unknown) => e);
		const took = Date.now() - started;
		expect((err as DadiError).code).toBe("NETWORK");
		expect((err as DadiError).message).toMatch(
			// It stops when the next wait would pass the deadline: after 0.x or 1.x s, backoff being random.
			/connection refused \(gave up after \d+ attempts in [01]\.\d s\)/,
		);
		expect(took).toBeLessThan(2500);
		const r = await runCli(BIN.guest, [
			"attest",
			"--broker",
			`http://127.0.0.1:${port}`,
			"--resource",
			`kbs:///${RESOURCE}`,
			"--attester",
			"sample",
			"--broker-retry",
			"1",
		]);
		expect(r.code).toBe(8);
		expect(r.stderr).toMatch(/retrying in/);
		expect(r.stderr).toMatch(/gave up after \d+ attempts.*\[NETWORK\]/);
	});
});
