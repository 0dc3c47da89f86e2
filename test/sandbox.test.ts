/**
 * `npm run sandbox` (test/sandbox/run.ts), run as CI runs it: a real QEMU micro-VM decrypts a
 * sealed image that containerd pulled through dadi-snapshotter in guest mode; the host side holds
 * no marker and no key byte while the control run finds its markers; a denied guest fails cleanly.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "./helpers.js";
import { GREETING } from "./sandbox/marker-image.js";

describe("the confidential sandbox (QEMU, TCG)", () => {
	it("runs the sealed image's command inside the VM; the host sees only ciphertext", async () => {
		const r = await new Promise<{
			code: number;
			stdout: string;
			stderr: string;
		}>((resolve) =>
			execFile(
				process.execPath,
				[join(ROOT, "dist/test/sandbox/run.js")],
				{ maxBuffer: 64 << 20, timeout: 900_000 },
				(err, stdout, stderr) =>
					resolve({
						code: err ? (typeof err.code === "number" ? err.code : 1) : 0,
						stdout,
						stderr,
					}),
			),
		);
		if (r.code !== 0) console.error(r.stderr.slice(-20000));
		const lines = r.stdout.trim().split("\n");
		expect(r.stdout, "npm run sandbox printed no result line").toMatch(/\}\n$/);
		const result = JSON.parse(lines[lines.length - 1] as string);
		expect(result.failures).toEqual([]);
		expect(r.code).toBe(0);
		expect(result.ok).toBe(true);
		// The container's own command ran with its own config, inside the VM.
		expect(lines[0]).toBe(GREETING);
		expect(result.output).toContain("cwd=/srv");
		// The proof, and the control that shows the scan finds markers where they are.
		expect(result.markersOnHost).toBe(0);
		expect(result.keyBytesOnHost).toBe(0);
		expect(result.scanned.files).toBeGreaterThan(10);
		expect(result.scanned.captureStreams).toBeGreaterThan(0);
		expect(result.control.markersInRegistry).toBe(3);
		expect(result.control.markersInCapture).toBe(3);
		// The denied guest: the broker's denial, nothing mounted or attached.
		expect(result.denied.exitCode).not.toBe(0);
		expect(result.denied.denial).toMatch(/denied/i);
		expect(result.denied.mounted).toBe(0);
		expect(result.denied.nbdAttached).toBe(0);
		expect(result.kataMount).toBe("fuse.dadi-guest");
		for (const k of ["boot", "attest", "firstRead", "mount", "exec"])
			expect(result.timings[k]).toBeGreaterThan(0);
		expect(result.guestMemoryMiB).toBeGreaterThan(0);
	}, 900_000);
});
