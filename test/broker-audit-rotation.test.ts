/**
 * The audit log stays bounded: the active file is rotated at a size, at most `keep` rotated files
 * are kept (the chain anchored where the kept records start), and the hash chain, queries and
 * verification span the files. Crashes in the middle of a rotation or a removal, and files that
 * were removed, edited or put in place, are recognised at open.
 */
import {
	readdir,
	readFile,
	rename,
	stat,
	unlink,
	writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { AuditLog, type AuditRecord } from "../src/broker/audit-log.js";
import { cleanupTempDirs, rejection, tempDir } from "./helpers.js";

afterAll(cleanupTempDirs);

const rec = (i: number): AuditRecord => ({
	event: i % 2 ? "release" : "deny",
	client: `10.0.0.${i % 7}`,
	resource: `repo/key/r${i % 3}`,
	detail: `record ${i} ${"d".repeat(60)}`,
});

const OPTS = { rotateBytes: 2000, keep: 3 };

async function filled(
	n: number,
	o = OPTS,
): Promise<{ file: string; dir: string }> {
	const dir = await tempDir();
	const file = join(dir, "audit.log");
	const log = await AuditLog.open(file, o);
	for (let i = 1; i <= n; i++) await log.append(rec(i));
	await log.close();
	return { file, dir };
}

const lines = async (path: string) =>
	(await readFile(path, "utf8"))
		.trimEnd()
		.split("\n")
		.map((l) => JSON.parse(l) as { seq: number; prev: string; hash: string });

describe("audit log rotation", { timeout: 60_000 }, () => {
	it("rotates at the size, keeps `keep` files, and chains each file onto the one before", async () => {
		const { file, dir } = await filled(200);
		const log = await AuditLog.open(file, OPTS);
		expect(log.lastSeq).toBe(200);
		const files = log.files;
		expect(files.length).toBe(4); // 3 rotated + the active file
		expect(files[3]).toBe(file);
		// bounded: every file is at most the rotation size plus one commit
		let total = 0;
		for (const f of files) total += (await stat(f)).size;
		expect(total).toBeLessThan(4 * (2000 + 300));
		// each rotated file is named for its first record and continues the file before it
		const anchor = JSON.parse(await readFile(`${file}.anchor`, "utf8")) as {
			seq: number;
			hash: string;
		};
		let prev = anchor;
		for (const f of files) {
			const ls = await lines(f);
			if (f !== file)
				expect(f).toBe(`${file}.${String(ls[0]?.seq).padStart(12, "0")}`);
			expect(ls[0]?.seq).toBe(prev.seq + 1);
			expect(ls[0]?.prev).toBe(prev.hash);
			const last = ls[ls.length - 1] as { seq: number; hash: string };
			prev = { seq: last.seq, hash: last.hash };
		}
		expect(prev.seq).toBe(200);
		const chain = await log.verifyChain();
		expect(chain).toEqual({
			records: 200 - anchor.seq,
			ok: true,
			firstSeq: anchor.seq + 1,
		});
		// queries span the files: everything kept, newest last; paging forward; the newest few
		const all = await log.query({ limit: 10_000 });
		expect(all.map((r) => r.seq)).toEqual(
			Array.from({ length: 200 - anchor.seq }, (_, i) => anchor.seq + 1 + i),
		);
		const paged: number[] = [];
		for (let since = 0; ; ) {
			const page = await log.query({ sinceSeq: since, limit: 7 });
			if (page.length === 0) break;
			paged.push(...page.map((r) => r.seq));
			since = page[page.length - 1]?.seq as number;
		}
		expect(paged).toEqual(all.map((r) => r.seq));
		expect((await log.query({ limit: 3 })).map((r) => r.seq)).toEqual([
			198, 199, 200,
		]);
		const r1 = await log.query({ resource: "repo/key/r1", limit: 10_000 });
		expect(r1.map((r) => r.seq)).toEqual(
			all.filter((r) => r.resource === "repo/key/r1").map((r) => r.seq),
		);
		// appending goes on across reopenings
		expect(await log.append(rec(201))).toEqual({ seq: 201 });
		await log.close();
		expect(
			(await readdir(dir)).filter((n) => n.startsWith("audit.log.0")).length,
		).toBe(3);
	});

	it("a crash between renaming the active file and creating the next one: open continues the chain", async () => {
		const { file } = await filled(10, { rotateBytes: 0, keep: 3 });
		await rename(file, `${file}.000000000001`);
		const log = await AuditLog.open(file, OPTS);
		expect(log.lastSeq).toBe(10);
		expect(await log.append(rec(11))).toEqual({ seq: 11 });
		expect(await log.verifyChain()).toEqual({ records: 11, ok: true });
		await log.close();
	});

	it("a crash after anchoring but before removing the oldest file: open finishes the removal", async () => {
		const { file, dir } = await filled(200);
		const anchorText = await readFile(`${file}.anchor`, "utf8");
		const log0 = await AuditLog.open(file, OPTS);
		const oldest = log0.files[0] as string;
		const kept = await log0.query({ limit: 10_000 });
		await log0.close();
		// the anchor moves past the oldest file, which is still there
		const last = (await lines(oldest)).pop() as { seq: number; hash: string };
		await writeFile(
			`${file}.anchor`,
			JSON.stringify({ seq: last.seq, hash: last.hash }),
		);
		const log = await AuditLog.open(file, OPTS);
		expect(log.files).not.toContain(oldest);
		expect((await readdir(dir)).map((n) => join(dir, n))).not.toContain(oldest);
		expect((await log.query({ limit: 10_000 }))[0]?.seq).toBe(last.seq + 1);
		expect((await log.verifyChain()).ok).toBe(true);
		await log.close();
		expect(anchorText).not.toBe("");
		expect(kept.length).toBeGreaterThan(0);
	});

	it("refuses a rotated file removed from the middle, replaced, torn, or not continuing the chain", async () => {
		for (const damage of [
			"remove-middle",
			"torn",
			"head-edited",
			"foreign",
		] as const) {
			const { file } = await filled(200);
			const log = await AuditLog.open(file, OPTS);
			const [a, b] = log.files as [string, string];
			await log.close();
			if (damage === "remove-middle") await unlink(b);
			else if (damage === "torn") {
				const t = await readFile(b);
				await writeFile(b, t.subarray(0, t.length - 5));
			} else if (damage === "head-edited") {
				const t = await readFile(b, "utf8");
				await writeFile(
					b,
					t.replace(/"seq":(\d+)/, (_m, n) => `"seq":${Number(n) + 1}`),
				);
			} else {
				// another log's file under this name
				const other = await filled(200);
				const o = await AuditLog.open(other.file, OPTS);
				const theirs = o.files[1] as string;
				await o.close();
				await writeFile(b, await readFile(theirs));
			}
			const e = await rejection(AuditLog.open(file, OPTS));
			expect(e.code, damage).toBe("FORMAT_INVALID");
			expect(e.message).toMatch(/audit\.log\.\d{12}/);
			expect(a).not.toBe(b);
		}
	});

	it("damage inside a rotated file is found by verifyChain and by a query that reads it", async () => {
		const { file } = await filled(200);
		const log0 = await AuditLog.open(file, OPTS);
		const target = log0.files[1] as string;
		await log0.close();
		const ls = (await readFile(target, "utf8")).split("\n");
		ls[2] = (ls[2] as string).replace("record", "RECORD");
		await writeFile(target, ls.join("\n"));
		const log = await AuditLog.open(file, OPTS); // ends intact: open accepts it
		const v = await log.verifyChain();
		expect(v.ok).toBe(false);
		expect((await rejection(log.query({ limit: 10_000 }))).code).toBe(
			"FORMAT_INVALID",
		);
		// the newest records (the active file only) still read
		expect((await log.query({ limit: 2 })).map((r) => r.seq)).toEqual([
			199, 200,
		]);
		await log.close();
	});
});
