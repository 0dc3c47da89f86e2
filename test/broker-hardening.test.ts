/**
 * The smaller findings of the abuse review: the admin listener's request budget is its own;
 * client-chosen text is escaped in the broker's log, the audit table and the guest's messages;
 * the audit log does not grow with a flood of denials and stays bounded by rotation; the guest
 * reports an unparseable token as a protocol error.
 */
import { readdir } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { parseTrustedProxies } from "../src/broker/client-address.js";
import { auditTable } from "../src/cli/broker/resource-command.js";
import { send } from "./broker/abuse.js";
import {
	ManualGuest,
	raw,
	startTestBroker,
	type TestBroker,
} from "./broker/harness.js";
import { BIN, cleanupTempDirs, runCli } from "./helpers.js";

const RES = "default/image-key/hard";
const brokers: TestBroker[] = [];
afterEach(async () => {
	for (const b of brokers.splice(0)) await b.close();
});
afterAll(cleanupTempDirs);

async function broker(
	over: Parameters<typeof startTestBroker>[0] = {},
): Promise<TestBroker> {
	const b = await startTestBroker(over);
	brokers.push(b);
	await b.put(RES, Buffer.from("a key"));
	return b;
}

/** Characters no log line, table or message may carry raw (a tab is a table's separator). */
const RAW_CONTROL = new RegExp(
	`[${String.fromCharCode(0)}-${String.fromCharCode(8)}${String.fromCharCode(10)}-${String.fromCharCode(0x1f)}${String.fromCharCode(0x7f)}-${String.fromCharCode(0x9f)}]`,
);

/** A loopback proxy to the broker that may rewrite one answer. */
async function proxy(
	target: string,
	rewrite: (path: string) => { status: number; body: string } | undefined,
	edit?: (path: string, body: string) => string,
): Promise<{ url: string; close(): Promise<void> }> {
	const t = new URL(target);
	const server = http.createServer((req, res) => {
		const path = (req.url ?? "").split("?")[0] as string;
		const forced = rewrite(path);
		if (forced) {
			req.resume();
			res
				.writeHead(forced.status, {
					"content-type": "application/problem+json",
				})
				.end(forced.body);
			return;
		}
		const up = http.request(
			{
				host: t.hostname,
				port: t.port,
				method: req.method,
				path: req.url,
				headers: req.headers,
			},
			(ur) => {
				const chunks: Buffer[] = [];
				ur.on("data", (c: Buffer) => chunks.push(c));
				ur.on("end", () => {
					let body = Buffer.concat(chunks).toString("utf8");
					if (edit) body = edit(path, body);
					const headers = { ...ur.headers };
					headers["content-length"] = String(Buffer.byteLength(body));
					res.writeHead(ur.statusCode ?? 502, headers).end(body);
				});
			},
		);
		up.on("error", () => res.destroy());
		req.pipe(up);
	});
	await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
	const { port } = server.address() as AddressInfo;
	return {
		url: `http://127.0.0.1:${port}`,
		close: () =>
			new Promise<void>((r) => {
				server.closeAllConnections();
				server.close(() => r());
			}),
	};
}

describe("the admin listener's own limits", { timeout: 60_000 }, () => {
	it("KBS traffic that exhausts a client's request budget does not lock it out of the admin API", async () => {
		const b = await broker({ rateLimit: { rate: 1, burst: 3 } });
		const statuses: number[] = [];
		for (let i = 0; i < 5; i++)
			statuses.push((await raw(`${b.url}/kbs/v0/nothing`)).status);
		expect(statuses).toContain(429);
		const a = await b.admin();
		try {
			await a.call("GET", "/admin/v0/resources");
		} finally {
			await a.close();
		}
	});
});

describe("untrusted text is escaped wherever it is printed", {
	timeout: 60_000,
}, () => {
	// short enough to survive the 64-character cut of a member name in a problem detail
	const FORGED = "\ndadi-broker: release x client=10.9.9.9\x1b[2K";

	it("the broker's log: a client-chosen member name cannot forge a line", async () => {
		const b = await broker();
		const g = new ManualGuest(b.url);
		await g.auth();
		const r = await g.attest({
			evidence: { ...g.evidence(), [FORGED]: 1 },
		});
		expect(r.status).toBe(401);
		const denial = b.logs.find(
			(l) => l.startsWith("deny") && l.includes("10.9.9.9"),
		);
		expect(denial).toBeDefined();
		for (const l of b.logs) expect(l).not.toMatch(RAW_CONTROL);
		expect(denial).toContain("\\ndadi-broker: release");
		expect(denial).toContain("\\x1b[2K");
	});

	it("the audit table", () => {
		const text = auditTable([
			{ seq: 1, time: "t", event: "deny", client: "c\td", detail: FORGED },
		]);
		const lines = text.trimEnd().split("\n");
		expect(lines.length).toBe(2); // the heading and one record
		expect(lines[1]?.split("\t").length).toBe(9);
		expect(text.replace(/[\t\n]/g, "")).not.toMatch(RAW_CONTROL);
		expect(lines[1]).toContain("\\x1b[2K");
	});

	it("the guest's error message quoting the broker's detail", async () => {
		const b = await broker();
		const p = await proxy(b.url, (path) =>
			path.startsWith("/kbs/v0/resource/")
				? {
						status: 403,
						body: JSON.stringify({
							type: "https://github.com/confidential-containers/kbs/errors/PolicyDeny",
							title: "PolicyDeny",
							status: 403,
							detail: `denied${FORGED}\x1b]0;owned\x07`,
						}),
					}
				: undefined,
		);
		try {
			const r = await runCli(BIN.guest, [
				"attest",
				"--broker",
				p.url,
				"--resource",
				`kbs:///${RES}`,
				"--attester",
				"sample",
			]);
			expect(r.code).toBe(9);
			expect(r.stderr.trimEnd().split("\n").length).toBe(1);
			expect(r.stderr.trimEnd()).not.toMatch(RAW_CONTROL);
			expect(r.stderr).toContain("denied\\ndadi-broker: release");
			expect(r.stderr).toContain("\\x1b]0;owned\\x07");
		} finally {
			await p.close();
		}
	});
});

describe("the guest and an unparseable token", { timeout: 60_000 }, () => {
	it("dadi-guest attest: a token that is not a JWT is REMOTE_PROTOCOL (exit 8), not a stack trace", async () => {
		const b = await broker();
		const p = await proxy(
			b.url,
			() => undefined,
			(path, body) =>
				path === "/kbs/v0/attest"
					? JSON.stringify({ token: "not.a-jwt.at-all" })
					: body,
		);
		try {
			const r = await runCli(BIN.guest, [
				"attest",
				"--broker",
				p.url,
				"--resource",
				`kbs:///${RES}`,
				"--attester",
				"sample",
			]);
			expect(r.code).toBe(8);
			expect(r.stderr).toMatch(/\[REMOTE_PROTOCOL\]\n$/);
			expect(r.stderr).not.toMatch(/\n\s+at /);
		} finally {
			await p.close();
		}
	});
});

describe("the audit log under a flood", { timeout: 120_000 }, () => {
	it("a flood of denials from one client adds a handful of records, and one summary counts the rest", async () => {
		const b = await broker();
		const g = await new ManualGuest(b.url).attested();
		const a = await b.admin();
		const seqOf = async () =>
			(
				(await a.call("GET", "/admin/v0/audit?limit=1")) as {
					records: { seq: number }[];
				}
			).records[0]?.seq ?? 0;
		try {
			const start = await seqOf();
			for (let i = 0; i < 300; i++) {
				const r = await g.resource("other/image-key/nope");
				expect(r.status).toBe(403);
			}
			const during = await seqOf();
			expect(during - start).toBeLessThanOrEqual(5);
			await b.restart(); // closing writes the summary of the open window
			const a2 = await b.admin();
			try {
				const { records } = (await a2.call(
					"GET",
					`/admin/v0/audit?since-seq=${start}&event=deny`,
				)) as { records: { count?: number; detail?: string }[] };
				const total = records.reduce((n, r) => n + (r.count ?? 1), 0);
				expect(total).toBe(300);
				expect(records.length).toBeLessThanOrEqual(6);
				expect(records.at(-1)?.detail).toMatch(/^295 more denials/);
			} finally {
				await a2.close();
			}
		} finally {
			await a.close();
		}
	});

	it("rotation through the broker: the files stay bounded and the admin API reads across them", async () => {
		const b = await broker({ audit: { rotateBytes: 4096, keep: 2 } });
		for (let i = 0; i < 40; i++) {
			const g = await new ManualGuest(b.url).attested();
			expect((await g.resource(RES)).status).toBe(200);
		}
		const files = (await readdir(b.stateDir)).filter((n) =>
			/^audit\.log(\.\d{12})?$/.test(n),
		);
		expect(files.sort()).toEqual([
			"audit.log",
			expect.stringMatching(/^audit\.log\.\d{12}$/),
			expect.stringMatching(/^audit\.log\.\d{12}$/),
		]);
		const a = await b.admin();
		try {
			const { records } = (await a.call(
				"GET",
				"/admin/v0/audit?limit=10000",
			)) as {
				records: { seq: number }[];
			};
			const seqs = records.map((r) => r.seq);
			expect(seqs.length).toBeGreaterThan(10);
			expect(seqs).toEqual(
				Array.from({ length: seqs.length }, (_, i) => (seqs[0] as number) + i),
			);
			expect(seqs[0]).toBeGreaterThan(1); // the oldest files were removed
		} finally {
			await a.close();
		}
	});
});

describe("behind a reverse proxy (--trusted-proxy)", {
	timeout: 60_000,
}, () => {
	it("counts and audits the forwarded client only when the peer is a trusted proxy", async () => {
		const b = await broker({
			rateLimit: { rate: 1, burst: 2 },
			trustedProxies: parseTrustedProxies("127.0.0.1"),
		});
		const get = (from: string, xff?: string) =>
			send(b.url, {
				path: "/kbs/v0/nothing",
				from,
				headers: xff ? { "x-forwarded-for": xff } : {},
			}).then((r) => r.status);
		// each forwarded client has its own bucket behind the proxy
		expect([
			await get("127.0.0.1", "203.0.113.5"),
			await get("127.0.0.1", "203.0.113.5"),
		]).toEqual([404, 404]);
		expect(await get("127.0.0.1", "203.0.113.5")).toBe(429);
		expect(await get("127.0.0.1", "198.51.100.7, 203.0.113.6")).toBe(404);
		// from a peer that is not trusted, the header names nobody
		expect([
			await get("127.0.0.2", "203.0.113.9"),
			await get("127.0.0.2", "192.0.2.1"),
		]).toEqual([404, 404]);
		expect(await get("127.0.0.2", "192.0.2.2")).toBe(429);
		// the audit log names the forwarded client
		const g = new ManualGuest(b.url);
		await g.auth();
		await raw(`${b.url}/kbs/v0/attest`, {
			method: "POST",
			headers: {
				"content-type": "application/json",
				cookie: g.cookie,
				"x-forwarded-for": "198.51.100.77",
			},
			body: "{}",
		});
		const a = await b.admin();
		try {
			const { records } = (await a.call("GET", "/admin/v0/audit?limit=1")) as {
				records: { client: string }[];
			};
			expect(records[0]?.client).toBe("198.51.100.77");
		} finally {
			await a.close();
		}
	});
});
