/**
 * The documentation says what the programs do: every command each program has is documented in
 * docs/cli.md, every program's --help lists all exit codes, the exit-code table is one table, and
 * the docs point only at files the repository has.
 */
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { auditTable } from "../src/cli/broker/resource-command.js";
import { BIN, ROOT, runCli } from "./helpers.js";

const docs = (name: string) => readFile(join(ROOT, "docs", name), "utf8");

/** The command names in a commander --help page. */
function commands(help: string): string[] {
	const at = help.indexOf("Commands:");
	if (at < 0) return [];
	return help
		.slice(at)
		.split("\n")
		.slice(1)
		.map((l) => /^ {2}([a-z][a-z-]*)\b/.exec(l)?.[1])
		.filter((c): c is string => Boolean(c) && c !== "help");
}

describe("docs", () => {
	for (const [prog, bin] of [
		["dadi-seal", BIN.seal],
		["dadi-guest", BIN.guest],
		["dadi-broker", BIN.broker],
		["dadi-k8s", BIN.k8s],
		["dadi-snapshotter", BIN.snapshotter],
	] as const)
		it(`${prog}: --help lists every exit code, and docs/cli.md documents every command`, async () => {
			const r = await runCli(bin, ["--help"]);
			expect(r.code).toBe(0);
			for (const n of [
				"0 ok",
				"1 internal",
				"2 usage",
				"3 input",
				"4 malformed",
				"5 integrity",
				"6 key",
				"7 I/O",
				"8 remote",
				"9 denied",
			])
				expect(r.stdout, n).toContain(n);
			const cli = await docs("cli.md");
			const cmds = commands(r.stdout);
			expect(cmds.length).toBeGreaterThan(1);
			for (const c of cmds)
				expect(cli, `${prog} ${c}`).toContain(`${prog} ${c}`);
			// The summary table names every command too.
			const row = cli.split("\n").find((l) => l.startsWith(`| \`${prog}\``));
			for (const c of cmds)
				expect(row, `${prog} ${c} in the table`).toContain(`\`${c}`);
		});

	it("the exit-code table is one table, 0 to 9 and 130/143", async () => {
		const cli = await docs("cli.md");
		const section = cli.slice(
			cli.indexOf("### 1.4 Exit codes"),
			cli.indexOf("### 1.5"),
		);
		const lines = section.split("\n");
		const first = lines.findIndex((l) => l.startsWith("| Exit"));
		let last = first;
		while (lines[last + 1]?.startsWith("|")) last++;
		const rows = lines
			.slice(first + 2, last + 1)
			.map((l) => l.split("|")[1]?.trim());
		expect(rows).toEqual([
			"0",
			"1",
			"2",
			"3",
			"4",
			"5",
			"6",
			"7",
			"8",
			"9",
			"130 / 143",
		]);
		expect(lines.slice(last + 1).some((l) => l.startsWith("|"))).toBe(false);
	});

	it("points at no file the repository does not have", async () => {
		for (const e of await readdir(join(ROOT, "docs"), {
			withFileTypes: true,
		})) {
			if (!e.isFile()) continue; // docs/img: the charts the docs embed
			const f = e.name;
			const text = await docs(f);
			expect(text, f).not.toMatch(/\bDESIGN\.md\b/);
			for (const m of text.matchAll(/\]\((img\/[a-z0-9.-]+)\)/g))
				expect(
					await readFile(join(ROOT, "docs", m[1] as string)).then(
						() => true,
						() => false,
					),
					`${f} → docs/${m[1]}`,
				).toBe(true);
			for (const m of text.matchAll(/\bdocs\/([a-z-]+\.md)\b/g))
				expect(
					await readFile(join(ROOT, "docs", m[1] as string)).then(
						() => true,
						() => false,
					),
					`${f} → docs/${m[1]}`,
				).toBe(true);
		}
	});

	it("dadi-broker audit prints headings above its records", () => {
		const t = auditTable([
			{
				seq: 1,
				time: "2026-12-07T12:00:00Z",
				event: "deny",
				resource: "default/image-key/a",
				client: "127.0.0.1",
				tee: "sample",
				status: 403,
				reasons: ["no policy matched"],
			},
		]).split("\n");
		expect(t[0]?.split("\t")).toEqual([
			"SEQ",
			"TIME",
			"EVENT",
			"RESOURCE",
			"CLIENT",
			"TEE",
			"STATUS",
			"POLICY",
			"REASONS / DETAIL",
		]);
		expect(t[1]?.split("\t")).toEqual([
			"1",
			"2026-12-07T12:00:00Z",
			"deny",
			"default/image-key/a",
			"127.0.0.1",
			"sample",
			"403",
			"-",
			"no policy matched",
		]);
		expect(auditTable([])).toBe("no audit records match\n");
	});
});
