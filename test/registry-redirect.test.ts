/**
 * Redirects to blob storage (registries behind S3 and the like answer blob GETs with 307). Debian's
 * registry here is configured without redirects, so this unit test uses two small loopback servers:
 * a "registry" that demands Basic auth and redirects blob GETs, and a "blob store" on another
 * origin that must never see the registry credentials.
 */
import { createHash } from "node:crypto";
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { blobStream, readRange } from "../src/registry/blob-download.js";
import { RegistryClient } from "../src/registry/client.js";
import { prng, rejection } from "./helpers.js";
import { type Listening, listenOnLoopback } from "./registry/listen.js";

const blob = prng("redirected blob", 300_000);
const digest = `sha256:${createHash("sha256").update(blob).digest("hex")}`;
const desc = {
	mediaType: "application/octet-stream",
	digest,
	size: blob.length,
};
let registry: Listening;
let store: Listening;
const storeSaw: (string | undefined)[] = [];
let redirectTo = "";

beforeAll(async () => {
	store = await listenOnLoopback(
		http.createServer((req, res) => {
			storeSaw.push(req.headers.authorization);
			const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
			if (!range) {
				res.writeHead(200, { "content-length": blob.length }).end(blob);
				return;
			}
			const a = Number(range[1]);
			const b = range[2] ? Number(range[2]) : blob.length - 1;
			res
				.writeHead(206, {
					"content-range": `bytes ${a}-${b}/${blob.length}`,
					"content-length": b - a + 1,
				})
				.end(blob.subarray(a, b + 1));
		}),
	);
	registry = await listenOnLoopback(
		http.createServer((req, res) => {
			if (
				req.headers.authorization !==
				`Basic ${Buffer.from("u:p").toString("base64")}`
			) {
				res.writeHead(401, { "www-authenticate": 'Basic realm="test"' }).end();
				return;
			}
			res.writeHead(307, { location: redirectTo }).end();
		}),
	);
});

afterAll(async () => {
	await registry?.close();
	await store?.close();
});

function client(): RegistryClient {
	return new RegistryClient(`127.0.0.1:${registry.port}`, {
		insecure: true,
		credentials: { username: "u", password: "p", source: "test" },
		retry: { attempts: 2, baseDelayMs: 1 },
	});
}

describe("redirects to blob storage", () => {
	it("follows them for ranges and whole blobs, without sending the registry's Authorization elsewhere", async () => {
		redirectTo = `http://localhost:${store.port}/bucket/object?sig=abc`;
		const c = client();
		try {
			const got = await readRange(c, "r", desc, 1000, 5000);
			expect(got.equals(blob.subarray(1000, 6000))).toBe(true);
			const parts: Buffer[] = [];
			for await (const p of blobStream(c, "r", desc)) parts.push(p);
			expect(Buffer.concat(parts).equals(blob)).toBe(true);
			expect(storeSaw.length).toBe(2);
			expect(storeSaw.every((a) => a === undefined)).toBe(true);
		} finally {
			await c.close();
		}
	});

	it("refuses redirects to other schemes and redirect loops", async () => {
		const c = client();
		try {
			redirectTo = "file:///etc/passwd";
			expect((await rejection(readRange(c, "r", desc, 0, 10))).code).toBe(
				"REMOTE_PROTOCOL",
			);
			redirectTo = `http://127.0.0.1:${registry.port}/v2/r/blobs/${digest}`;
			const loop = await rejection(readRange(c, "r", desc, 0, 10));
			expect(loop.code).toBe("REMOTE_PROTOCOL");
			expect(loop.message).toMatch(/redirects/);
		} finally {
			await c.close();
		}
	});
});
