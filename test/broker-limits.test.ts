/**
 * The pure cores of the broker's abuse limits: client keys and X-Forwarded-For (untrusted text),
 * the connection table and the body-memory budget (fair shares: a flood degrades the flooder).
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { AuditRecord } from "../src/broker/audit-record.js";
import { BodyBudget } from "../src/broker/body-budget.js";
import {
	clientKey,
	normalizeAddress,
	parseTrustedProxies,
	requestClient,
} from "../src/broker/client-address.js";
import {
	type Connection,
	ConnectionTable,
} from "../src/broker/connection-table.js";
import { DenialCoalescer } from "../src/broker/denial-coalescer.js";
import { Tally } from "../src/broker/tally.js";
import { thrown } from "./helpers.js";

describe("client keys", () => {
	it("IPv4 as is, IPv4-mapped IPv6 as IPv4, IPv6 by its /64", () => {
		expect(clientKey("10.1.2.3")).toBe("10.1.2.3");
		expect(clientKey("::ffff:10.1.2.3")).toBe("10.1.2.3");
		expect(clientKey("::FFFF:0a01:0203")).toBe("10.1.2.3");
		expect(clientKey("2001:db8:1:2:3:4:5:6")).toBe("2001:db8:1:2::/64");
		expect(clientKey("2001:0db8:0001:0002::9")).toBe("2001:db8:1:2::/64");
		expect(clientKey("2001:db8:1:2:ffff:ffff:ffff:ffff")).toBe(
			"2001:db8:1:2::/64",
		);
		expect(clientKey("2001:db8::1")).toBe("2001:db8:0:0::/64");
		expect(clientKey("fe80::1%eth0")).toBe("fe80:0:0:0::/64");
		expect(clientKey("::1")).toBe("0:0:0:0::/64");
		expect(clientKey("64:ff9b::1.2.3.4")).toBe("64:ff9b:0:0::/64");
		expect(normalizeAddress("not an address")).toBeUndefined();
	});

	it("property: every address of a /64 has one key; addresses of different /64s differ", () => {
		const hextet = fc.integer({ min: 0, max: 0xffff });
		const v6 = fc.array(hextet, { minLength: 8, maxLength: 8 });
		const text = (h: number[]) => h.map((x) => x.toString(16)).join(":");
		fc.assert(
			fc.property(v6, v6, (a, b) => {
				fc.pre(!(a[0] === 0 && a[1] === 0 && a[2] === 0 && a[3] === 0));
				const sameNet = [...a.slice(0, 4), ...b.slice(4)];
				expect(clientKey(text(a))).toBe(clientKey(text(sameNet)));
				const samePrefix = a.slice(0, 4).every((x, i) => x === b[i]);
				if (
					!samePrefix &&
					!(b[0] === 0 && b[1] === 0 && b[2] === 0 && b[3] === 0)
				)
					expect(clientKey(text(a))).not.toBe(clientKey(text(b)));
			}),
			{ numRuns: 500 },
		);
	});
});

describe("trusted proxies and X-Forwarded-For", () => {
	const trusted = parseTrustedProxies("10.0.0.5, fd00::/64,192.168.0.0/16");

	it("parses addresses and CIDR ranges; anything else is USAGE", () => {
		expect(trusted.has("10.0.0.5")).toBe(true);
		expect(trusted.has("::ffff:10.0.0.5")).toBe(true);
		expect(trusted.has("10.0.0.6")).toBe(false);
		expect(trusted.has("fd00::1234")).toBe(true);
		expect(trusted.has("fd00:0:0:1::1")).toBe(false);
		expect(trusted.has("192.168.44.1")).toBe(true);
		for (const bad of [
			"",
			",",
			"10.0.0.256",
			"10.0.0.0/33",
			"fd00::/129",
			"x",
			"10.0.0.0/8/8",
		])
			expect(thrown(() => parseTrustedProxies(bad)).code, bad).toBe("USAGE");
	});

	it("takes the rightmost untrusted hop, only from a trusted peer", () => {
		expect(requestClient("10.0.0.5", "203.0.113.7", trusted)).toBe(
			"203.0.113.7",
		);
		expect(
			requestClient("10.0.0.5", "1.1.1.1, 203.0.113.7, 192.168.1.1", trusted),
		).toBe("203.0.113.7"); // a client cannot name itself 1.1.1.1
		expect(
			requestClient("10.0.0.5", ["1.1.1.1", "203.0.113.7:5555"], trusted),
		).toBe("203.0.113.7");
		expect(requestClient("10.0.0.5", "[2001:db8::7]:443", trusted)).toBe(
			"2001:db8::7",
		);
		expect(requestClient("10.0.0.5", "192.168.1.1, 10.0.0.5", trusted)).toBe(
			"192.168.1.1",
		);
		// from anyone else, the header is ignored
		expect(requestClient("203.0.113.9", "1.2.3.4", trusted)).toBe(
			"203.0.113.9",
		);
		expect(requestClient("10.0.0.5", "1.2.3.4", undefined)).toBe("10.0.0.5");
		// a header that does not parse counts the request under the proxy (fail closed)
		for (const bad of [
			"",
			"unknown",
			"1.2.3.4, junk",
			"1.2.3.4,,5.6.7.8",
			"x".repeat(5000),
		])
			expect(requestClient("10.0.0.5", bad, trusted), bad).toBe("10.0.0.5");
	});

	it("property: the answer is always the peer or an address from the header, never a trusted proxy unless all hops are", () => {
		const v4 = fc
			.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255))
			.map((p) => p.join("."));
		const hop = fc.oneof(
			v4,
			fc.constantFrom("10.0.0.5", "192.168.3.4", "fd00::9"),
		);
		const junk = fc.string({ unit: "grapheme-ascii", maxLength: 30 });
		fc.assert(
			fc.property(
				fc.array(fc.oneof(hop, hop, hop, junk), { maxLength: 8 }),
				fc.constantFrom(", ", ",", " , "),
				(hops, sep) => {
					const header = hops.join(sep);
					const got = requestClient("10.0.0.5", header, trusted);
					const parsed = hops.map((h) => normalizeAddress(h.trim()));
					if (hops.length === 0 || parsed.some((p) => p === undefined)) {
						expect(got).toBe("10.0.0.5");
						return;
					}
					expect(parsed).toContain(got);
					if (trusted.has(got))
						expect(parsed.every((p) => trusted.has(p as string))).toBe(true);
				},
			),
			{ numRuns: 1000 },
		);
	});
});

describe("Tally", () => {
	it("property: heaviest() is a key with the highest count", () => {
		fc.assert(
			fc.property(
				fc.array(fc.tuple(fc.boolean(), fc.constantFrom("a", "b", "c", "d")), {
					maxLength: 100,
				}),
				(ops) => {
					const t = new Tally();
					const m = new Map<string, number>();
					for (const [add, k] of ops) {
						if (add) t.add(k);
						else t.sub(k);
						m.set(k, Math.max(0, (m.get(k) ?? 0) + (add ? 1 : -1)));
						const max = Math.max(0, ...m.values());
						const top = t.heaviest();
						if (max === 0) expect(top).toBeUndefined();
						else expect(top && m.get(top[0])).toBe(max);
						for (const [key, n] of m) expect(t.get(key)).toBe(n);
					}
				},
			),
			{ numRuns: 300 },
		);
	});
});

describe("ConnectionTable", () => {
	const table = (max: number, perClient: number) => {
		const t = new ConnectionTable({ max, perClient });
		const dropped: string[] = [];
		const open = (client: string, name: string, exempt = false) => {
			const r = t.admit(client, () => dropped.push(name), exempt);
			return r.ok ? r.connection : undefined;
		};
		return { t, dropped, open };
	};

	it("at its own bound a client's oldest idle connection makes room; busy ones are kept", () => {
		const { t, dropped, open } = table(100, 2);
		const a1 = open("a", "a1") as Connection;
		open("a", "a2");
		a1.busy = true;
		expect(open("a", "a3")).toBeDefined();
		expect(dropped).toEqual(["a2"]);
		const a3 = [...Array(1)].map(() => open("a", "a4"))[0];
		expect(a3).toBeDefined();
		expect(dropped).toEqual(["a2", "a3"]);
		// all busy: refused
		(a3 as Connection).busy = true;
		expect(t.admit("a", () => {})).toEqual({
			ok: false,
			reason: "client-full",
		});
		expect(t.heldBy("a")).toBe(2);
	});

	it("when full, the client holding the most gives up a connection, idle first; equals are refused", () => {
		const { t, dropped, open } = table(4, 10);
		const f1 = open("flood", "f1") as Connection;
		open("flood", "f2");
		open("flood", "f3");
		open("ok", "o1");
		f1.busy = true;
		expect(open("new", "n1")).toBeDefined();
		expect(dropped).toEqual(["f2"]);
		expect(open("new2", "n2")).toBeDefined(); // flood 2 vs new2 0
		expect(dropped).toEqual(["f2", "f3"]);
		// now flood holds one (busy) connection, as many as everyone else: new3 is refused
		expect(open("new3", "n3")).toBeUndefined();
		expect(t.size).toBe(4);
		expect(dropped).toEqual(["f2", "f3"]);
	});

	it("trusted proxies have no per-client bound and never give up room", () => {
		const { t, open, dropped } = table(3, 1);
		expect(open("proxy", "p1", true)).toBeDefined();
		expect(open("proxy", "p2", true)).toBeDefined();
		expect(open("proxy", "p3", true)).toBeDefined();
		expect(open("x", "x1")).toBeUndefined();
		expect(dropped).toEqual([]);
		expect(t.size).toBe(3);
	});

	it("property: bounds hold, and a client holding fewer than the heaviest minus one is never refused for fullness", () => {
		fc.assert(
			fc.property(
				fc.integer({ min: 1, max: 8 }),
				fc.integer({ min: 1, max: 5 }),
				fc.array(
					fc.record({
						op: fc.constantFrom("open", "open", "close", "busy"),
						client: fc.constantFrom("a", "b", "c", "d"),
						pick: fc.nat(),
					}),
					{ maxLength: 80 },
				),
				(max, perClient, ops) => {
					const t = new ConnectionTable({ max, perClient });
					const live = new Set<Connection>();
					for (const o of ops) {
						const list = [...live];
						if (o.op === "open") {
							const counts = ["a", "b", "c", "d"].map((c) => t.heldBy(c));
							const mine = t.heldBy(o.client);
							const full = t.size >= max;
							const r = t.admit(o.client, () => {});
							if (r.ok) {
								live.add(r.connection);
								if (r.dropped) live.delete(r.dropped);
							} else if (r.reason === "full") {
								expect(full).toBe(true);
								// refused only if nobody holds two more (or the heaviest has nothing to give)
								const top = Math.max(...counts);
								if (top >= mine + 2) {
									// possible only when the client was at its own bound too
									expect(mine).toBeGreaterThanOrEqual(perClient);
								}
							} else expect(mine).toBeGreaterThanOrEqual(perClient);
						} else if (list.length > 0) {
							const c = list[o.pick % list.length] as Connection;
							if (o.op === "close") {
								t.closed(c);
								live.delete(c);
							} else c.busy = !c.busy;
						}
						expect(t.size).toBe(live.size);
						expect(t.size).toBeLessThanOrEqual(max);
						for (const c of ["a", "b", "c", "d"])
							expect(t.heldBy(c)).toBeLessThanOrEqual(perClient);
					}
				},
			),
			{ numRuns: 400 },
		);
	});
});

describe("BodyBudget", () => {
	it("bounds each client's bytes; a full budget takes the heaviest client's largest body", () => {
		const b = new BodyBudget({ total: 100, perClient: 60 });
		const aborted: string[] = [];
		const a1 = b.open("a", () => aborted.push("a1"));
		const a2 = b.open("a", () => aborted.push("a2"));
		expect(a1.grow(40)).toBe(true);
		expect(a2.grow(20)).toBe(true);
		expect(a2.grow(1)).toBe(false); // a holds 60
		const c = b.open("c", () => aborted.push("c"));
		expect(c.grow(30)).toBe(true);
		const d = b.open("d", () => aborted.push("d"));
		// 90 held; d wants 20: a (60) gives up its largest body (a1, 40)
		expect(d.grow(20)).toBe(true);
		expect(aborted).toEqual(["a1"]);
		expect(b.total).toBe(70);
		expect(a1.grow(1)).toBe(false); // aborted for good
		// c (30) asks for 40 more: d (20) and a (20) hold less than c would: refused
		expect(c.grow(40)).toBe(false);
		for (const r of [a2, c, d]) r.release();
		expect(b.total).toBe(0);
		expect(b.heldBy("a")).toBe(0);
	});

	it("property: never above the bounds, and releases give everything back", () => {
		fc.assert(
			fc.property(
				fc.array(
					fc.record({
						client: fc.constantFrom("a", "b", "c"),
						op: fc.constantFrom("open", "grow", "grow", "release"),
						n: fc.integer({ min: 1, max: 50 }),
						pick: fc.nat(),
					}),
					{ maxLength: 100 },
				),
				(ops) => {
					const b = new BodyBudget({ total: 120, perClient: 70 });
					const open: ReturnType<BodyBudget["open"]>[] = [];
					for (const o of ops) {
						if (o.op === "open" || open.length === 0)
							open.push(b.open(o.client, () => {}));
						else {
							const r = open[o.pick % open.length] as (typeof open)[0];
							if (o.op === "grow") r.grow(o.n);
							else r.release();
						}
						expect(b.total).toBeLessThanOrEqual(120);
						for (const c of ["a", "b", "c"])
							expect(b.heldBy(c)).toBeLessThanOrEqual(70);
					}
					for (const r of open) r.release();
					expect(b.total).toBe(0);
				},
			),
			{ numRuns: 300 },
		);
	});
});

describe("DenialCoalescer", () => {
	const deny = (client: string, i: number): AuditRecord => ({
		event: "deny",
		client,
		status: 401,
		detail: `denial ${i}`,
	});

	it("writes the first denials of a window, counts the rest, and summarises them when it ends", () => {
		const c = new DenialCoalescer({ windowMs: 1000, full: 2, maxClients: 10 });
		expect(c.offer("a", deny("a", 1), 0)).toEqual([deny("a", 1)]);
		expect(c.offer("a", deny("a", 2), 10)).toEqual([deny("a", 2)]);
		for (let i = 3; i <= 100; i++)
			expect(c.offer("a", deny("a", i), 10 + i)).toEqual([]);
		expect(c.offer("b", deny("b", 1), 20)).toEqual([deny("b", 1)]);
		expect(c.due(999)).toEqual([]);
		const [summary, ...rest] = c.due(1000);
		expect(rest).toEqual([]);
		expect(summary).toMatchObject({
			event: "deny",
			client: "a",
			status: 401,
			count: 98,
		});
		expect(summary?.detail).toMatch(/^98 more denials .*the last: denial 100$/);
		// a new window writes again; a window that ended is summarised before the next denial
		expect(c.offer("a", deny("a", 101), 1001)).toEqual([deny("a", 101)]);
		c.offer("a", deny("a", 102), 1002);
		c.offer("a", deny("a", 103), 1003);
		const next = c.offer("a", deny("a", 104), 2500);
		expect(next.map((r) => r.count ?? 1)).toEqual([1, 1]);
		expect(next[1]).toEqual(deny("a", 104));
		expect(c.drain()).toEqual([]);
	});

	it("property: at most full + 1 records per client and window, and every denial is accounted for", () => {
		fc.assert(
			fc.property(
				fc.array(
					fc.record({
						client: fc.constantFrom("a", "b", "c", "d", "e"),
						dt: fc.integer({ min: 0, max: 400 }),
					}),
					{ maxLength: 300 },
				),
				fc.integer({ min: 1, max: 4 }),
				(offers, full) => {
					const c = new DenialCoalescer({
						windowMs: 1000,
						full,
						maxClients: 3,
					});
					let now = 0;
					const written: AuditRecord[] = [];
					offers.forEach((o, i) => {
						now += o.dt;
						written.push(...c.due(now));
						written.push(...c.offer(o.client, deny(o.client, i), now));
					});
					written.push(...c.drain());
					const total = written.reduce((n, r) => n + (r.count ?? 1), 0);
					expect(total).toBe(offers.length);
					for (const k of ["a", "b", "c", "d", "e"]) {
						const mine = offers.filter((o) => o.client === k).length;
						const rec = written.filter((r) => r.client === k);
						expect(rec.reduce((n, r) => n + (r.count ?? 1), 0)).toBe(mine);
					}
					// bounded: no more records than (full + 1) per client per window opened
					expect(written.length).toBeLessThanOrEqual(offers.length);
				},
			),
			{ numRuns: 300 },
		);
	});
});
