/**
 * Proves the registry test infrastructure (test/registry/) against the real distribution registry,
 * with plain fetch, curl and skopeo (never dadi's own client).
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { access, readFile } from "node:fs/promises";
import { Agent, fetch as undiciFetch } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { prng } from "./helpers.js";
import {
	type FaultProxy,
	faultOnce,
	isBlobGet,
	startFaultProxy,
} from "./registry/fault-proxy.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";

const sha256 = (b: Buffer) =>
	`sha256:${createHash("sha256").update(b).digest("hex")}`;

type Fetch = (url: string, init?: RequestInit) => Promise<Response>;

function sh(
	cmd: string,
	args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
	return new Promise((resolve) => {
		execFile(cmd, args, (err, stdout, stderr) => {
			const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
			resolve({ code, stdout, stderr });
		});
	});
}

/** Monolithic blob upload: POST /blobs/uploads/, then PUT <Location>&digest=. */
async function pushBlob(
	f: Fetch,
	base: string,
	name: string,
	data: Buffer,
	headers: Record<string, string> = {},
): Promise<{ location: string; put: Response }> {
	const post = await f(`${base}/v2/${name}/blobs/uploads/`, {
		method: "POST",
		headers,
	});
	expect(post.status).toBe(202);
	const location = post.headers.get("location") ?? "";
	const u = new URL(location, base);
	u.searchParams.set("digest", sha256(data));
	const put = await f(u.toString(), {
		method: "PUT",
		headers: { ...headers, "Content-Type": "application/octet-stream" },
		body: data,
	});
	return { location, put };
}

/** Pushes a minimal OCI image (empty config, no layers) as name:tag. */
async function pushImage(
	f: Fetch,
	base: string,
	name: string,
	tag: string,
): Promise<void> {
	const config = Buffer.from("{}");
	expect((await pushBlob(f, base, name, config)).put.status).toBe(201);
	const manifest = JSON.stringify({
		schemaVersion: 2,
		mediaType: "application/vnd.oci.image.manifest.v1+json",
		config: {
			mediaType: "application/vnd.oci.image.config.v1+json",
			digest: sha256(config),
			size: config.length,
		},
		layers: [],
	});
	const res = await f(`${base}/v2/${name}/manifests/${tag}`, {
		method: "PUT",
		headers: { "Content-Type": "application/vnd.oci.image.manifest.v1+json" },
		body: manifest,
	});
	expect(res.status).toBe(201);
}

/** Reads a body until it ends or fails; returns what arrived and the failure, if any. */
async function readAll(
	res: Response,
): Promise<{ bytes: Buffer; error?: unknown }> {
	const chunks: Buffer[] = [];
	try {
		for await (const c of res.body as unknown as AsyncIterable<Uint8Array>)
			chunks.push(Buffer.from(c));
		return { bytes: Buffer.concat(chunks) };
	} catch (error) {
		return { bytes: Buffer.concat(chunks), error };
	}
}

/** Parses `Bearer realm="...",service="...",scope="..."`. */
function parseChallenge(h: string | null): Record<string, string> {
	const out: Record<string, string> = {};
	expect(h).toMatch(/^Bearer /);
	for (const m of (h ?? "").matchAll(/(\w+)="([^"]*)"/g))
		out[m[1] as string] = m[2] as string;
	return out;
}

const blob = prng("registry-harness", 64 * 1024);
const blobDigest = sha256(blob);

describe("plain registry", () => {
	let reg: RunningRegistry;
	beforeAll(async () => {
		reg = await startRegistry();
	});
	afterAll(() => reg?.stop());

	it("takes a monolithic upload and answers a Range GET with 206", async () => {
		const { location, put } = await pushBlob(fetch, reg.url, "t/plain", blob);
		expect(location.startsWith(`${reg.url}/v2/t/plain/blobs/uploads/`)).toBe(
			true,
		);
		expect(put.status).toBe(201);
		expect(put.headers.get("docker-content-digest")).toBe(blobDigest);

		const head = await fetch(`${reg.url}/v2/t/plain/blobs/${blobDigest}`, {
			method: "HEAD",
		});
		expect(head.status).toBe(200);
		expect(head.headers.get("content-length")).toBe(String(blob.length));

		const res = await fetch(`${reg.url}/v2/t/plain/blobs/${blobDigest}`, {
			headers: { Range: "bytes=1000-1999" },
		});
		expect(res.status).toBe(206);
		expect(res.headers.get("content-range")).toBe(
			`bytes 1000-1999/${blob.length}`,
		);
		expect(Buffer.from(await res.arrayBuffer())).toEqual(
			blob.subarray(1000, 2000),
		);
	});

	it("answers a Range past the end 416 with a lying Content-Length (distribution 2.8 quirk)", async () => {
		const res = await fetch(`${reg.url}/v2/t/plain/blobs/${blobDigest}`, {
			headers: { Range: `bytes=${blob.length}-${blob.length + 99}` },
		});
		expect(res.status).toBe(416);
		expect(res.headers.get("content-range")).toBe(`bytes */${blob.length}`);
		// Content-Length is the blob's size, the body a short message, then the connection closes.
		expect(res.headers.get("content-length")).toBe(String(blob.length));
		const { bytes, error } = await readAll(res);
		expect(error).toBeDefined();
		expect(bytes.toString()).toBe("invalid range: failed to overlap\n");
	});

	it("keeps blobs across a restart on the same port", async () => {
		const host = reg.host;
		await reg.restart();
		expect(reg.host).toBe(host);
		const res = await fetch(`${reg.url}/v2/t/plain/blobs/${blobDigest}`);
		expect(res.status).toBe(200);
		expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(blobDigest);
	});

	it("stop() is idempotent, refuses connections and removes its files", async () => {
		const r = await startRegistry();
		await Promise.all([r.stop(), r.stop()]);
		await r.stop();
		await expect(fetch(`${r.url}/v2/`)).rejects.toThrow();
		await expect(access(r.storageDir)).rejects.toThrow();
	});
});

describe("htpasswd registry", () => {
	let reg: RunningRegistry;
	beforeAll(async () => {
		reg = await startRegistry({ auth: "htpasswd" });
	});
	afterAll(() => reg?.stop());

	it("answers 401 without credentials and 200 with them, over plain HTTP", async () => {
		const anon = await fetch(`${reg.url}/v2/`);
		expect(anon.status).toBe(401);
		expect(anon.headers.get("www-authenticate")).toMatch(/^Basic realm=/);
		const basic = (u: string, p: string) => ({
			Authorization: `Basic ${Buffer.from(`${u}:${p}`).toString("base64")}`,
		});
		const wrong = await fetch(`${reg.url}/v2/`, {
			headers: basic(reg.username as string, "wrong"),
		});
		expect(wrong.status).toBe(401);
		const auth = basic(reg.username as string, reg.password as string);
		expect((await fetch(`${reg.url}/v2/`, { headers: auth })).status).toBe(200);
		const { put } = await pushBlob(fetch, reg.url, "t/basic", blob, auth);
		expect(put.status).toBe(201);
	});
});

describe("token registry", () => {
	let reg: RunningRegistry;
	beforeAll(async () => {
		reg = await startRegistry({ auth: "token" });
	});
	afterAll(() => reg?.stop());

	const getToken = async (
		challenge: Record<string, string>,
		creds?: [string, string],
	) => {
		const u = new URL(challenge.realm as string);
		u.searchParams.set("service", challenge.service as string);
		if (challenge.scope) u.searchParams.append("scope", challenge.scope);
		const headers: Record<string, string> = {};
		if (creds)
			headers.Authorization = `Basic ${Buffer.from(creds.join(":")).toString("base64")}`;
		return fetch(u, { headers });
	};

	it("challenges, issues tokens, and accepts them for push and pull", async () => {
		const issuer = reg.tokenIssuer;
		if (!issuer) throw new Error("no issuer");
		const creds: [string, string] = [
			reg.username as string,
			reg.password as string,
		];
		const name = "t/token";

		const denied = await fetch(`${reg.url}/v2/${name}/blobs/uploads/`, {
			method: "POST",
		});
		expect(denied.status).toBe(401);
		const ch = parseChallenge(denied.headers.get("www-authenticate"));
		// distribution 2.8 lists the actions in either order (a Go map): "pull,push" or "push,pull".
		expect(ch.scope).toMatch(
			new RegExp(`^repository:${name}:(pull,push|push,pull)$`),
		);
		expect(ch).toEqual({
			realm: issuer.url,
			service: "dadi-test-registry",
			scope: ch.scope,
		});

		expect((await getToken(ch, [creds[0], "wrong"])).status).toBe(401);
		const tr = await getToken(ch, creds);
		expect(tr.status).toBe(200);
		const body = (await tr.json()) as Record<string, unknown>;
		expect(body.expires_in).toBe(300);
		expect(body.access_token).toBe(body.token);
		expect(typeof body.issued_at).toBe("string");
		const auth = { Authorization: `Bearer ${body.token as string}` };
		const { put } = await pushBlob(fetch, reg.url, name, blob, auth);
		expect(put.status).toBe(201);
		expect(issuer.requests.at(-1)).toEqual({
			scope: [ch.scope],
			service: "dadi-test-registry",
			user: creds[0],
		});

		// A pull-only token pulls (Range too) but cannot push.
		const pull = await getToken(
			{ ...ch, scope: `repository:${name}:pull` },
			creds,
		);
		const pullAuth = {
			Authorization: `Bearer ${((await pull.json()) as { token: string }).token}`,
		};
		const got = await fetch(`${reg.url}/v2/${name}/blobs/${blobDigest}`, {
			headers: { ...pullAuth, Range: "bytes=0-9" },
		});
		expect(got.status).toBe(206);
		expect(Buffer.from(await got.arrayBuffer())).toEqual(blob.subarray(0, 10));
		const push = await fetch(`${reg.url}/v2/${name}/blobs/uploads/`, {
			method: "POST",
			headers: pullAuth,
		});
		expect(push.status).toBe(401);
		expect(push.headers.get("www-authenticate")).toContain(
			'error="insufficient_scope"',
		);

		// Anonymous: a token granting nothing.
		const anon = await getToken({ ...ch, scope: `repository:${name}:pull` });
		expect(anon.status).toBe(200);
		const anonAuth = {
			Authorization: `Bearer ${((await anon.json()) as { token: string }).token}`,
		};
		const anonGet = await fetch(`${reg.url}/v2/${name}/blobs/${blobDigest}`, {
			headers: anonAuth,
		});
		expect(anonGet.status).toBe(401);
		expect(issuer.requests.at(-1)?.user).toBeUndefined();
	});

	it("rejects expired and foreign tokens with a Bearer challenge", async () => {
		const issuer = reg.tokenIssuer;
		if (!issuer) throw new Error("no issuer");
		const access = [{ type: "repository", name: "t/token", actions: ["pull"] }];
		const url = `${reg.url}/v2/t/token/blobs/${blobDigest}`;
		const pusher = issuer.mint({
			access: [
				{ type: "repository", name: "t/token", actions: ["pull", "push"] },
			],
		});
		const { put } = await pushBlob(fetch, reg.url, "t/token", blob, {
			Authorization: `Bearer ${pusher}`,
		});
		expect(put.status).toBe(201);
		const ok = issuer.mint({ access });
		expect(
			(await fetch(url, { headers: { Authorization: `Bearer ${ok}` } })).status,
		).toBe(200);
		// The registry allows 60 s of clock skew on exp and nbf.
		const lenient = issuer.mint({ access, ttlSeconds: -30 });
		expect(
			(await fetch(url, { headers: { Authorization: `Bearer ${lenient}` } }))
				.status,
		).toBe(200);
		for (const token of [
			issuer.mint({ access, ttlSeconds: -120 }), // past the leeway
			issuer.mint({ access, audience: "another-service" }),
			issuer.mint({ access, issuer: "another-issuer" }),
			`${ok.slice(0, -4)}AAAA`, // bad signature
		]) {
			const res = await fetch(url, {
				headers: { Authorization: `Bearer ${token}` },
			});
			expect(res.status).toBe(401);
			const ch = parseChallenge(res.headers.get("www-authenticate"));
			expect(ch.realm).toBe(issuer.url);
			expect(ch.scope).toBe("repository:t/token:pull");
		}
	});
});

describe("tls registry", () => {
	let reg: RunningRegistry;
	beforeAll(async () => {
		reg = await startRegistry({ tls: true });
	});
	afterAll(() => reg?.stop());

	it("is reachable with the test CA and refused without it", async () => {
		expect(reg.url.startsWith("https://127.0.0.1:")).toBe(true);
		const ok = await sh("curl", [
			"-sS",
			"-o",
			"/dev/null",
			"-w",
			"%{http_code}",
			"--cacert",
			reg.caFile as string,
			`${reg.url}/v2/`,
		]);
		expect(ok.stdout).toBe("200");
		const bad = await sh("curl", ["-sS", `${reg.url}/v2/`]);
		expect(bad.code).toBe(60); // peer certificate cannot be authenticated
		const localhost = await sh("curl", [
			"-sS",
			"--cacert",
			reg.caFile as string,
			`https://localhost:${reg.host.split(":")[1]}/v2/`,
		]);
		expect(localhost.code).toBe(0);
	});

	it("works for skopeo with certDir", async () => {
		const dispatcher = new Agent({
			connect: { ca: await readFile(reg.caFile as string) },
		});
		const f: Fetch = (url, init) =>
			undiciFetch(url, {
				...(init as object),
				dispatcher,
			}) as unknown as Promise<Response>;
		await pushImage(f, reg.url, "t/tls", "v1");
		await dispatcher.close();
		const ok = await sh("skopeo", [
			"list-tags",
			"--cert-dir",
			reg.certDir as string,
			`docker://${reg.host}/t/tls`,
		]);
		expect(ok.code, ok.stderr).toBe(0);
		expect(JSON.parse(ok.stdout).Tags).toEqual(["v1"]);
		const bad = await sh("skopeo", ["list-tags", `docker://${reg.host}/t/tls`]);
		expect(bad.code).not.toBe(0);
		expect(bad.stderr).toMatch(/certificate/);
	});
});

describe("fault proxy", () => {
	let reg: RunningRegistry;
	let proxy: FaultProxy;
	let blobUrl: string;
	beforeAll(async () => {
		reg = await startRegistry();
		proxy = await startFaultProxy(reg);
		blobUrl = `${proxy.url}/v2/t/fault/blobs/${blobDigest}`;
	});
	afterAll(async () => {
		await proxy?.close();
		await reg?.stop();
	});
	const last = () => proxy.requests.at(-1);

	it("forwards untouched by default, uploads included, Location pointing at the proxy", async () => {
		proxy.setRule(undefined);
		const big = prng("big upload", 8 << 20);
		const { location, put } = await pushBlob(fetch, proxy.url, "t/fault", big);
		expect(location.startsWith(`${proxy.url}/v2/t/fault/blobs/uploads/`)).toBe(
			true,
		);
		expect(put.status).toBe(201);
		expect((await pushBlob(fetch, proxy.url, "t/fault", blob)).put.status).toBe(
			201,
		);
		const res = await fetch(blobUrl, { headers: { Range: "bytes=10-19" } });
		expect(res.status).toBe(206);
		expect(Buffer.from(await res.arrayBuffer())).toEqual(blob.subarray(10, 20));
		expect(last()?.method).toBe("GET");
		expect(last()?.fault).toBeUndefined();
		expect(last()?.headers.range).toBe("bytes=10-19");
		expect(proxy.requests.map((r) => r.n)).toEqual(
			proxy.requests.map((_, i) => i),
		);
	});

	it("status: answers without forwarding, Retry-After included", async () => {
		proxy.setRule(() => ({
			kind: "status",
			status: 429,
			retryAfter: "1",
			body: "slow down",
		}));
		const res = await fetch(blobUrl);
		expect(res.status).toBe(429);
		expect(res.headers.get("retry-after")).toBe("1");
		expect(await res.text()).toBe("slow down");
		expect(last()?.fault).toBe("status");
		proxy.setRule(faultOnce(isBlobGet(), { kind: "status", status: 503 }));
		expect((await fetch(blobUrl)).status).toBe(503);
		const again = await fetch(blobUrl);
		expect(again.status).toBe(200);
		expect(last()?.fault).toBeUndefined();
		await again.arrayBuffer();
	});

	it("drop-before-headers: the request fails", async () => {
		proxy.setRule(() => ({ kind: "drop-before-headers" }));
		await expect(fetch(blobUrl)).rejects.toThrow();
		expect(last()?.fault).toBe("drop-before-headers");
	});

	it("drop-mid-body: headers, about half the body, then a reset", async () => {
		proxy.setRule(() => ({ kind: "drop-mid-body" }));
		const res = await fetch(blobUrl);
		expect(res.status).toBe(200);
		expect(res.headers.get("content-length")).toBe(String(blob.length));
		const { bytes, error } = await readAll(res);
		expect(error).toBeDefined();
		expect(bytes.length).toBeLessThanOrEqual(blob.length / 2);
		expect(bytes).toEqual(blob.subarray(0, bytes.length));
	});

	it("short-body: upstream Content-Length, fewer bytes, then end of connection", async () => {
		proxy.setRule(() => ({ kind: "short-body" }));
		const res = await fetch(blobUrl, { headers: { Range: "bytes=0-999" } });
		expect(res.status).toBe(206);
		expect(res.headers.get("content-length")).toBe("1000");
		const { bytes, error } = await readAll(res);
		expect(error).toBeDefined();
		expect(bytes.length).toBe(750);
		expect(bytes).toEqual(blob.subarray(0, 750));
		// curl sees the same: a transfer closed with bytes remaining.
		const c = await sh("curl", ["-sS", "-o", "/dev/null", blobUrl]);
		expect(c.code).toBe(18); // CURLE_PARTIAL_FILE
	});

	it("flip-byte: one byte XOR 0xff, in the middle or at `at`", async () => {
		proxy.setRule(() => ({ kind: "flip-byte" }));
		const got = Buffer.from(await (await fetch(blobUrl)).arrayBuffer());
		expect(got.length).toBe(blob.length);
		const diff = [...got.keys()].filter((i) => got[i] !== blob[i]);
		expect(diff).toEqual([blob.length / 2]);
		expect((got[blob.length / 2] as number) ^ 0xff).toBe(blob[blob.length / 2]);
		proxy.setRule(() => ({ kind: "flip-byte", at: 3 }));
		const r = await fetch(blobUrl, { headers: { Range: "bytes=100-199" } });
		expect(r.status).toBe(206);
		const part = Buffer.from(await r.arrayBuffer());
		expect(part[3]).toBe((blob[103] as number) ^ 0xff);
		expect(part.subarray(4)).toEqual(blob.subarray(104, 200));
	});

	it("wrong-content-range: the range header claims start+1, the bytes are unchanged", async () => {
		proxy.setRule(() => ({ kind: "wrong-content-range" }));
		const res = await fetch(blobUrl, { headers: { Range: "bytes=100-199" } });
		expect(res.status).toBe(206);
		expect(res.headers.get("content-range")).toBe(
			`bytes 101-200/${blob.length}`,
		);
		expect(Buffer.from(await res.arrayBuffer())).toEqual(
			blob.subarray(100, 200),
		);
	});

	it("ignore-range: 200 with the whole body", async () => {
		proxy.setRule(() => ({ kind: "ignore-range" }));
		const res = await fetch(blobUrl, { headers: { Range: "bytes=100-199" } });
		expect(res.status).toBe(200);
		expect(res.headers.get("content-range")).toBeNull();
		expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(blobDigest);
		expect(last()?.headers.range).toBe("bytes=100-199");
	});

	it("delay and trickle: slow but intact", async () => {
		proxy.setRule(() => ({ kind: "delay", ms: 300 }));
		let t0 = Date.now();
		let res = await fetch(blobUrl, { headers: { Range: "bytes=0-99" } });
		expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
		expect(Buffer.from(await res.arrayBuffer())).toEqual(blob.subarray(0, 100));

		proxy.setRule(() => ({ kind: "trickle", bytesPerSecond: 8000 }));
		t0 = Date.now();
		res = await fetch(blobUrl, { headers: { Range: "bytes=0-3999" } });
		expect(res.status).toBe(206);
		expect(Buffer.from(await res.arrayBuffer())).toEqual(
			blob.subarray(0, 4000),
		);
		expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
		expect(last()?.fault).toBe("trickle");
	});

	it("stall: never answers; the client's AbortSignal ends the wait", async () => {
		proxy.setRule(() => ({ kind: "stall" }));
		const t0 = Date.now();
		await expect(
			fetch(blobUrl, { signal: AbortSignal.timeout(300) }),
		).rejects.toThrow(/abort|timeout/i);
		expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
		expect(last()?.fault).toBe("stall");
		proxy.setRule(undefined);
		expect((await fetch(`${proxy.url}/v2/`)).status).toBe(200);
	});

	it("answers 502 when the registry is down, and forwards again after a restart", async () => {
		proxy.setRule(undefined);
		const dead = await startFaultProxy({ host: "127.0.0.1:1" });
		try {
			expect((await fetch(`${dead.url}/v2/`)).status).toBe(502);
		} finally {
			await dead.close();
		}
		await reg.restart();
		const res = await fetch(blobUrl);
		expect(res.status).toBe(200);
		expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(blobDigest);
	});
});
