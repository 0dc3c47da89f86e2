/**
 * The broker's persistent state: master key parsing, the encrypted key store, the hash-chained
 * audit log, and the state directory (check of the master key, exclusive lock).
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
	chmod,
	mkdir,
	readFile,
	rename,
	stat,
	utimes,
	writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import {
	AuditLog,
	type AuditRecord,
	MAX_AUDIT_REASONS,
	MAX_AUDIT_STRING,
} from "../src/broker/audit-log.js";
import {
	KeyStore,
	MAX_VALUE_BYTES,
	parseResourcePath,
} from "../src/broker/keystore.js";
import {
	generateMasterKeyText,
	parseMasterKey,
	readMasterKey,
} from "../src/broker/master-key.js";
import { initStateDir, openStateDir } from "../src/broker/state-dir.js";
import { DadiError } from "../src/errors.js";
import {
	cleanupTempDirs,
	listFiles,
	rejection,
	tempDir,
	thrown,
} from "./helpers.js";

afterAll(cleanupTempDirs);

const newKey = () => parseMasterKey(generateMasterKeyText(), "test key");

/** A pid that certainly belongs to no running process: a child that has exited and been reaped. */
function deadPid(): Promise<number> {
	return new Promise((resolve, reject) => {
		const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
		child.on("error", reject);
		child.on("exit", () => resolve(child.pid as number));
	});
}

describe("master key", { timeout: 60_000 }, () => {
	it("generates and parses base64url of 32 bytes, whitespace allowed", () => {
		const text = generateMasterKeyText();
		expect(text).toMatch(/^[A-Za-z0-9_-]{43}\n$/);
		const key = parseMasterKey(text, "k");
		expect(key.length).toBe(32);
		expect(parseMasterKey(`  \n${text.trim()}\r\n\n`, "k")).toEqual(key);
		expect(parseMasterKey(`${text.trim()}=`, "k")).toEqual(key);
		expect(generateMasterKeyText()).not.toBe(text);
	});

	it("refuses anything else with KEY_INVALID, naming the source but not the content", () => {
		const good = generateMasterKeyText().trim();
		// the last character carries two unused bits: a non-canonical variant
		const alphabet =
			"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
		const last = alphabet.indexOf(good.slice(-1));
		const nonCanonical = good.slice(0, -1) + alphabet[last ^ 1];
		const bad = [
			"",
			"secret-looking-junk",
			good.slice(0, 42),
			`${good}A`,
			nonCanonical,
			randomBytes(32).toString("hex"),
			randomBytes(32)
				.toString("base64")
				.replace(/[A-Za-z0-9]/g, "+"),
			randomBytes(31).toString("base64url"),
			randomBytes(33).toString("base64url"),
			`${good.slice(0, 20)} ${good.slice(20)}`,
		];
		for (const t of bad) {
			const e = thrown(() => parseMasterKey(t, "SOURCE-NAME"));
			expect(e.code, JSON.stringify(t)).toBe("KEY_INVALID");
			expect(e.message).toContain("SOURCE-NAME");
			if (t.length > 3) expect(e.message).not.toContain(t.slice(0, 12));
		}
	});

	it("reads a key file (which wins) or the environment value", async () => {
		const dir = await tempDir();
		const fileText = generateMasterKeyText();
		const envText = generateMasterKeyText();
		const file = join(dir, "master.key");
		await writeFile(file, fileText, { mode: 0o600 });
		const fromFile = await readMasterKey({ file, envValue: envText });
		expect(fromFile).toEqual(parseMasterKey(fileText, "x"));
		expect(await readMasterKey({ envValue: envText })).toEqual(
			parseMasterKey(envText, "x"),
		);
		expect((await rejection(readMasterKey({}))).code).toBe("USAGE");
		expect((await rejection(readMasterKey({ envValue: "" }))).code).toBe(
			"USAGE",
		);
		const envBad = await rejection(readMasterKey({ envValue: "nope" }));
		expect(envBad.code).toBe("KEY_INVALID");
		expect(envBad.message).toContain("DADI_BROKER_MASTER_KEY");
		expect(
			(await rejection(readMasterKey({ file: join(dir, "missing") }))).code,
		).toBe("INPUT_NOT_FOUND");
		await chmod(file, 0o644);
		const open = await rejection(readMasterKey({ file }));
		expect(open.code).toBe("KEY_INVALID");
		expect(open.message).toContain("chmod 600");
		expect(open.message).not.toContain(fileText.trim());
		await chmod(file, 0o640);
		expect((await rejection(readMasterKey({ file }))).code).toBe("KEY_INVALID");
		await writeFile(file, "not a key at all\n", { mode: 0o600 });
		await chmod(file, 0o600);
		const junk = await rejection(readMasterKey({ file }));
		expect(junk.code).toBe("KEY_INVALID");
		expect(junk.message).toContain(file);
		expect(junk.message).not.toContain("not a key at all");
	});
});

describe("key store", { timeout: 60_000 }, () => {
	it("round-trips resources and internal secrets", async () => {
		const dir = await tempDir();
		const key = newKey();
		const ks = await KeyStore.open(dir, key);
		const a = randomBytes(32);
		const b = Buffer.from("a value with text");
		expect(await ks.get("repo/key/a")).toBeUndefined();
		expect(await ks.put("repo/key/a", a)).toEqual({ created: true });
		expect(await ks.put("repo/key/b.v2", b)).toEqual({ created: true });
		expect(
			await ks.put("other/x-y/_z", Buffer.alloc(MAX_VALUE_BYTES, 7)),
		).toEqual({ created: true });
		expect(await ks.get("repo/key/a")).toEqual(a);
		expect(await ks.get("repo/key/b.v2")).toEqual(b);
		const a2 = randomBytes(48);
		expect(await ks.put("repo/key/a", a2)).toEqual({ created: false });
		expect(await ks.get("repo/key/a")).toEqual(a2);
		// the caller's buffer is not the stored one
		const got = (await ks.get("repo/key/a")) as Buffer;
		got.fill(0);
		expect(await ks.get("repo/key/a")).toEqual(a2);

		const list = await ks.list();
		expect(list.map((r) => [r.path, r.size])).toEqual([
			["other/x-y/_z", MAX_VALUE_BYTES],
			["repo/key/a", 48],
			["repo/key/b.v2", b.length],
		]);
		for (const r of list)
			expect(new Date(r.updated).toISOString()).toBe(r.updated);

		expect(await ks.delete("repo/key/a")).toBe(true);
		expect(await ks.delete("repo/key/a")).toBe(false);
		expect(await ks.get("repo/key/a")).toBeUndefined();
		expect(await ks.delete("other/x-y/_z")).toBe(true);
		expect((await ks.list()).map((r) => r.path)).toEqual(["repo/key/b.v2"]);
		// empty REPO/TYPE directories are removed with their last resource
		expect(await listFiles(join(dir, "resources"))).toEqual([
			"repo/key/b.v2.res",
		]);

		const sk = randomBytes(32);
		expect(await ks.getInternal("token-signing-key")).toBeUndefined();
		expect(await ks.putInternal("token-signing-key", sk)).toEqual({
			created: true,
		});
		expect(await ks.getInternal("token-signing-key")).toEqual(sk);

		for (const v of [Buffer.alloc(0), Buffer.alloc(MAX_VALUE_BYTES + 1)]) {
			expect((await rejection(ks.put("repo/key/c", v))).code).toBe(
				"INPUT_INVALID",
			);
			expect((await rejection(ks.putInternal("n", v))).code).toBe(
				"INPUT_INVALID",
			);
		}
		for (const name of ["", "Upper", "a_b", "a.b", "../x", "x".repeat(65)])
			expect((await rejection(ks.getInternal(name))).code).toBe(
				"INPUT_INVALID",
			);

		// a fresh store (no cache) reads the same from disk
		await ks.close();
		expect((await rejection(ks.get("repo/key/b.v2"))).code).toBe("INTERNAL");
		const ks2 = await KeyStore.open(dir, key);
		expect(await ks2.get("repo/key/b.v2")).toEqual(b);
		expect(await ks2.getInternal("token-signing-key")).toEqual(sk);
		expect(await ks2.put("repo/key/b.v2", a)).toEqual({ created: false });
	});

	it("serves cached values without file I/O and keeps the cache right under concurrency", async () => {
		const dir = await tempDir();
		const key = newKey();
		const ks = await KeyStore.open(dir, key);
		await ks.put("r/t/x", Buffer.from("one"));
		// The hot path: once read, the file is not consulted again.
		await rename(
			join(dir, "resources/r/t/x.res"),
			join(dir, "resources/r/t/moved"),
		);
		expect((await ks.get("r/t/x"))?.toString()).toBe("one");
		await rename(
			join(dir, "resources/r/t/moved"),
			join(dir, "resources/r/t/x.res"),
		);
		// Interleaved puts and gets: every get sees some written value; the last put wins.
		const ops: Promise<unknown>[] = [];
		for (let i = 0; i < 50; i++) {
			ops.push(ks.put("r/t/x", Buffer.from(`v${i}`)));
			ops.push(
				ks.get("r/t/x").then((v) => {
					expect(v?.toString()).toMatch(/^(one|v\d+)$/);
				}),
			);
		}
		await Promise.all(ops);
		expect((await ks.get("r/t/x"))?.toString()).toBe("v49");
		const fresh = await KeyStore.open(dir, key);
		expect((await fresh.get("r/t/x"))?.toString()).toBe("v49");
	});

	it("detects a flipped byte anywhere in a .res file, and swapped or moved files (AUTH_FAILED)", async () => {
		const dir = await tempDir();
		const key = newKey();
		const ks = await KeyStore.open(dir, key);
		await ks.put("repo/key/one", randomBytes(32));
		await ks.put("repo/key/two", randomBytes(32));
		await ks.putInternal("signing", randomBytes(32));
		const file = join(dir, "resources/repo/key/one.res");
		const orig = await readFile(file);
		const text = orig.toString();
		const u0 = text.indexOf('"updated":"') + '"updated":"'.length;
		const u1 = text.indexOf('"', u0);
		let checked = 0;
		for (let i = 0; i < orig.length; i++) {
			if (i >= u0 && i < u1) continue; // `updated` is unauthenticated bookkeeping
			for (const mask of [0x01, 0x20, 0x80]) {
				const bad = Buffer.from(orig);
				bad[i] = (bad[i] as number) ^ mask;
				await writeFile(file, bad);
				const fresh = await KeyStore.open(dir, key);
				const e = await rejection(fresh.get("repo/key/one"));
				expect(e.code, `byte ${i} ^ ${mask}`).toBe("AUTH_FAILED");
				expect(e.message).toContain("repo/key/one");
				checked++;
			}
		}
		expect(checked).toBeGreaterThan(300);
		// truncated, emptied
		for (const bad of [orig.subarray(0, orig.length - 5), Buffer.alloc(0)]) {
			await writeFile(file, bad);
			expect(
				(await rejection((await KeyStore.open(dir, key)).get("repo/key/one")))
					.code,
			).toBe("AUTH_FAILED");
		}
		await writeFile(file, orig);
		expect(
			(await (await KeyStore.open(dir, key)).get("repo/key/one"))?.length,
		).toBe(32);

		// swap the two files
		const two = join(dir, "resources/repo/key/two.res");
		await rename(file, `${file}.x`);
		await rename(two, file);
		await rename(`${file}.x`, two);
		let fresh = await KeyStore.open(dir, key);
		expect((await rejection(fresh.get("repo/key/one"))).code).toBe(
			"AUTH_FAILED",
		);
		expect((await rejection(fresh.get("repo/key/two"))).code).toBe(
			"AUTH_FAILED",
		);
		// a resource file moved under another name, or an internal secret posing as a resource
		await mkdir(join(dir, "resources/repo/other"), { recursive: true });
		await rename(two, join(dir, "resources/repo/other/two.res"));
		await writeFile(
			join(dir, "resources/repo/key/sig.res"),
			await readFile(join(dir, "internal/signing.sec")),
		);
		fresh = await KeyStore.open(dir, key);
		expect((await rejection(fresh.get("repo/other/two"))).code).toBe(
			"AUTH_FAILED",
		);
		expect((await rejection(fresh.get("repo/key/sig"))).code).toBe(
			"AUTH_FAILED",
		);
		// and the right file under another master key
		await writeFile(file, orig);
		fresh = await KeyStore.open(dir, newKey());
		expect((await rejection(fresh.get("repo/key/one"))).code).toBe(
			"AUTH_FAILED",
		);
	});

	it("removes leftover temporary files at open and leaves none behind", async () => {
		const dir = await tempDir();
		const key = newKey();
		let ks = await KeyStore.open(dir, key);
		for (let i = 0; i < 20; i++) await ks.put(`r/t/k${i % 5}`, randomBytes(16));
		await ks.putInternal("s", randomBytes(16));
		const before = await listFiles(dir);
		expect(before.filter((f) => f.endsWith(".tmp"))).toEqual([]);
		await writeFile(join(dir, "resources/r/t/k1.res.0123456789ab.tmp"), "x");
		await writeFile(join(dir, "internal/s.sec.0123456789ab.tmp"), "x");
		ks = await KeyStore.open(dir, key);
		expect(await listFiles(dir)).toEqual(before);
		expect((await ks.list()).length).toBe(5);
	});

	it("validates resource paths: a valid path stays under resources/, anything else is INPUT_INVALID", async () => {
		const dir = await tempDir();
		const ks = await KeyStore.open(dir, newKey());
		const segment = fc.oneof(
			fc.constantFrom(".", "..", "...", "", "a", ".hidden", "x.res", "-_."),
			fc.string({
				unit: fc.constantFrom(
					"a",
					"Z",
					"0",
					".",
					"-",
					"_",
					"/",
					"\\",
					"\0",
					" ",
					"é",
					"%",
				),
				maxLength: 6,
			}),
			fc.string({
				minLength: 120,
				maxLength: 140,
				unit: fc.constantFrom("a", "b"),
			}),
		);
		const validish = fc.stringMatching(/^[A-Za-z0-9._-]{1,12}$/);
		const path = fc.oneof(
			fc.string(),
			fc.tuple(validish, validish, validish).map((s) => s.join("/")),
			fc.array(segment, { minLength: 1, maxLength: 5 }).map((s) => s.join("/")),
		);
		let valid = 0;
		await fc.assert(
			fc.asyncProperty(path, async (p) => {
				let parsed: ReturnType<typeof parseResourcePath> | undefined;
				try {
					parsed = parseResourcePath(p);
				} catch (e) {
					expect(e).toBeInstanceOf(DadiError);
					expect((e as DadiError).code).toBe("INPUT_INVALID");
				}
				if (!parsed) {
					for (const op of [
						ks.put(p, Buffer.from("v")),
						ks.get(p),
						ks.delete(p),
					])
						expect((await rejection(op)).code).toBe("INPUT_INVALID");
					return;
				}
				valid++;
				expect(`${parsed.repo}/${parsed.type}/${parsed.tag}`).toBe(p);
				for (const s of [parsed.repo, parsed.type, parsed.tag]) {
					expect(s).toMatch(/^[A-Za-z0-9._-]{1,128}$/);
					expect(s === "." || s === "..").toBe(false);
				}
				await ks.put(p, Buffer.from(p));
				expect((await ks.get(p))?.toString()).toBe(p);
			}),
			{ numRuns: 400 },
		);
		expect(valid).toBeGreaterThan(10);
		const files = await listFiles(dir);
		for (const f of files)
			expect(f).toMatch(/^resources\/[^/]+\/[^/]+\/[^/]+\.res$/);
		expect(files.length).toBe((await ks.list()).length);
	});
});

describe("state directory", { timeout: 60_000 }, () => {
	it("keeps everything across close and reopen; wrong key is KEY_MISMATCH", async () => {
		const root = await tempDir();
		const dir = join(root, "state");
		const key = newKey();
		await initStateDir(dir, key);
		expect((await stat(dir)).mode & 0o777).toBe(0o700);
		expect((await stat(join(dir, "broker.json"))).mode & 0o777).toBe(0o600);
		let st = await openStateDir(dir, key);
		const v1 = randomBytes(32);
		await st.keystore.put("img/key/v1", v1);
		await st.keystore.putInternal("signing", Buffer.from("internal secret"));
		await st.audit.append({
			event: "admin",
			client: "test",
			resource: "img/key/v1",
		});
		await st.close();
		await st.close(); // idempotent
		expect(await listFiles(dir)).not.toContain("broker.lock");

		st = await openStateDir(dir, key);
		expect(await st.keystore.get("img/key/v1")).toEqual(v1);
		expect((await st.keystore.getInternal("signing"))?.toString()).toBe(
			"internal secret",
		);
		expect((await st.audit.query()).map((r) => r.resource)).toEqual([
			"img/key/v1",
		]);
		expect(await st.audit.verifyChain()).toEqual({ records: 1, ok: true });
		await st.close();

		const wrong = await rejection(openStateDir(dir, newKey()));
		expect(wrong.code).toBe("KEY_MISMATCH");
		expect(wrong.message).toContain(dir);
		expect(await listFiles(dir)).not.toContain("broker.lock");
		expect((await rejection(openStateDir(dir, Buffer.alloc(16)))).code).toBe(
			"KEY_INVALID",
		);
	});

	it("init refuses existing or non-empty directories; open needs broker.json unless create", async () => {
		const root = await tempDir();
		const key = newKey();
		const dir = join(root, "s");
		expect((await rejection(openStateDir(dir, key))).code).toBe(
			"INPUT_NOT_FOUND",
		);
		await mkdir(dir);
		await initStateDir(dir, key); // existing and empty: fine
		expect((await rejection(initStateDir(dir, key))).code).toBe(
			"OUTPUT_EXISTS",
		);
		const full = join(root, "full");
		await mkdir(full);
		await writeFile(join(full, "something"), "x");
		expect((await rejection(initStateDir(full, key))).code).toBe(
			"OUTPUT_EXISTS",
		);
		expect((await rejection(openStateDir(full, key))).code).toBe(
			"INPUT_NOT_FOUND",
		);
		const created = await openStateDir(join(root, "new/nested"), key, {
			create: true,
		});
		await created.keystore.put("a/b/c", Buffer.from("x"));
		await created.close();

		const json = join(dir, "broker.json");
		const doc = JSON.parse(await readFile(json, "utf8"));
		expect(Object.keys(doc)).toEqual(["format", "version", "check"]);
		expect(doc.format).toBe("dadi-broker-state");
		await writeFile(json, JSON.stringify({ ...doc, version: 2 }));
		expect((await rejection(openStateDir(dir, key))).code).toBe(
			"FORMAT_UNSUPPORTED",
		);
		await writeFile(json, "{not json");
		expect((await rejection(openStateDir(dir, key))).code).toBe(
			"FORMAT_INVALID",
		);
		const flipped = {
			...doc,
			check: { ...doc.check, ct: `B${doc.check.ct.slice(1)}` },
		};
		if (flipped.check.ct === doc.check.ct)
			flipped.check.ct = `C${doc.check.ct.slice(1)}`;
		await writeFile(json, JSON.stringify(flipped));
		expect((await rejection(openStateDir(dir, key))).code).toBe("KEY_MISMATCH");
	});

	it("locks the directory: a second open fails while the first is open; a dead owner's lock is taken over", async () => {
		const dir = join(await tempDir(), "s");
		const key = newKey();
		const first = await openStateDir(dir, key, { create: true });
		expect((await readFile(join(dir, "broker.lock"), "utf8")).trim()).toBe(
			String(process.pid),
		);
		const busy = await rejection(openStateDir(dir, key));
		expect(busy.code).toBe("IO");
		expect(busy.message).toContain(`in use by process ${process.pid}`);
		await first.close();

		const dead = await deadPid();
		await writeFile(join(dir, "broker.lock"), `${dead}\n`);
		const second = await openStateDir(dir, key);
		expect((await readFile(join(dir, "broker.lock"), "utf8")).trim()).toBe(
			String(process.pid),
		);
		await second.close();

		// a lock file without a pid: another broker starting now, or a crash long ago
		await writeFile(join(dir, "broker.lock"), "");
		expect((await rejection(openStateDir(dir, key))).code).toBe("IO");
		const old = new Date(Date.now() - 60_000);
		await utimes(join(dir, "broker.lock"), old, old);
		const third = await openStateDir(dir, key);
		await third.close();
		expect(await listFiles(dir)).not.toContain("broker.lock");
	});

	it("stores no secret in the clear: no file holds a value or the master key in any common encoding", async () => {
		const dir = join(await tempDir(), "s");
		const keyText = generateMasterKeyText();
		const key = parseMasterKey(keyText, "k");
		const st = await openStateDir(dir, key, { create: true });
		const secrets = [
			key,
			randomBytes(32),
			randomBytes(16),
			Buffer.from("hunter2-is-my-password"),
		];
		await st.keystore.put("img/key/a", secrets[1] as Buffer);
		await st.keystore.put("img/key/b", secrets[3] as Buffer);
		await st.keystore.putInternal("signing", secrets[2] as Buffer);
		await st.keystore.put("img/key/a", secrets[1] as Buffer); // rewritten: no stale copy either
		for (let i = 0; i < 5; i++)
			await st.audit.append({
				event: "release",
				client: "10.0.0.1",
				resource: "img/key/a",
				decision: "allow",
			});
		await st.close();
		const forms = (b: Buffer) => [
			b,
			Buffer.from(b.toString("hex")),
			Buffer.from(b.toString("hex").toUpperCase()),
			Buffer.from(b.toString("base64")),
			Buffer.from(b.toString("base64").replace(/=+$/, "")),
			Buffer.from(b.toString("base64url")),
		];
		const files = await listFiles(dir);
		expect(files.length).toBeGreaterThan(4);
		for (const f of files) {
			const bytes = await readFile(join(dir, f));
			for (const s of secrets)
				for (const form of forms(s))
					expect(bytes.includes(form), `${f} holds a secret`).toBe(false);
			expect(bytes.includes(Buffer.from(keyText.trim()))).toBe(false);
		}
		expect(files.filter((f) => f.endsWith(".tmp"))).toEqual([]);
	});
});

describe("audit log", { timeout: 60_000 }, () => {
	const rec = (i: number, over: Partial<AuditRecord> = {}): AuditRecord => ({
		event: i % 3 === 0 ? "release" : i % 3 === 1 ? "attest" : "deny",
		client: `client-${i}`,
		resource: `repo/key/r${i % 4}`,
		decision: i % 2 === 0 ? "allow" : "deny",
		...over,
	});

	async function logWith(n: number): Promise<{ file: string; log: AuditLog }> {
		const file = join(await tempDir(), "audit.log");
		const log = await AuditLog.open(file);
		for (let i = 0; i < n; i++) await log.append(rec(i));
		return { file, log };
	}

	it("appends hash-chained lines, verifies, and queries with filters", async () => {
		let t = Date.parse("2030-01-01T00:00:00.000Z");
		const file = join(await tempDir(), "audit.log");
		const now = () => {
			t += 1000;
			return new Date(t);
		};
		const log = await AuditLog.open(file, { now });
		for (let i = 0; i < 30; i++)
			expect(await log.append(rec(i))).toEqual({ seq: i + 1 });
		expect((await stat(file)).mode & 0o777).toBe(0o600);
		expect(await log.verifyChain()).toEqual({ records: 30, ok: true });

		const lines = (await readFile(file, "utf8")).trimEnd().split("\n");
		expect(lines.length).toBe(30);
		const first = JSON.parse(lines[0] as string);
		expect(Object.keys(first).slice(0, 4)).toEqual([
			"seq",
			"time",
			"prev",
			"hash",
		]);
		expect(first.prev).toBe("0".repeat(64));
		expect(JSON.parse(lines[1] as string).prev).toBe(first.hash);

		const all = await log.query({ limit: 10000 });
		expect(all.map((r) => r.seq)).toEqual(
			[...Array(30).keys()].map((i) => i + 1),
		);
		// default limit 100, newest last; a small limit gives the newest records
		expect((await log.query()).length).toBe(30);
		expect((await log.query({ limit: 3 })).map((r) => r.seq)).toEqual([
			28, 29, 30,
		]);
		// sinceSeq pages forward
		expect(
			(await log.query({ sinceSeq: 10, limit: 3 })).map((r) => r.seq),
		).toEqual([11, 12, 13]);
		expect(await log.query({ sinceSeq: 30 })).toEqual([]);
		expect(await log.query({ sinceSeq: 1000 })).toEqual([]);
		const r1 = await log.query({ resource: "repo/key/r1" });
		expect(r1.length).toBeGreaterThan(0);
		expect(r1.every((r) => r.resource === "repo/key/r1")).toBe(true);
		const rel = await log.query({ event: "release", decision: "allow" });
		expect(rel.map((r) => r.seq)).toEqual(
			all
				.filter((r) => r.event === "release" && r.decision === "allow")
				.map((r) => r.seq),
		);
		const since = await log.query({
			since: (all[19] as { time: string }).time,
		});
		expect(since.map((r) => r.seq)).toEqual(
			[...Array(11).keys()].map((i) => i + 20),
		);
		for (const bad of [
			{ limit: 0 },
			{ limit: 10001 },
			{ limit: 1.5 },
			{ since: "yesterday" },
			{ sinceSeq: -1 },
		])
			expect((await rejection(log.query(bad))).code).toBe("USAGE");
		await log.close();
		expect((await rejection(log.query())).code).toBe("INTERNAL");
		expect((await rejection(log.append(rec(1)))).code).toBe("INTERNAL");

		const again = await AuditLog.open(file);
		expect(again.lastSeq).toBe(30);
		expect(again.repairedBytes).toBe(0);
		expect(await again.append(rec(99))).toEqual({ seq: 31 });
		expect(await again.verifyChain()).toEqual({ records: 31, ok: true });
		await again.close();
	});

	it("caps strings and reasons so a client cannot bloat the log", async () => {
		const { log } = await logWith(0);
		const huge = "x".repeat(100_000);
		await log.append({
			event: "deny",
			client: huge,
			detail: `${"y".repeat(MAX_AUDIT_STRING - 1)}😀tail`,
			reasons: Array.from({ length: 1000 }, () => huge),
			status: 403,
			extra: "ignored",
		} as AuditRecord);
		const [r] = await log.query();
		expect(r?.client.length).toBe(MAX_AUDIT_STRING);
		expect(r?.detail?.length).toBe(MAX_AUDIT_STRING - 1); // not split inside the emoji
		expect(r?.reasons?.length).toBe(MAX_AUDIT_REASONS);
		expect(r?.reasons?.every((s) => s.length === MAX_AUDIT_STRING)).toBe(true);
		expect(r?.status).toBe(403);
		expect(r && "extra" in r).toBe(false);
		expect(await log.verifyChain()).toEqual({ records: 1, ok: true });
		expect(
			(
				await rejection(
					log.append({ event: "bogus" } as unknown as AuditRecord),
				)
			).code,
		).toBe("INTERNAL");
		await log.close();
	});

	it("group-commits concurrent appends: 200 at once all resolve with dense unique seqs", async () => {
		const { file, log } = await logWith(3);
		const before = log.commits;
		const results = await Promise.all(
			Array.from({ length: 200 }, (_, i) =>
				log.append(rec(i, { client: `c${i}` })),
			),
		);
		const seqs = results.map((r) => r.seq);
		expect(new Set(seqs).size).toBe(200);
		expect([...seqs].sort((a, b) => a - b)).toEqual(
			Array.from({ length: 200 }, (_, i) => i + 4),
		);
		// call order is seq order
		expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
		expect(log.commits - before).toBeLessThan(10);
		expect(await log.verifyChain()).toEqual({ records: 203, ok: true });
		const stored = await log.query({ limit: 10000 });
		for (let i = 0; i < 200; i++) expect(stored[i + 3]?.client).toBe(`c${i}`);
		await log.close();
		const again = await AuditLog.open(file);
		expect(again.lastSeq).toBe(203);
		await again.close();
	});

	it("queries a log larger than its read blocks the same as filtering everything", async () => {
		const { log } = await logWith(0);
		await Promise.all(
			Array.from({ length: 1500 }, (_, i) =>
				log.append(rec(i, { detail: `${i}:${"d".repeat(900)}` })),
			),
		);
		const all: number[] = [];
		for (let since = 0; ; ) {
			const page = await log.query({ sinceSeq: since, limit: 10000 });
			if (page.length === 0) break;
			all.push(...page.map((r) => r.seq));
			since = page[page.length - 1]?.seq as number;
		}
		expect(all).toEqual(Array.from({ length: 1500 }, (_, i) => i + 1));
		const want = (pred: (i: number) => boolean) =>
			Array.from({ length: 1500 }, (_, i) => i)
				.filter(pred)
				.map((i) => i + 1);
		const r2 = want((i) => i % 4 === 2);
		expect(
			(await log.query({ resource: "repo/key/r2", limit: 10000 })).map(
				(r) => r.seq,
			),
		).toEqual(r2);
		expect(
			(await log.query({ resource: "repo/key/r2", limit: 200 })).map(
				(r) => r.seq,
			),
		).toEqual(r2.slice(-200));
		expect(
			(
				await log.query({ resource: "repo/key/r2", sinceSeq: 700, limit: 50 })
			).map((r) => r.seq),
		).toEqual(r2.filter((s) => s > 700).slice(0, 50));
		const deny = want((i) => i % 2 === 1 && i % 3 === 2);
		expect(
			(await log.query({ event: "deny", decision: "deny", limit: 10000 })).map(
				(r) => r.seq,
			),
		).toEqual(deny);
		await log.close();
	});

	it("repairs a torn tail: truncated anywhere inside the last line, or trailing garbage", async () => {
		const { file, log } = await logWith(5);
		await log.close();
		const full = await readFile(file);
		const lastStart = full.lastIndexOf(0x0a, full.length - 2) + 1;
		for (let off = lastStart; off < full.length; off++) {
			await writeFile(file, full.subarray(0, off));
			const l = await AuditLog.open(file);
			expect(l.lastSeq, `cut at ${off}`).toBe(4);
			expect(l.repairedBytes).toBe(off - lastStart);
			expect((await stat(file)).size).toBe(lastStart);
			expect(await l.verifyChain()).toEqual({ records: 4, ok: true });
			await l.close();
		}
		// what a crash may leave after the last good record: zeros, half lines, junk lines
		for (const junk of [
			Buffer.alloc(4096),
			Buffer.from('{"seq":6,"ti'),
			Buffer.from("garbage\n\n\0\0\0\nmore garbage"),
			Buffer.from(`${full.subarray(lastStart, full.length - 1).toString()}`), // last line without "\n"
		]) {
			await writeFile(file, Buffer.concat([full, junk]));
			const l = await AuditLog.open(file);
			expect(l.lastSeq).toBe(5);
			expect(l.repairedBytes).toBe(junk.length);
			expect(await l.append(rec(7))).toEqual({ seq: 6 });
			expect(await l.verifyChain()).toEqual({ records: 6, ok: true });
			await l.close();
		}
	});

	it("refuses damage in the middle (FORMAT_INVALID naming the line) instead of dropping history", async () => {
		const { file, log } = await logWith(6);
		await log.close();
		const full = await readFile(file, "utf8");
		const lines = full.split("\n").slice(0, -1);
		const variants: [string, string[]][] = [
			[
				"edited",
				lines.map((l, i) => (i === 2 ? l.replace("client-2", "client-X") : l)),
			],
			["deleted", lines.filter((_, i) => i !== 2)],
			[
				"swapped",
				[
					lines[0],
					lines[1],
					lines[3],
					lines[2],
					lines[4],
					lines[5],
				] as string[],
			],
			[
				"duplicated",
				[...lines.slice(0, 3), lines[2] as string, ...lines.slice(3)],
			],
			["blank", [...lines.slice(0, 2), "", ...lines.slice(2)]],
			["first removed", lines.slice(1)],
			[
				"respaced",
				lines.map((l, i) => (i === 2 ? l.replace('"seq":3,', '"seq": 3,') : l)),
			],
		];
		for (const [what, ls] of variants) {
			await writeFile(file, `${ls.join("\n")}\n`);
			const e = await rejection(AuditLog.open(file));
			expect(e.code, what).toBe("FORMAT_INVALID");
			expect(e.message).toContain(file);
			expect(e.message).toMatch(/damaged at line [1-4];/);
			// the file is left as it was for the operator to inspect
			expect(await readFile(file, "utf8")).toBe(`${ls.join("\n")}\n`);
		}
		await writeFile(file, full);
		const l = await AuditLog.open(file);
		expect(await l.verifyChain()).toEqual({ records: 6, ok: true });
		await l.close();
	});

	it("open never fails with anything but a DadiError, and whatever it accepts verifies (fast-check)", async () => {
		const { file, log } = await logWith(8);
		await log.close();
		const real = await readFile(file);
		const target = join(await tempDir(), "fuzz.log");
		const mutated = fc.oneof(
			fc.uint8Array({ maxLength: 600 }).map((a) => Buffer.from(a)),
			fc.nat({ max: real.length }).map((n) => real.subarray(0, n)),
			fc
				.array(
					fc.tuple(
						fc.nat({ max: real.length - 1 }),
						fc.integer({ min: 1, max: 255 }),
					),
					{
						minLength: 1,
						maxLength: 4,
					},
				)
				.map((flips) => {
					const b = Buffer.from(real);
					for (const [at, x] of flips) b[at] = (b[at] as number) ^ x;
					return b;
				}),
			fc
				.tuple(fc.nat({ max: real.length }), fc.uint8Array({ maxLength: 40 }))
				.map(([at, ins]) =>
					Buffer.concat([real.subarray(0, at), ins, real.subarray(at)]),
				),
			fc.constantFrom(
				Buffer.from('{"__proto__":{"x":1}}\n'),
				Buffer.from("[]\n"),
				Buffer.from("null\n"),
				Buffer.from(`${"9".repeat(400)}\n`),
				Buffer.from(`{"seq":1e400}\n`),
			),
		);
		await fc.assert(
			fc.asyncProperty(mutated, async (bytes) => {
				await writeFile(target, bytes);
				let l: AuditLog | undefined;
				try {
					l = await AuditLog.open(target);
				} catch (e) {
					expect(e).toBeInstanceOf(DadiError);
					expect((e as DadiError).code).toBe("FORMAT_INVALID");
					return;
				}
				const v = await l.verifyChain();
				expect(v.ok).toBe(true);
				expect(v.records).toBe(l.lastSeq);
				await l.append(rec(0));
				expect((await l.verifyChain()).ok).toBe(true);
				await l.close();
			}),
			{ numRuns: 300 },
		);
	});
});
