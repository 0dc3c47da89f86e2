/** Ctrl-C during long work leaves no temporary or half-written file behind. */
import { spawn } from "node:child_process";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
	BIN,
	cleanupTempDirs,
	listFiles,
	prng,
	runCli,
	tempDir,
} from "./helpers.js";

afterAll(cleanupTempDirs);

async function bigDisk(path: string, mib: number): Promise<void> {
	const fh = await open(path, "w");
	for (let i = 0; i < mib; i += 8)
		await fh.write(prng(`big${i}`, 8 << 20), 0, 8 << 20, i << 20);
	await fh.close();
}

/** Starts a command, sends SIGINT once it reports progress, returns its exit code. */
function interruptAfterProgress(
	args: string[],
): Promise<{ code: number | null; signalSent: boolean }> {
	return new Promise((resolve) => {
		const p = spawn(process.execPath, args, {
			stdio: ["ignore", "ignore", "pipe"],
		});
		let sent = false;
		p.stderr.on("data", (d: Buffer) => {
			if (!sent && /: \d+%/.test(d.toString())) {
				sent = true;
				p.kill("SIGINT");
			}
		});
		p.on("exit", (code) => resolve({ code, signalSent: sent }));
	});
}

describe("interrupting long work", () => {
	it("SIGINT during seal and export removes their temporary files and exits 130", async () => {
		const dir = await tempDir();
		await bigDisk(join(dir, "big.img"), 384);
		expect(
			(await runCli(BIN.seal, ["keygen", "--out", join(dir, "k.jwk")])).code,
		).toBe(0);
		const seal = await interruptAfterProgress([
			BIN.seal,
			"seal",
			`raw:${join(dir, "big.img")}`,
			`oci:${join(dir, "oci")}:t`,
			"--key",
			join(dir, "k.jwk"),
		]);
		expect(seal.signalSent).toBe(true);
		expect(seal.code).toBe(130);
		const files = await listFiles(join(dir, "oci"));
		expect(files.filter((f) => f.includes(".tmp"))).toEqual([]);
		expect(files.filter((f) => f.startsWith("blobs/"))).toEqual([]); // no layer, config or manifest
		expect(
			JSON.parse(
				(await (
					await open(join(dir, "oci/index.json"))
				).readFile("utf8")) as string,
			).manifests,
		).toEqual([]);

		expect(
			(
				await runCli(BIN.seal, [
					"seal",
					`raw:${join(dir, "big.img")}`,
					`oci:${join(dir, "oci")}:t`,
					"--key",
					join(dir, "k.jwk"),
					"--compress",
					"none",
					"--quiet",
				])
			).code,
		).toBe(0);
		const exp = await interruptAfterProgress([
			BIN.seal,
			"export",
			`oci:${join(dir, "oci")}:t`,
			"--key",
			join(dir, "k.jwk"),
			"--out",
			join(dir, "out.img"),
		]);
		expect(exp.signalSent).toBe(true);
		expect(exp.code).toBe(130);
		expect((await listFiles(dir)).filter((f) => f.includes("out.img"))).toEqual(
			[],
		);
	});
});
