import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ImageKey } from "../src/crypto/image-key.js";
import { DadiError } from "../src/errors.js";
import {
	openRemoteSealedImage,
	type RemoteOpenOptions,
} from "../src/lazy/open-remote.js";
import { parseReference } from "../src/oci/reference.js";
import {
	BIN,
	cleanupTempDirs,
	prng,
	runCli,
	sealDiskToRegistry,
	texty,
} from "./helpers.js";
import {
	type Fault,
	type FaultProxy,
	faultOnce,
	isBlobGet,
	startFaultProxy,
} from "./registry/fault-proxy.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";

const MiB = 1 << 20;
let reg: RunningRegistry;
let proxy: FaultProxy;
let key: ImageKey;
let keyPath: string;
let disk: Buffer;

const FAST: RemoteOpenOptions = {
	insecure: true,
	retry: {
		attempts: 4,
		baseDelayMs: 20,
		maxDelayMs: 200,
		maxRetryAfterMs: 5000,
	},
	timeouts: { connectMs: 1000, headersMs: 1000, bodyMs: 1000, requestMs: 4000 },
	tuning: { stallMs: 2500, hedgeMs: 300 },
};

beforeAll(async () => {
	reg = await startRegistry();
	proxy = await startFaultProxy({ host: reg.host });
	({ key, keyPath, disk } = await sealDiskToRegistry(
		reg.host,
		"faults/disk:v1",
		24 * MiB,
		[
			{ at: 0, bytes: prng("x", 8 * MiB) },
			{ at: 10 * MiB, bytes: texty("y", 10 * MiB) },
		],
	));
});

afterAll(async () => {
	await proxy?.close();
	await reg?.stop();
	await cleanupTempDirs();
});

async function open(host: string, o: RemoteOpenOptions = FAST) {
	const ref = parseReference(`docker://${host}/faults/disk:v1`);
	if (ref.transport !== "docker") throw new Error("ref");
	return openRemoteSealedImage(ref, key, o);
}

const expected = (at: number, n: number) => disk.subarray(at, at + n);

describe("one fault on a chunk read: retried, right data", () => {
	const cases: [string, Fault, (s: Record<string, number>) => void][] = [
		[
			"500",
			{ kind: "status", status: 500 },
			(s) => expect(s.retries).toBeGreaterThan(0),
		],
		[
			"503",
			{ kind: "status", status: 503 },
			(s) => expect(s.retries).toBeGreaterThan(0),
		],
		[
			"connection dropped mid-body",
			{ kind: "drop-mid-body" },
			(s) => expect(s.retries).toBeGreaterThan(0),
		],
		[
			"connection dropped before headers",
			{ kind: "drop-before-headers" },
			(s) => expect(s.retries).toBeGreaterThan(0),
		],
		[
			"short body",
			{ kind: "short-body" },
			(s) => expect(s.retries).toBeGreaterThan(0),
		],
		[
			"wrong Content-Range",
			{ kind: "wrong-content-range" },
			(s) => expect(s.retries).toBeGreaterThan(0),
		],
		[
			"Range ignored (whole blob sent)",
			{ kind: "ignore-range" },
			(s) => expect(s.retries).toBeGreaterThan(0),
		],
		[
			"a byte flipped in transit",
			{ kind: "flip-byte" },
			(s) => {
				expect(s.refetches).toBeGreaterThan(0);
				expect(s.retries).toBe(0);
			},
		],
		[
			"slow answer",
			{ kind: "delay", ms: 300 },
			(s) => expect(s.retries).toBe(0),
		],
		[
			"slow body",
			{ kind: "trickle", bytesPerSecond: 4 * MiB },
			(s) => expect(s.retries).toBe(0),
		],
		[
			"stalled answer: re-issued (hedged), no retry needed",
			{ kind: "stall" },
			(s) => {
				expect(s.hedges).toBe(1);
				expect(s.retries).toBe(0);
			},
		],
		[
			"answer stalled mid-body: re-issued (hedged)",
			{ kind: "stall-mid-body" },
			(s) => {
				expect(s.hedges).toBe(1);
				expect(s.stallFailures).toBe(0);
			},
		],
	];
	for (const [name, fault, check] of cases)
		it(name, async () => {
			proxy.setRule(undefined);
			const image = await open(proxy.host);
			try {
				proxy.setRule(faultOnce(isBlobGet(true), fault));
				const at = 10 * MiB + 12345;
				const got = await image.disk.read(at, 2 * MiB);
				expect(got.equals(expected(at, 2 * MiB))).toBe(true);
				expect(proxy.requests.some((r) => r.fault === fault.kind)).toBe(true);
				check(image.stats.toJSON() as unknown as Record<string, number>);
			} finally {
				proxy.setRule(undefined);
				await image.close();
			}
		});

	it("429 with Retry-After waits as asked", async () => {
		const image = await open(proxy.host);
		try {
			proxy.setRule(
				faultOnce(isBlobGet(true), {
					kind: "status",
					status: 429,
					retryAfter: "1",
				}),
			);
			const started = Date.now();
			const got = await image.disk.read(MiB, MiB);
			expect(Date.now() - started).toBeGreaterThanOrEqual(900);
			expect(got.equals(expected(MiB, MiB))).toBe(true);
			expect(image.stats.retries).toBe(1);
		} finally {
			proxy.setRule(undefined);
			await image.close();
		}
	});

	it("a fault on the layer's metadata at open is refetched too", async () => {
		proxy.setRule(faultOnce(isBlobGet(true), { kind: "flip-byte" }));
		const image = await open(proxy.host);
		try {
			expect(image.stats.refetches).toBeGreaterThan(0);
			expect((await image.disk.read(0, MiB)).equals(expected(0, MiB))).toBe(
				true,
			);
		} finally {
			proxy.setRule(undefined);
			await image.close();
		}
	});
});

describe("persistent faults: a clear error after bounded retries, never wrong data, no hang", () => {
	const cases: [string, Fault, string, RegExp][] = [
		[
			"500 forever",
			{ kind: "status", status: 500 },
			"NETWORK",
			/answered 500.*gave up after 4 attempts/,
		],
		[
			"stalled forever",
			{ kind: "stall" },
			"NETWORK",
			/no response headers within the timeout.*gave up after 4 attempts/,
		],
		[
			"every answer stalls mid-body",
			{ kind: "stall-mid-body" },
			"NETWORK",
			/the response body stalled.*gave up after 4 attempts/,
		],
		[
			"every body cut short",
			{ kind: "drop-mid-body" },
			"NETWORK",
			/gave up after 4 attempts/,
		],
		[
			"Content-Range always wrong",
			{ kind: "wrong-content-range" },
			"REMOTE_PROTOCOL",
			/Content-Range/,
		],
		[
			"every answer tampered with",
			{ kind: "flip-byte" },
			"AUTH_FAILED",
			/authentication failed/,
		],
	];
	for (const [name, fault, code, message] of cases)
		it(name, async () => {
			const image = await open(proxy.host);
			try {
				proxy.setRule((req) => (isBlobGet(true)(req) ? fault : undefined));
				const started = Date.now();
				const err = await image.disk.read(MiB, 64 * 1024).then(
					() => undefined,
					(e: unknown) => e,
				);
				expect(err).toBeInstanceOf(DadiError);
				expect((err as DadiError).code).toBe(code);
				expect((err as DadiError).message).toMatch(message);
				// 4 attempts of at most 1 s (headers timeout) plus backoff of at most 0.2 s each.
				expect(Date.now() - started).toBeLessThan(8000);
			} finally {
				proxy.setRule(undefined);
				await image.close();
			}
		});

	it("the CLI reports it with exit 8 and one line", async () => {
		proxy.setRule((req) =>
			isBlobGet(true)(req) ? { kind: "status", status: 503 } : undefined,
		);
		try {
			const r = await runCli(BIN.guest, [
				"read",
				`docker://${proxy.host}/faults/disk:v1`,
				"--key",
				keyPath,
				"--offset",
				"0",
				"--length",
				"1",
				"--insecure",
				"--retries",
				"2",
			]);
			expect(r.code).toBe(8);
			expect(r.stderr.trim().split("\n")).toHaveLength(1);
			expect(r.stderr).toMatch(
				/answered 503.*gave up after 2 attempts.*\[NETWORK\]/,
			);
			expect(r.stdout).toBe("");
		} finally {
			proxy.setRule(undefined);
		}
	});
});

describe("a hung registry: bounded waits, logged, and serving goes on", () => {
	it("with the default 30 s timeouts a read still fails after the stall timeout, logs the stall once, and the next read works", async () => {
		const lines: string[] = [];
		// Only the lazy reader's own bounds: the HTTP timeouts are the defaults (30 s, 5 attempts).
		const image = await open(proxy.host, {
			insecure: true,
			tuning: { stallMs: 1500, hedgeMs: 250 },
			log: (l) => lines.push(l),
		});
		try {
			proxy.setRule((req) =>
				isBlobGet(true)(req) ? { kind: "stall" } : undefined,
			);
			const started = Date.now();
			const err = await image.disk.read(3 * MiB, 64 * 1024).then(
				() => undefined,
				(e: unknown) => e,
			);
			const waited = Date.now() - started;
			expect((err as DadiError).code).toBe("NETWORK");
			expect((err as DadiError).message).toMatch(
				/no progress for 1\.5 s.*answering EIO/,
			);
			expect(waited).toBeGreaterThanOrEqual(1400);
			expect(waited).toBeLessThan(3500);
			const stalled = lines.filter((l) => l.startsWith("registry stalled"));
			expect(stalled).toHaveLength(1);
			expect(stalled[0]).toMatch(/bytes \d+-\d+ for 0\.3 s; re-issued/);
			const s = image.stats.toJSON();
			expect(s.stallFailures).toBe(1);
			expect(s.hedges).toBeGreaterThanOrEqual(1);
			// The registry recovers: the same image keeps serving, right bytes.
			proxy.setRule(undefined);
			const got = await image.disk.read(3 * MiB, 64 * 1024);
			expect(got.equals(expected(3 * MiB, 64 * 1024))).toBe(true);
		} finally {
			proxy.setRule(undefined);
			await image.close();
		}
	});
});

describe("the registry restarted mid-read", () => {
	it("a sequential read over a restart completes with the right bytes", async () => {
		const image = await open(reg.host, {
			...FAST,
			retry: { attempts: 10, baseDelayMs: 100, maxDelayMs: 1000 },
		});
		try {
			const step = 256 * 1024;
			let restart: Promise<void> | undefined;
			for (let at = 0; at < disk.length; at += step) {
				if (at === 6 * MiB) {
					restart = reg.restart();
					// Let the registry go down before the next read.
					await new Promise((r) => setTimeout(r, 100));
				}
				const got = await image.disk.read(at, step);
				expect(got.equals(expected(at, step)), `at ${at}`).toBe(true);
			}
			await restart;
			expect(image.stats.retries).toBeGreaterThan(0);
		} finally {
			await image.close();
		}
	});
});
