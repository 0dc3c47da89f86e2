/**
 * Crash safety of the broker's state with real process kills. A child process (the compiled
 * modules under dist/, as `npm test` builds them) opens the state directory and loops: store
 * resource i, append its audit record (with two more appended concurrently, so group commits are
 * cut too), then print "ack i". The parent SIGKILLs it at a random point and reopens the directory:
 * the dead child's lock must be taken over, every acknowledged resource must read back exactly, the
 * audit chain must verify and hold every acknowledged record. Five rounds on one directory.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { AuditLog } from "../src/broker/audit-log.js";
import {
	generateMasterKeyText,
	parseMasterKey,
} from "../src/broker/master-key.js";
import { initStateDir, openStateDir } from "../src/broker/state-dir.js";
import { cleanupTempDirs, listFiles, ROOT, tempDir } from "./helpers.js";

afterAll(cleanupTempDirs);

const STATE_DIR_JS = join(ROOT, "dist/src/broker/state-dir.js");
const AUDIT_LOG_JS = join(ROOT, "dist/src/broker/audit-log.js");

/** The value stored for resource i: 32 to 160 bytes, different for every i. */
function value(i: number): Buffer {
	const d = createHash("sha256").update(`crash value ${i}`).digest();
	return Buffer.concat(Array.from({ length: (i % 5) + 1 }, () => d));
}

const childScript = (stateDirJs: string) => `
import { createHash } from "node:crypto";
import { openStateDir } from ${JSON.stringify(pathToFileURL(stateDirJs).href)};

const [dir, keyText, startText] = process.argv.slice(2);
const value = (i) => {
	const d = createHash("sha256").update("crash value " + i).digest();
	return Buffer.concat(Array.from({ length: (i % 5) + 1 }, () => d));
};
const state = await openStateDir(dir, Buffer.from(keyText, "base64url"));
for (let i = Number(startText); ; i++) {
	const path = "crash/key/r" + i;
	await state.keystore.put(path, value(i));
	await Promise.all([
		state.audit.append({ event: "admin", client: "crash-test", resource: path, detail: "put " + i }),
		state.audit.append({ event: "auth", client: "noise-" + i }),
		state.audit.append({ event: "attest", client: "noise-" + i, decision: "allow" }),
	]);
	process.stdout.write("ack " + i + "\\n");
}
`;

/** Appends to a log that rotates every ~2 KB and keeps 3 rotated files: kills land in rotations. */
const rotatingChildScript = (auditLogJs: string) => `
import { AuditLog } from ${JSON.stringify(pathToFileURL(auditLogJs).href)};

const [file] = process.argv.slice(2);
const log = await AuditLog.open(file, { rotateBytes: 2000, keep: 3 });
for (let i = 0; ; i++) {
	const r = await Promise.all([0, 1, 2].map((k) =>
		log.append({ event: "deny", client: "c" + k, detail: "crash " + i + " " + "x".repeat(40) }),
	));
	process.stdout.write("ack " + r[2].seq + "\\n");
}
`;

interface Round {
	acked: number[];
	signal: NodeJS.Signals | null;
	code: number | null;
	stderr: string;
}

function runChild(
	script: string,
	dir: string,
	keyText: string,
	start: number,
	killAfter: number,
): Promise<Round> {
	return new Promise((resolve, reject) => {
		const child = spawn(
			process.execPath,
			[script, dir, keyText.trim(), String(start)],
			{ stdio: ["ignore", "pipe", "pipe"] },
		);
		const acked: number[] = [];
		let out = "";
		let stderr = "";
		child.on("error", reject);
		child.stderr.setEncoding("utf8");
		child.stderr.on("data", (d: string) => {
			stderr += d;
		});
		child.stdout.setEncoding("utf8");
		child.stdout.on("data", (d: string) => {
			out += d;
			for (let nl = out.indexOf("\n"); nl >= 0; nl = out.indexOf("\n")) {
				const m = /^ack (\d+)$/.exec(out.slice(0, nl));
				out = out.slice(nl + 1);
				if (!m) continue;
				acked.push(Number(m[1]));
				if (acked.length === killAfter) child.kill("SIGKILL");
			}
		});
		const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
		child.on("exit", (code, signal) => {
			clearTimeout(timer);
			resolve({ acked, signal, code, stderr });
		});
	});
}

describe("broker state survives SIGKILL", () => {
	it("keeps every acknowledged resource and audit record across 5 kills", async () => {
		if (!existsSync(STATE_DIR_JS))
			throw new Error(
				`${STATE_DIR_JS} is missing: run 'npm run build' first (npm test does)`,
			);
		const tmp = await tempDir();
		const script = join(tmp, "crash-child.mjs");
		await writeFile(script, childScript(STATE_DIR_JS));
		const dir = join(tmp, "state");
		const keyText = generateMasterKeyText();
		const key = parseMasterKey(keyText, "test key");
		await initStateDir(dir, key);

		const allAcked: number[] = [];
		for (let round = 0; round < 5; round++) {
			const killAfter = 20 + Math.floor(Math.random() * 181);
			const r = await runChild(script, dir, keyText, round * 10_000, killAfter);
			expect(r.signal, `child failed: ${r.stderr}`).toBe("SIGKILL");
			expect(r.acked.length).toBeGreaterThanOrEqual(killAfter);
			allAcked.push(...r.acked);

			// The dead child's lock is taken over; leftover temporary files are cleaned up.
			const state = await openStateDir(dir, key);
			try {
				expect(
					(await listFiles(dir)).filter((f) => f.endsWith(".tmp")),
				).toEqual([]);
				for (const i of allAcked)
					expect(
						await state.keystore.get(`crash/key/r${i}`),
						`resource ${i} after round ${round}`,
					).toEqual(value(i));
				const chain = await state.audit.verifyChain();
				expect(chain.ok).toBe(true);
				expect(chain.records).toBe(state.audit.lastSeq);
				expect(chain.records).toBeGreaterThanOrEqual(allAcked.length * 3);
				const records = await state.audit.query({
					event: "admin",
					limit: 10_000,
				});
				const logged = new Set(records.map((x) => x.resource));
				for (const i of allAcked)
					expect(logged.has(`crash/key/r${i}`), `audit of ${i}`).toBe(true);
				// the reopened state keeps working
				expect(
					(await state.audit.append({ event: "admin", client: "parent" })).seq,
				).toBe(chain.records + 1);
			} finally {
				await state.close();
			}
		}
		expect(allAcked.length).toBeGreaterThanOrEqual(100);
	}, 300_000);

	it("a rotating audit log keeps its chain and every acknowledged record it retains across 5 kills", async () => {
		if (!existsSync(AUDIT_LOG_JS))
			throw new Error(
				`${AUDIT_LOG_JS} is missing: run 'npm run build' first (npm test does)`,
			);
		const tmp = await tempDir();
		const script = join(tmp, "rotating-child.mjs");
		await writeFile(script, rotatingChildScript(AUDIT_LOG_JS));
		const file = join(tmp, "audit.log");
		let lastAcked = 0;
		for (let round = 0; round < 5; round++) {
			const killAfter = 20 + Math.floor(Math.random() * 181);
			const r = await runChild(script, file, "", 0, killAfter);
			expect(r.signal, `child failed: ${r.stderr}`).toBe("SIGKILL");
			lastAcked = Math.max(lastAcked, ...r.acked);
			const log = await AuditLog.open(file, { rotateBytes: 2000, keep: 3 });
			try {
				const chain = await log.verifyChain();
				expect(chain.ok, JSON.stringify(chain)).toBe(true);
				expect(log.lastSeq).toBeGreaterThanOrEqual(lastAcked);
				expect(log.files.length).toBeLessThanOrEqual(4);
				// every record from the first kept one to the last acknowledged is there, in order
				const all = await log.query({ limit: 10_000 });
				const first = chain.firstSeq ?? 1;
				expect(all[0]?.seq).toBe(first);
				expect(all.map((x) => x.seq)).toEqual(
					Array.from({ length: log.lastSeq - first + 1 }, (_, i) => first + i),
				);
				expect(
					(await log.append({ event: "admin", client: "parent" })).seq,
				).toBe(log.lastSeq);
			} finally {
				await log.close();
			}
		}
		expect(lastAcked).toBeGreaterThanOrEqual(100);
	}, 300_000);
});
