/**
 * Secret files (the broker's master key, the admin token) that group or others may read are
 * refused by every program that reads one — `dadi-broker init` (an existing master key), `serve`,
 * the admin client commands and `dadi-seal seal --broker-token-file` — naming the file, its mode
 * and the fix, and never printing what the file holds.
 */
import { chmod, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateMasterKeyText } from "../src/broker/master-key.js";
import { POLICIES } from "./broker/harness.js";
import { BIN, cleanupTempDirs, must, runCli, tempDir } from "./helpers.js";

let dir: string;
let master: string;
let token: string;
let tokenText: string;

beforeAll(async () => {
	dir = await tempDir();
	master = join(dir, "master.key");
	token = join(dir, "admin.token");
	await must(
		runCli(BIN.broker, [
			"init",
			"--state",
			join(dir, "state"),
			"--master-key",
			master,
			"--admin-token",
			token,
			"--json",
		]),
	);
	tokenText = (await readFile(token, "utf8")).trim();
});

afterAll(cleanupTempDirs);

/** The refusal every program gives: exit 6, KEY_INVALID, the file, its mode, chmod 600. */
function refused(
	r: { code: number; stderr: string },
	file: string,
	mode: string,
	secret: string,
): void {
	expect(r.code, r.stderr).toBe(6);
	expect(r.stderr).toContain("[KEY_INVALID]");
	expect(r.stderr).toContain(file);
	expect(r.stderr).toContain(`mode ${mode}`);
	expect(r.stderr).toContain(`chmod 600 ${file}`);
	expect(r.stderr).not.toContain(secret);
}

describe("secret file permissions", { timeout: 120_000 }, () => {
	it("init refuses to reuse a master key file that others may read", async () => {
		const key = join(dir, "shared.key");
		const text = generateMasterKeyText();
		await writeFile(key, text, { mode: 0o644 });
		await chmod(key, 0o644);
		const r = await runCli(BIN.broker, [
			"init",
			"--state",
			join(dir, "state-2"),
			"--master-key",
			key,
		]);
		refused(r, key, "0644", text.trim());
		await chmod(key, 0o600);
		await must(
			runCli(BIN.broker, [
				"init",
				"--state",
				join(dir, "state-2"),
				"--master-key",
				key,
			]),
		);
	});

	it("serve refuses a master key or an admin token file that group or others may read", async () => {
		const serve = () =>
			runCli(BIN.broker, [
				"serve",
				"--state",
				join(dir, "state"),
				"--master-key",
				master,
				"--policies",
				POLICIES,
				"--listen",
				"tcp:127.0.0.1:0",
				"--admin-listen",
				"tcp:127.0.0.1:0",
				"--admin-token-file",
				token,
			]);
		await chmod(token, 0o640);
		refused(await serve(), token, "0640", tokenText);
		await chmod(token, 0o600);
		await chmod(master, 0o604);
		refused(
			await serve(),
			master,
			"0604",
			(await readFile(master, "utf8")).trim(),
		);
		await chmod(master, 0o600);
	});

	it("the admin client commands and dadi-seal refuse a readable admin token file", async () => {
		await chmod(token, 0o644);
		try {
			for (const args of [
				["resource", "list"],
				["audit"],
				["resource", "rm", "kbs:///a/b/c"],
			])
				refused(
					await runCli(BIN.broker, [
						...args,
						"--admin",
						"http://127.0.0.1:9",
						"--admin-token-file",
						token,
					]),
					token,
					"0644",
					tokenText,
				);
			const key = join(dir, "image.jwk");
			await must(runCli(BIN.seal, ["keygen", "--out", key]));
			await writeFile(join(dir, "disk.img"), Buffer.alloc(1 << 16, 7));
			refused(
				await runCli(BIN.seal, [
					"seal",
					`raw:${join(dir, "disk.img")}`,
					`oci:${join(dir, "layout")}:v1`,
					"--key",
					key,
					"--key-ref",
					"kbs:///default/image-key/x",
					"--broker",
					"http://127.0.0.1:9",
					"--broker-token-file",
					token,
				]),
				token,
				"0644",
				tokenText,
			);
		} finally {
			await chmod(token, 0o600);
		}
	});
});
