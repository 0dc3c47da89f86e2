/**
 * Registry authentication against the real registry: HTTP Basic (htpasswd), Bearer tokens from a
 * token server (the challenge flow, scoped tokens cached until expiry), credentials from an auth
 * file, and TLS with a private CA. Failures are REMOTE_DENIED / NETWORK (exit 8) with a hint, and
 * never print a secret.
 */
import { createHash } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readKeyFile } from "../src/cli/common.js";
import { openRemoteSealedImage } from "../src/lazy/open-remote.js";
import { parseReference } from "../src/oci/reference.js";
import {
	BIN,
	cleanupTempDirs,
	prng,
	runCli,
	tempDir,
	writeDisk,
	writeKey,
} from "./helpers.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";

const MiB = 1 << 20;
let dir: string;
let keyPath: string;
let disk: Buffer;
const running: RunningRegistry[] = [];

beforeAll(async () => {
	dir = await tempDir();
	keyPath = (await writeKey(dir)).path;
	disk = await writeDisk(join(dir, "d.img"), 8 * MiB, [
		{ at: 0, bytes: prng("a", 3 * MiB) },
		{ at: 5 * MiB, bytes: prng("b", MiB) },
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

function push(reg: RunningRegistry, extra: string[]) {
	return runCli(BIN.seal, [
		"seal",
		`raw:${join(dir, "d.img")}`,
		`docker://${reg.host}/sec/disk:v1`,
		"--key",
		keyPath,
		"--quiet",
		...extra,
	]);
}

function read(reg: RunningRegistry, extra: string[]) {
	return runCli(BIN.guest, [
		"read",
		`docker://${reg.host}/sec/disk:v1`,
		"--key",
		keyPath,
		"--offset",
		String(5 * MiB),
		"--length",
		String(MiB),
		"--json",
		"--retries",
		"2",
		...extra,
	]);
}

const want = () =>
	createHash("sha256")
		.update(disk.subarray(5 * MiB, 6 * MiB))
		.digest("hex");

function expectNoSecret(text: string, reg: RunningRegistry): void {
	expect(text).not.toContain(reg.password as string);
	expect(text).not.toMatch(/Bearer [A-Za-z0-9]/);
	expect(text).not.toMatch(/Basic [A-Za-z0-9]/);
}

describe("basic auth (htpasswd)", () => {
	it("pushes and reads with --creds or an auth file; refuses without or with a wrong password", async () => {
		const reg = await registry({ auth: "htpasswd" });
		const creds = `${reg.username}:${reg.password}`;
		const pushed = await push(reg, ["--insecure", "--creds", creds]);
		expect(pushed.code, pushed.stderr).toBe(0);

		const good = await read(reg, ["--insecure", "--creds", creds]);
		expect(good.code, good.stderr).toBe(0);
		expect(JSON.parse(good.stdout).sha256).toBe(want());

		const none = await read(reg, [
			"--insecure",
			"--authfile",
			join(dir, "none.json"),
		]);
		expect(none.code).toBe(3); // an explicit auth file must exist
		await writeFile(join(dir, "empty.json"), JSON.stringify({ auths: {} }));
		const anonymous = await read(reg, [
			"--insecure",
			"--authfile",
			join(dir, "empty.json"),
		]);
		expect(anonymous.code).toBe(8);
		expect(anonymous.stderr).toMatch(/requires credentials.*--creds/);
		expect(anonymous.stderr).toContain("REMOTE_DENIED");

		const wrong = await read(reg, [
			"--insecure",
			"--creds",
			`${reg.username}:nope`,
		]);
		expect(wrong.code).toBe(8);
		expect(wrong.stderr).toMatch(/refused the credentials/);
		expectNoSecret(wrong.stderr + wrong.stdout, reg);

		const authFile = join(dir, "config.json");
		await writeFile(
			authFile,
			JSON.stringify({
				auths: { [reg.host]: { auth: Buffer.from(creds).toString("base64") } },
			}),
		);
		const fromFile = await read(reg, ["--insecure", "--authfile", authFile]);
		expect(fromFile.code, fromFile.stderr).toBe(0);
		expect(JSON.parse(fromFile.stdout).sha256).toBe(want());
	});
});

describe("bearer tokens", () => {
	it("gets scoped tokens from the challenge's realm, caches them, and is denied without access", async () => {
		const reg = await registry({ auth: "token" });
		const issuer = reg.tokenIssuer;
		if (!issuer) throw new Error("no token issuer");
		const creds = `${reg.username}:${reg.password}`;
		const pushed = await push(reg, ["--insecure", "--creds", creds]);
		expect(pushed.code, pushed.stderr).toBe(0);
		expect(
			issuer.requests.some(
				(r) =>
					r.user === reg.username &&
					r.scope.includes("repository:sec/disk:pull,push"),
			),
		).toBe(true);

		const before = issuer.requests.length;
		const good = await read(reg, ["--insecure", "--creds", creds]);
		expect(good.code, good.stderr).toBe(0);
		expect(JSON.parse(good.stdout).sha256).toBe(want());
		// One token for the pull scope serves every request of the read (manifest, config, ranges).
		const used = issuer.requests.slice(before);
		expect(used.length).toBe(1);
		expect(used[0]?.scope).toEqual(["repository:sec/disk:pull"]);
		expect(JSON.parse(good.stdout).fetched.requests).toBeGreaterThan(4);

		const anonymous = await read(reg, [
			"--insecure",
			"--authfile",
			join(dir, "empty.json"),
		]);
		expect(anonymous.code).toBe(8);
		expect(anonymous.stderr).toContain("REMOTE_DENIED");
		const wrong = await read(reg, [
			"--insecure",
			"--creds",
			`${reg.username}:x`,
		]);
		expect(wrong.code).toBe(8);
		expectNoSecret(wrong.stderr, reg);

		// A user granted pull only cannot push: denied, not retried forever.
		issuer.grant = (_u, _t, _n, actions) => actions.filter((a) => a === "pull");
		const started = Date.now();
		const refused = await runCli(BIN.seal, [
			"copy",
			`docker://${reg.host}/sec/disk:v1`,
			`docker://${reg.host}/sec/other:v1`,
			"--insecure",
			"--creds",
			creds,
		]);
		expect(refused.code).toBe(8);
		expect(refused.stderr).toContain("REMOTE_DENIED");
		expect(Date.now() - started).toBeLessThan(20_000);
		issuer.grant = (_u, _t, _n, actions) => actions;
	});

	it("fetches a new token when the cached one expires", async () => {
		const reg = await registry({ auth: "token", tokenTtlSeconds: 2 });
		const issuer = reg.tokenIssuer;
		if (!issuer) throw new Error("no token issuer");
		const creds = `${reg.username}:${reg.password}`;
		expect((await push(reg, ["--insecure", "--creds", creds])).code).toBe(0);
		const ref = parseReference(`docker://${reg.host}/sec/disk:v1`);
		if (ref.transport !== "docker") throw new Error("ref");
		const [username, password] = creds.split(":") as [string, string];
		const image = await openRemoteSealedImage(ref, await readKeyFile(keyPath), {
			insecure: true,
			credentials: { username, password, source: "test" },
		});
		try {
			const n0 = issuer.requests.length;
			await image.disk.read(0, 64 * 1024);
			expect(issuer.requests.length).toBe(n0); // still valid
			await new Promise((r) => setTimeout(r, 2200));
			expect(
				(await image.disk.read(5 * MiB, 64 * 1024)).equals(
					disk.subarray(5 * MiB, 5 * MiB + 64 * 1024),
				),
			).toBe(true);
			expect(issuer.requests.length).toBe(n0 + 1);
		} finally {
			await image.close();
		}
	});
});

describe("TLS with a private CA", () => {
	it("trusts the registry with --ca-file, and explains the failure without it", async () => {
		const reg = await registry({ tls: true });
		const ca = reg.caFile as string;
		const pushed = await push(reg, ["--ca-file", ca]);
		expect(pushed.code, pushed.stderr).toBe(0);
		const good = await read(reg, ["--ca-file", ca]);
		expect(good.code, good.stderr).toBe(0);
		expect(JSON.parse(good.stdout).sha256).toBe(want());
		const untrusted = await read(reg, []);
		expect(untrusted.code).toBe(8);
		expect(untrusted.stderr).toMatch(/not trusted.*--ca-file/);
		const notPem = await read(reg, ["--ca-file", keyPath]);
		expect(notPem.code).toBe(3);
	});
});
