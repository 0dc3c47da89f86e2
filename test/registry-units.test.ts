/** Pure parts of the registry client: references, Content-Range, Retry-After, tokens, re-chunking. */
import { Readable } from "node:stream";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import { Limiter } from "../src/lazy/limiter.js";
import {
	formatDockerReference,
	parseDockerReference,
} from "../src/oci/docker-reference.js";
import { parseReference } from "../src/oci/reference.js";
import { parseTokenResponse } from "../src/registry/auth.js";
import { parseContentRange } from "../src/registry/blob-download.js";
import { rechunk } from "../src/registry/blob-upload.js";
import {
	DEFAULT_RETRY,
	parseRetryAfter,
	TransientError,
	withRetries,
} from "../src/registry/retry.js";
import { thrown } from "./helpers.js";

const D = `sha256:${"ab".repeat(32)}`;

function codeOf(f: () => unknown): string {
	try {
		f();
	} catch {
		return thrown(f).code;
	}
	return "ok";
}

describe("docker:// references", () => {
	it("parses hosts, ports, tags, digests and Docker Hub names like docker does", () => {
		expect(parseReference("docker://127.0.0.1:5000/a/b:v1")).toEqual({
			transport: "docker",
			registry: "127.0.0.1:5000",
			repository: "a/b",
			tag: "v1",
		});
		expect(parseReference(`docker://localhost/x@${D}`)).toEqual({
			transport: "docker",
			registry: "localhost",
			repository: "x",
			digest: D,
		});
		expect(parseReference("docker://busybox")).toEqual({
			transport: "docker",
			registry: "docker.io",
			repository: "library/busybox",
		});
		expect(parseReference("docker://user/app:1.0")).toMatchObject({
			registry: "docker.io",
			repository: "user/app",
			tag: "1.0",
		});
		expect(
			formatDockerReference(parseDockerReference("//reg.example.com/a/b", "x")),
		).toBe("docker://reg.example.com/a/b:latest");
	});

	it("refuses malformed names with USAGE", () => {
		for (const bad of [
			"docker:/x",
			"docker://",
			"docker://Reg.io/UPPER",
			"docker://reg.io/a/b:bad/tag",
			"docker://reg.io/a@sha256:123",
			"docker://reg.io/a//b",
			`docker://reg.io/${"a".repeat(300)}`,
			"docker://reg.io:99999999/a",
		])
			expect(
				codeOf(() => parseReference(bad)),
				bad,
			).toBe("USAGE");
	});

	it("never throws anything but USAGE on random input, and round-trips what it accepts", () => {
		fc.assert(
			fc.property(fc.string({ maxLength: 80 }), (s) => {
				let r: ReturnType<typeof parseReference> | undefined;
				try {
					r = parseReference(`docker://${s}`);
				} catch (e) {
					expect(e).toBeInstanceOf(DadiError);
					expect((e as DadiError).code).toBe("USAGE");
					return;
				}
				if (r.transport !== "docker") throw new Error("wrong transport");
				const again = parseReference(formatDockerReference(r));
				expect(again).toMatchObject({
					registry: r.registry,
					repository: r.repository,
				});
			}),
			{ numRuns: 2000 },
		);
	});
});

describe("Content-Range", () => {
	it("accepts exactly bytes START-END/TOTAL or /*", () => {
		expect(parseContentRange("bytes 0-9/100")).toEqual({
			start: 0,
			end: 9,
			total: 100,
		});
		expect(parseContentRange("bytes 5-5/*")).toEqual({ start: 5, end: 5 });
		for (const bad of [
			undefined,
			"",
			"bytes 9-0/100",
			"bytes 0-100/100",
			"items 0-9/100",
			"bytes 0-9",
			"bytes -1-9/100",
			"bytes 0-9/1e3",
		])
			expect(parseContentRange(bad), String(bad)).toBeUndefined();
	});

	it("round-trips any valid range and never throws", () => {
		fc.assert(
			fc.property(
				fc.nat({ max: 2 ** 40 }),
				fc.nat({ max: 2 ** 30 }),
				fc.nat({ max: 2 ** 30 }),
				(start, len, extra) => {
					const end = start + len;
					const total = end + 1 + extra;
					expect(parseContentRange(`bytes ${start}-${end}/${total}`)).toEqual({
						start,
						end,
						total,
					});
				},
			),
		);
		fc.assert(
			fc.property(fc.string({ maxLength: 60 }), (s) => {
				parseContentRange(s);
			}),
		);
	});
});

describe("retries", () => {
	it("parses Retry-After as seconds or an HTTP date", () => {
		expect(parseRetryAfter("3")).toBe(3000);
		expect(parseRetryAfter(undefined)).toBeUndefined();
		expect(parseRetryAfter("soon")).toBeUndefined();
		const now = Date.parse("2026-01-01T00:00:00Z");
		expect(parseRetryAfter("Thu, 01 Jan 2026 00:00:05 GMT", now)).toBe(5000);
	});

	it("retries transient errors a bounded number of times, and no others", async () => {
		let calls = 0;
		const policy = { ...DEFAULT_RETRY, attempts: 3, baseDelayMs: 1 };
		await expect(
			withRetries(policy, async () => {
				calls++;
				throw new TransientError("NETWORK", "reset");
			}),
		).rejects.toMatchObject({
			code: "NETWORK",
			message: expect.stringContaining("gave up after 3 attempts"),
		});
		expect(calls).toBe(3);
		calls = 0;
		await expect(
			withRetries(policy, async () => {
				calls++;
				throw new DadiError("REMOTE_DENIED", "no");
			}),
		).rejects.toMatchObject({ code: "REMOTE_DENIED" });
		expect(calls).toBe(1);
		calls = 0;
		expect(
			await withRetries(policy, async () => {
				if (++calls < 3) throw new TransientError("NETWORK", "x", 1);
				return "done";
			}),
		).toBe("done");
	});

	it("fails at once when the server asks for a longer wait than allowed", async () => {
		const started = Date.now();
		await expect(
			withRetries({ ...DEFAULT_RETRY, maxRetryAfterMs: 1000 }, async () => {
				throw new TransientError("NETWORK", "429", 3_600_000);
			}),
		).rejects.toMatchObject({ message: expect.stringContaining("3600 s") });
		expect(Date.now() - started).toBeLessThan(1000);
	});
});

describe("token responses", () => {
	it("takes token or access_token and bounds the lifetime", () => {
		const t = parseTokenResponse(
			Buffer.from(JSON.stringify({ access_token: "abc", expires_in: 300 })),
			"t",
		);
		expect(t.token).toBe("abc");
		expect(t.expiresAt - Date.now()).toBeGreaterThan(280_000);
		expect(t.expiresAt - Date.now()).toBeLessThanOrEqual(300_000);
		// A token server's clock may shorten the life, never extend it.
		const future = parseTokenResponse(
			Buffer.from(
				JSON.stringify({
					token: "x",
					expires_in: 60,
					issued_at: "2999-01-01T00:00:00Z",
				}),
			),
			"t",
		);
		expect(future.expiresAt - Date.now()).toBeLessThanOrEqual(60_000);
	});

	it("refuses bodies without a usable token, never echoing them", () => {
		for (const bad of ["", "{}", "[]", '{"token":""}', '{"token":"a b"}', "x"])
			expect(
				codeOf(() => parseTokenResponse(Buffer.from(bad), "t")),
				bad,
			).toBe("REMOTE_PROTOCOL");
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 200 }), (b) => {
				expect(
					["ok", "REMOTE_PROTOCOL"].includes(
						codeOf(() => parseTokenResponse(Buffer.from(b), "t")),
					),
				).toBe(true);
			}),
		);
	});
});

describe("upload re-chunking", () => {
	it("cuts any stream into exact pieces, losing and adding nothing", async () => {
		await fc.assert(
			fc.asyncProperty(
				fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 20 }),
				fc.integer({ min: 1, max: 500 }),
				async (parts, size) => {
					const all = Buffer.concat(parts.map((p) => Buffer.from(p)));
					const out: Buffer[] = [];
					for await (const piece of rechunk(
						Readable.from(parts.map((p) => Buffer.from(p))),
						size,
					))
						out.push(piece);
					expect(Buffer.concat(out).equals(all)).toBe(true);
					out.slice(0, -1).forEach((p) => {
						expect(p.length).toBe(size);
					});
					const fromBuffer: Buffer[] = [];
					for await (const piece of rechunk(all, size)) fromBuffer.push(piece);
					expect(fromBuffer.map((b) => b.length)).toEqual(
						out.map((b) => b.length),
					);
				},
			),
			{ numRuns: 200 },
		);
	});
});

describe("limiter", () => {
	it("never runs more than its bound, and serves demand before read-ahead", async () => {
		const l = new Limiter(2);
		let running = 0;
		let peak = 0;
		const order: string[] = [];
		const task = (name: string) => async () => {
			running++;
			peak = Math.max(peak, running);
			await new Promise((r) => setTimeout(r, 5));
			order.push(name);
			running--;
		};
		await Promise.all([
			l.run(task("a")),
			l.run(task("b")),
			l.run(task("ahead1"), true),
			l.run(task("ahead2"), true),
			l.run(task("c")),
		]);
		expect(peak).toBe(2);
		expect(order.indexOf("c")).toBeLessThan(order.indexOf("ahead1"));
	});
});
