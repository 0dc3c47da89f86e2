/**
 * A hostile registry, seen from a real process: answers that break the protocol must end in a
 * coded error (or EIO while serving) — never a crash, a hang or wrong bytes.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ImageKey } from "../src/crypto/image-key.js";
import { DadiError } from "../src/errors.js";
import {
	fetchSealedImage,
	openRemoteSealedImage,
} from "../src/lazy/open-remote.js";
import { parseReference } from "../src/oci/reference.js";
import { blobStream } from "../src/registry/blob-download.js";
import { RegistryClient } from "../src/registry/client.js";
import { killDaemons, startDaemon } from "./daemon.js";
import {
	BIN,
	cleanupTempDirs,
	prng,
	rejection,
	runCli,
	sealDiskToRegistry,
	tempDir,
} from "./helpers.js";
import {
	type Fault,
	type FaultProxy,
	isBlobGet,
	startFaultProxy,
} from "./registry/fault-proxy.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";

const MiB = 1 << 20;
const sh = promisify(execFile);
let reg: RunningRegistry;
let proxy: FaultProxy;
let keyPath: string;
let keyOf: ImageKey;

beforeAll(async () => {
	reg = await startRegistry();
	proxy = await startFaultProxy({ host: reg.host });
	({ keyPath, key: keyOf } = await sealDiskToRegistry(
		reg.host,
		"hostile/disk:v1",
		8 * MiB,
		[{ at: 0, bytes: prng("h", 4 * MiB) }],
	));
});

afterAll(async () => {
	killDaemons();
	await proxy?.close();
	await reg?.stop();
	await cleanupTempDirs();
});

describe("a 206 whose Content-Range is not the range asked for", () => {
	it("dadi-guest read exits 8 with REMOTE_PROTOCOL, no crash", async () => {
		proxy.setRule((req) =>
			isBlobGet(true)(req) ? { kind: "wrong-content-range" } : undefined,
		);
		try {
			const r = await runCli(BIN.guest, [
				"read",
				`docker://${proxy.host}/hostile/disk:v1`,
				"--key",
				keyPath,
				"--offset",
				"0",
				"--length",
				"4k",
				"--insecure",
				"--retries",
				"2",
			]);
			expect(r.stderr).not.toMatch(/Unhandled|uncaught|at .*\.js:\d+/i);
			expect(r.code, r.stderr).toBe(8);
			expect(r.stderr).toMatch(/Content-Range.*\[REMOTE_PROTOCOL\]/);
		} finally {
			proxy.setRule(undefined);
		}
	});
});

describe("serving through a hostile registry", () => {
	it("dadi-guest serve answers EIO for a bad Content-Range and keeps serving", async () => {
		const sock = join(await tempDir(), "nbd.sock");
		const s = await startDaemon(BIN.guest, [
			"serve",
			`docker://${proxy.host}/hostile/disk:v1`,
			"--key",
			keyPath,
			"--insecure",
			"--retries",
			"2",
			"--nbd",
			`unix:${sock}`,
			"--json",
		]);
		const uri = `nbd+unix:///dadi?socket=${sock}`;
		const read = (off: number) =>
			sh("qemu-io", ["-r", "-f", "raw", "-c", `read ${off} 4k`, uri]).then(
				(r) => r.stdout + r.stderr,
				(e: { stdout?: string; stderr?: string }) => `${e.stdout}${e.stderr}`,
			);
		try {
			proxy.setRule((req) =>
				isBlobGet(true)(req) ? { kind: "wrong-content-range" } : undefined,
			);
			expect(await read(2 * MiB)).toMatch(/Input\/output error|failed/i);
			expect(await read(3 * MiB)).toMatch(/Input\/output error|failed/i);
			proxy.setRule(undefined);
			expect(await read(2 * MiB)).toMatch(/read 4096\/4096 bytes/);
			expect(s.child.exitCode).toBeNull();
			expect(s.stderr()).not.toMatch(/Unhandled|RequestAbortedError/);
		} finally {
			proxy.setRule(undefined);
			expect(await s.stop(), s.stderr()).toBe(0);
		}
	});
});

describe("a registry that drips", () => {
	const slowFloor = {
		insecure: true,
		retry: {
			attempts: 2,
			baseDelayMs: 10,
			maxDelayMs: 50,
			maxRetryAfterMs: 1000,
		},
		timeouts: { rateFloor: { windowMs: 1000, minBytes: 1024 } },
	};

	it("a whole blob dripped at one byte every 50 ms fails by the rate floor, not after minutes", async () => {
		const ref = parseReference(`docker://${proxy.host}/hostile/disk:v1`);
		if (ref.transport !== "docker") throw new Error("ref");
		const client = new RegistryClient(ref.registry, slowFloor);
		try {
			const image = await fetchSealedImage(client, ref);
			const layer = image.manifest.layers[0];
			if (!layer) throw new Error("no layer");
			proxy.setRule((req) =>
				req.method === "GET" && req.url.includes(layer.digest)
					? { kind: "drip", everyMs: 50 }
					: undefined,
			);
			const started = Date.now();
			const e = await rejection(
				(async () => {
					for await (const _ of blobStream(client, ref.repository, layer));
				})(),
			);
			expect(e.code).toBe("NETWORK");
			expect(e.message).toMatch(/arrives too slowly.*gave up after 2 attempts/);
			expect(Date.now() - started).toBeLessThan(6000);
		} finally {
			proxy.setRule(undefined);
			await client.close();
		}
	});

	it("a dripped manifest fails within the request deadline for all its attempts", async () => {
		const ref = parseReference(`docker://${proxy.host}/hostile/disk:v1`);
		if (ref.transport !== "docker") throw new Error("ref");
		const client = new RegistryClient(ref.registry, {
			...slowFloor,
			retry: {
				attempts: 5,
				baseDelayMs: 10,
				maxDelayMs: 50,
				maxRetryAfterMs: 1000,
			},
			timeouts: { ...slowFloor.timeouts, requestMs: 2500 },
		});
		proxy.setRule((req) =>
			req.url.includes("/manifests/")
				? { kind: "drip", everyMs: 100 }
				: undefined,
		);
		try {
			const started = Date.now();
			const e = await rejection(fetchSealedImage(client, ref));
			expect(e.code).toBe("NETWORK");
			expect(Date.now() - started).toBeLessThan(6000);
		} finally {
			proxy.setRule(undefined);
			await client.close();
		}
	});
});

describe("random hostile answers (property)", () => {
	it("never crash the process, never give wrong bytes, keep memory bounded", async () => {
		const ref = parseReference(`docker://${proxy.host}/hostile/disk:v1`);
		if (ref.transport !== "docker") throw new Error("ref");
		const disk = prng("h", 4 * MiB);
		const faults: Fault[] = [
			{ kind: "wrong-content-range" },
			{ kind: "short-body" },
			{ kind: "drop-mid-body" },
			{ kind: "drop-before-headers" },
			{ kind: "flip-byte" },
			{ kind: "ignore-range" },
			{ kind: "status", status: 500 },
			{ kind: "status", status: 206 },
			{ kind: "stall" },
			{ kind: "stall-mid-body" },
			{ kind: "delay", ms: 30 },
		];
		const uncaught: unknown[] = [];
		const onUncaught = (e: unknown) => uncaught.push(e);
		process.on("uncaughtException", onUncaught);
		process.on("unhandledRejection", onUncaught);
		const rssBefore = process.memoryUsage().rss;
		try {
			await fc.assert(
				fc.asyncProperty(
					fc.array(fc.option(fc.constantFrom(...faults), { freq: 3 }), {
						minLength: 1,
						maxLength: 24,
					}),
					fc.array(
						fc.tuple(
							fc.nat(4 * MiB - 1),
							fc.integer({ min: 1, max: 256 << 10 }),
						),
						{
							minLength: 1,
							maxLength: 4,
						},
					),
					async (plan, reads) => {
						let i = 0;
						proxy.setRule((req) =>
							isBlobGet(true)(req)
								? (plan[i++ % plan.length] ?? undefined)
								: undefined,
						);
						let image: Awaited<ReturnType<typeof openRemoteSealedImage>>;
						try {
							image = await openRemoteSealedImage(ref, keyOf, {
								insecure: true,
								retry: {
									attempts: 3,
									baseDelayMs: 5,
									maxDelayMs: 20,
									maxRetryAfterMs: 100,
								},
								timeouts: {
									connectMs: 500,
									headersMs: 500,
									bodyMs: 500,
									requestMs: 3000,
								},
								tuning: { stallMs: 700, hedgeMs: 150 },
							});
						} catch (e) {
							expect(e).toBeInstanceOf(DadiError);
							return;
						}
						try {
							for (const [at, n] of reads) {
								const len = Math.min(n, 4 * MiB - at);
								const got = await image.disk
									.read(at, len)
									.catch((e: unknown) => e);
								if (got instanceof Buffer)
									expect(got.equals(disk.subarray(at, at + len))).toBe(true);
								else {
									expect(got).toBeInstanceOf(DadiError);
									expect([
										"NETWORK",
										"REMOTE_PROTOCOL",
										"AUTH_FAILED",
									]).toContain((got as DadiError).code);
								}
							}
						} finally {
							await image.close();
						}
					},
				),
				{ numRuns: 25 },
			);
		} finally {
			proxy.setRule(undefined);
			process.off("uncaughtException", onUncaught);
			process.off("unhandledRejection", onUncaught);
		}
		expect(uncaught).toEqual([]);
		expect(process.memoryUsage().rss - rssBefore).toBeLessThan(300 * MiB);
	});
});
