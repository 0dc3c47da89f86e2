/**
 * policies/azure-tdx.json on Trustee's real az-tdx-vtpm sample (test/fixtures/azure-vtpm): every rule
 * holds but the TCB status, which needs collateral the sample does not come with — so it is refused
 * for that reason alone, and allowed once the claims carry an accepted status.
 */
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { BIN, cleanupTempDirs, ROOT, runCli, tempDir } from "./helpers.js";

afterAll(cleanupTempDirs);

describe("policies/azure-tdx.json", () => {
	it("judges the real Azure TDX sample: only the TCB status (no collateral) is missing", async () => {
		const dir = await tempDir();
		const v = await runCli(BIN.broker, [
			"evidence",
			"verify",
			"--tee",
			"az-tdx-vtpm",
			"--evidence",
			join(ROOT, "test/fixtures/azure-vtpm/tdx-evidence-v1.json"),
			"--report-data",
			Buffer.from("challenge").toString("hex"),
			"--json",
		]);
		expect(v.code).toBe(0);
		const claims = JSON.parse(v.stdout).claims;
		expect(claims.tcb_status).toBe("");
		const file = join(dir, "claims.json");
		const decide = async (c: unknown) => {
			await writeFile(file, JSON.stringify(c));
			const r = await runCli(BIN.broker, [
				"policy",
				"test",
				"--policy",
				join(ROOT, "policies/azure-tdx.json"),
				"--claims",
				file,
				"--resource",
				"production/image-key/app",
				"--json",
			]);
			return { code: r.code, out: JSON.parse(r.stdout) };
		};
		const denied = await decide(claims);
		expect(denied.code).toBe(9);
		const rules = (
			denied.out.results[0].rules as { rule: string; ok: boolean }[]
		).filter((r) => !r.ok);
		expect(rules.map((r) => r.rule)).toEqual(["tcb-status"]);
		const allowed = await decide({ ...claims, tcb_status: "UpToDate" });
		expect(allowed.code).toBe(0);
		const otherPcr = {
			...claims,
			tcb_status: "UpToDate",
			tee_specific: { ...claims.tee_specific, pcr07: "00".repeat(32) },
		};
		expect((await decide(otherPcr)).code).toBe(9);
		expect(await readFile(join(ROOT, "policies/README.md"), "utf8")).toContain(
			"azure-tdx.json",
		);
	});
});
