/**
 * Issue 12, "fail fast": sealing to a docker:// destination checks the registry first — reachable,
 * TLS or plain HTTP as asked, credentials accepted, push allowed — and stops with a clear error
 * before anything is built. Against the real registry (distribution 2.8) on loopback.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryClient } from "../src/registry/client.js";
import { checkPushAccess } from "../src/registry/push-check.js";
import {
	BIN,
	cleanupTempDirs,
	prng,
	runCli,
	tempDir,
	writeDisk,
	writeKey,
} from "./helpers.js";
import { startFaultProxy } from "./registry/fault-proxy.js";
import {
	freePort,
	type RunningRegistry,
	startRegistry,
} from "./registry/harness.js";

const MiB = 1 << 20;
let dir: string;
let keyPath: string;
const running: RunningRegistry[] = [];

beforeAll(async () => {
	dir = await tempDir();
	keyPath = (await writeKey(dir)).path;
	await writeDisk(join(dir, "d.img"), 16 * MiB, [
		{ at: 0, bytes: prng("fail-fast", 4 * MiB) },
	]);
});

afterAll(async () => {
	await Promise.all(running.map((r) => r.stop()));
	await cleanupTempDirs();
});

async function registry(
	o: Parameters<typeof startRegistry>[0],
): Promise<RunningRegistry> {
	const r = await startRegistry(o);
	running.push(r);
	return r;
}

/** Seals the disk to `dest` with progress on (not --quiet), so any sealing would show on stderr. */
function seal(dest: string, extra: string[]) {
	return runCli(BIN.seal, [
		"seal",
		`raw:${join(dir, "d.img")}`,
		dest,
		"--key",
		keyPath,
		...extra,
	]);
}

/** Nothing was sealed: no hashing or sealing progress was ever printed. */
function expectNothingBuilt(stderr: string): void {
	expect(stderr).not.toMatch(/sealing|hashing|building|applying/);
}

describe("sealing to a registry checks it before building anything", () => {
	it("a plain-HTTP registry without --insecure: the error says to pass --insecure", async () => {
		const reg = await registry({});
		const r = await seal(`docker://${reg.host}/ff/disk:v1`, ["--retries", "1"]);
		expect(r.code).toBe(8);
		expect(r.stderr).toMatch(/plain HTTP.*--insecure.*\[NETWORK\]/);
		expect(r.stderr).toContain(reg.host);
		expectNothingBuilt(r.stderr);
	});

	it("a TLS registry with --insecure: the error says it speaks HTTPS (drop --insecure)", async () => {
		const reg = await registry({ tls: true });
		const r = await seal(`docker://${reg.host}/ff/disk:v1`, ["--insecure"]);
		expect(r.code).toBe(8);
		expect(r.stderr).toMatch(/speaks HTTPS.*without --insecure/);
		expectNothingBuilt(r.stderr);
		// and an untrusted certificate is found before sealing too
		const untrusted = await seal(`docker://${reg.host}/ff/disk:v1`, []);
		expect(untrusted.code).toBe(8);
		expect(untrusted.stderr).toMatch(/not trusted.*--ca-file/);
		expectNothingBuilt(untrusted.stderr);
	});

	it("an unreachable registry is a NETWORK error before sealing", async () => {
		const port = await freePort();
		const r = await seal(`docker://127.0.0.1:${port}/ff/disk:v1`, [
			"--insecure",
			"--retries",
			"1",
		]);
		expect(r.code).toBe(8);
		expect(r.stderr).toMatch(/connection refused.*\[NETWORK\]/);
		expectNothingBuilt(r.stderr);
	});

	it("wrong or missing credentials: REMOTE_DENIED naming the registry, before sealing", async () => {
		const reg = await registry({ auth: "htpasswd" });
		const wrong = await seal(`docker://${reg.host}/ff/disk:v1`, [
			"--insecure",
			"--creds",
			`${reg.username}:nope`,
		]);
		expect(wrong.code).toBe(8);
		expect(wrong.stderr).toMatch(/refused the credentials from --creds/);
		expect(wrong.stderr).toContain(reg.host);
		expect(wrong.stderr).toContain("REMOTE_DENIED");
		expectNothingBuilt(wrong.stderr);
		const emptyAuth = join(dir, "empty-auth.json");
		await writeFile(emptyAuth, JSON.stringify({ auths: {} }));
		const none = await seal(`docker://${reg.host}/ff/disk:v1`, [
			"--insecure",
			"--authfile",
			emptyAuth,
		]);
		expect(none.code).toBe(8);
		expect(none.stderr).toMatch(
			new RegExp(`${reg.host}.*requires credentials.*--creds.*REMOTE_DENIED`),
		);
		expectNothingBuilt(none.stderr);
	});

	it("credentials that may pull but not push: REMOTE_DENIED saying who may not push where and what to do", async () => {
		const reg = await registry({ auth: "token" });
		const issuer = reg.tokenIssuer;
		if (!issuer) throw new Error("no token issuer");
		issuer.grant = (_u, _t, _n, actions) => actions.filter((a) => a === "pull");
		const r = await seal(`docker://${reg.host}/ff/disk:v1`, [
			"--insecure",
			"--creds",
			`${reg.username}:${reg.password}`,
		]);
		expect(r.code).toBe(8);
		expect(r.stderr).toMatch(
			new RegExp(
				`docker://${reg.host}/ff/disk: .*credentials from --creds.*not allowed to push.*push access.*\\[REMOTE_DENIED\\]`,
			),
		);
		expectNothingBuilt(r.stderr);
		// Anonymous: told to pass credentials.
		const anonymous = await seal(`docker://${reg.host}/ff/disk:v1`, [
			"--insecure",
		]);
		expect(anonymous.code).toBe(8);
		expect(anonymous.stderr).toMatch(/--creds/);
		expect(anonymous.stderr).toContain("REMOTE_DENIED");
		expectNothingBuilt(anonymous.stderr);
		expect(issuer.requests.length).toBeGreaterThan(0);
	});

	it("the check starts an upload and cancels it: the registry keeps no upload session", async () => {
		const reg = await registry({});
		const proxy = await startFaultProxy(reg);
		const client = new RegistryClient(proxy.host, { insecure: true });
		try {
			await checkPushAccess(client, "ff/checked");
		} finally {
			await client.close();
			await proxy.close();
		}
		const seen = proxy.requests.map((r) => `${r.method} ${r.url}`);
		expect(seen[0]).toBe("GET /v2/");
		expect(seen[1]).toBe("POST /v2/ff/checked/blobs/uploads/");
		const cancel = proxy.requests.find((r) => r.method === "DELETE");
		expect(cancel?.url).toMatch(
			/^\/v2\/ff\/checked\/blobs\/uploads\/[0-9a-f-]{36}\?/,
		);
		// The session is gone: asking for its status is BLOB_UPLOAD_UNKNOWN.
		const status = await fetch(`${reg.url}${cancel?.url}`);
		expect(status.status).toBe(404);
		expect(await status.text()).toContain("BLOB_UPLOAD_UNKNOWN");
		// and with push allowed, the seal itself goes through
		const ok = await seal(`docker://${reg.host}/ff/disk:v1`, [
			"--insecure",
			"--json",
		]);
		expect(ok.code, ok.stderr).toBe(0);
		expect(JSON.parse(ok.stdout).push.blobs.uploaded).toBe(2);
	});
});
