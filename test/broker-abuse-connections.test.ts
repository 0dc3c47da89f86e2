/**
 * Connection-level abuse of a broker with its default limits, from loopback addresses: idle
 * connections from one address must not lock out other clients (on the KBS listener or the admin
 * listener), and a connection answered with a timeout must really go, even when its client never
 * closes its side.
 */
import { afterAll, afterEach, describe, expect, it } from "vitest";
import {
	attacker,
	idleConnections,
	legitExchange,
	send,
	sleep,
} from "./broker/abuse.js";
import { startTestBroker, type TestBroker } from "./broker/harness.js";
import { cleanupTempDirs } from "./helpers.js";

const RES = "default/image-key/abuse";
const brokers: TestBroker[] = [];
const floods: { destroy(): void }[] = [];

afterEach(async () => {
	for (const f of floods.splice(0)) f.destroy();
	for (const b of brokers.splice(0)) await b.close();
});
afterAll(cleanupTempDirs);

const portOf = (url: string) => Number(new URL(url).port);

describe("idle connections", { timeout: 120_000 }, () => {
	it("4,200 idle connections from one address: other clients are still served on both listeners", async () => {
		const b = await startTestBroker();
		brokers.push(b);
		await b.put(RES, Buffer.from("a key"));
		// the KBS listener
		const kbsFlood = await idleConnections(portOf(b.url), 4200, attacker(1));
		floods.push(kbsFlood);
		await sleep(300);
		for (let i = 0; i < 3; i++) {
			const r = await legitExchange(b.url, RES);
			expect(r.failure).toBeUndefined();
		}
		// the flooder holds its share (128), not the listener
		expect(b.running.stats().kbs.connections).toBeLessThanOrEqual(130);
		kbsFlood.destroy();
		// the admin listener
		const adminFlood = await idleConnections(
			portOf(b.adminUrl),
			4200,
			attacker(2),
		);
		floods.push(adminFlood);
		await sleep(300);
		const list = await send(b.adminUrl, {
			path: "/admin/v0/resources",
			headers: { authorization: `Bearer ${b.adminToken}` },
		});
		expect(list.status).toBe(200);
		expect(b.running.stats().admin?.connections).toBeLessThanOrEqual(17);
	});

	it("a connection timed out before its headers is closed within a second, even if the client keeps its side open", async () => {
		const b = await startTestBroker({
			timeouts: { headersMs: 400, checkMs: 100, lingerMs: 300 },
		});
		brokers.push(b);
		const flood = await idleConnections(
			portOf(b.url),
			50,
			attacker(3),
			"GET /kbs/v0/res",
		);
		floods.push(flood);
		const answers: string[] = [];
		for (const s of flood.sockets)
			s.on("data", (d: Buffer) => answers.push(d.toString("latin1")));
		const deadline = Date.now() + 5000;
		while (b.running.stats().kbs.connections > 0 && Date.now() < deadline)
			await sleep(100);
		expect(b.running.stats().kbs.connections).toBe(0);
		expect(answers.length).toBe(50);
		expect(answers.every((a) => a.startsWith("HTTP/1.1 408"))).toBe(true);
		// the clients' sides are still open: it was the broker that let go
		expect(flood.sockets.every((s) => !s.destroyed)).toBe(true);
	});
});
