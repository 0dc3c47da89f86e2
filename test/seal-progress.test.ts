/**
 * Issue 12, "show progress": what a user sees while `dadi-seal seal` works. Push progress counts
 * only bytes the registry acknowledged (checked against a counting proxy at the moment each
 * progress event is printed) and reports blobs the registry already has as not sent; a quiet
 * phase — the registry holding an upload, mke2fs working — gets heartbeats; layers are numbered
 * the same way (from 1, of n) in progress, report and errors. Real registry, real images (umoci),
 * real mke2fs (held back by a wrapper until the test has seen the heartbeat, so nothing is timed).
 */
import { spawn } from "node:child_process";
import { chmod, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
	BIN,
	cleanupTempDirs,
	prng,
	runCli,
	tempDir,
	writeDisk,
	writeKey,
} from "./helpers.js";
import { buildTestImage, run, tarEntry, tarOf } from "./image-fixtures.js";
import {
	type FaultProxy,
	type ProxiedRequest,
	startFaultProxy,
} from "./registry/fault-proxy.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";

const MiB = 1 << 20;
const SEAL_ID = "0123456789abcdef0123456789abcdef";
let dir: string;
let keyPath: string;
let reg: RunningRegistry;
let proxy: FaultProxy;
let img: string;

beforeAll(async () => {
	expect(process.getuid?.()).toBe(0); // sealing container images needs root
	dir = await tempDir();
	keyPath = (await writeKey(dir)).path;
	// Random data: stored as it is, so the layer blob is about 24 MiB.
	await writeDisk(join(dir, "d.img"), 32 * MiB, [
		{ at: 0, bytes: prng("progress", 24 * MiB) },
	]);
	reg = await startRegistry();
	proxy = await startFaultProxy(reg);
	img = await buildTestImage(dir);
});

afterAll(async () => {
	await proxy?.close();
	await reg?.stop();
	await cleanupTempDirs();
});

interface Seen {
	/** A progress line (text) or event (--json). */
	line: string;
	event?: {
		phase: string;
		done: number;
		total: number;
		layer?: number;
		layers?: number;
		heartbeat?: boolean;
		skipped?: { exists: number; mounted: number; bytes: number };
	};
	/** Request body bytes the proxy had received when the line was read. */
	bytesIn: number;
}

/**
 * Runs dadi-seal, handing each stderr line (with the proxy's count at that moment) to `onLine`
 * as it arrives.
 */
function sealWatching(
	args: string[],
	onLine: (s: Seen) => void = () => {},
	env: NodeJS.ProcessEnv = process.env,
): Promise<{ code: number | null; stdout: string; seen: Seen[] }> {
	return new Promise((resolve) => {
		const p = spawn(process.execPath, [BIN.seal, "seal", ...args], {
			stdio: ["ignore", "pipe", "pipe"],
			env,
		});
		const seen: Seen[] = [];
		let stdout = "";
		let partial = "";
		p.stdout.on("data", (d: Buffer) => {
			stdout += d.toString();
		});
		p.stderr.on("data", (d: Buffer) => {
			const lines = (partial + d.toString()).split("\n");
			partial = lines.pop() ?? "";
			for (const line of lines) {
				const s: Seen = { line, bytesIn: proxy.bodyBytesIn };
				if (line.startsWith('{"progress"')) s.event = JSON.parse(line).progress;
				seen.push(s);
				onLine(s);
			}
		});
		p.on("close", (code) => resolve({ code, stdout, seen }));
	});
}

const isUploadPut = (r: ProxiedRequest) =>
	r.method === "PUT" && r.url.includes("/blobs/uploads/");

describe("push progress", () => {
	it("counts only bytes the registry acknowledged, announces the push at once and keeps a held upload alive with heartbeats", async () => {
		let release: () => void = () => {};
		const gate = new Promise<void>((r) => {
			release = r;
		});
		let held = true;
		let puts = 0;
		proxy.setRule((r) =>
			isUploadPut(r) && puts++ === 0
				? { kind: "hold", until: gate }
				: undefined,
		);
		// The first upload waits until the push was announced and a heartbeat came while it was held
		// (or 25 s, so a build without them still finishes and fails the assertions below).
		const fallback = setTimeout(release, 25_000);
		const announcedWhileHeld: Seen[] = [];
		const heartbeatsWhileHeld: Seen[] = [];
		const start = proxy.bodyBytesIn;
		const r = await sealWatching(
			[
				`raw:${join(dir, "d.img")}`,
				`docker://${proxy.host}/pp/disk:v1`,
				"--key",
				keyPath,
				"--seal-id",
				SEAL_ID,
				"--insecure",
				"--json",
			],
			(s) => {
				if (!held || s.event?.phase !== "pushing") return;
				if (s.event.total > 0 && s.event.done === 0) announcedWhileHeld.push(s);
				if (s.event.heartbeat) heartbeatsWhileHeld.push(s);
				if (announcedWhileHeld.length > 0 && heartbeatsWhileHeld.length > 0) {
					held = false;
					release();
				}
			},
		);
		clearTimeout(fallback);
		proxy.setRule(undefined);
		expect(r.code, r.seen.map((s) => s.line).join("\n")).toBe(0);
		const out = JSON.parse(r.stdout);
		expect(out.push.blobs).toEqual({ uploaded: 2, exists: 0, mounted: 0 });
		expect(announcedWhileHeld.length).toBeGreaterThan(0);
		expect(heartbeatsWhileHeld.length).toBeGreaterThan(0);
		const pushing = r.seen.filter((s) => s.event?.phase === "pushing");
		let last = 0;
		for (const s of pushing) {
			const e = s.event as NonNullable<Seen["event"]>;
			expect(e.done, s.line).toBeLessThanOrEqual(s.bytesIn - start);
			expect(e.done, s.line).toBeGreaterThanOrEqual(last);
			last = e.done;
		}
		const final = pushing[pushing.length - 1]?.event;
		expect(final?.done).toBe(out.push.bytesUploaded);
		expect(final?.total).toBe(out.push.bytesUploaded);
		expect(out.push.bytesUploaded).toBeGreaterThan(24 * MiB);
		// Sealing came first, and its progress was over before the push began.
		const phases = r.seen.map((s) => s.event?.phase);
		expect(phases.lastIndexOf("sealing")).toBeLessThan(
			phases.indexOf("pushing"),
		);
	});

	it("reports blobs the registry already has as not sent, and does not count them", async () => {
		// Same disk, key and seal id: the same layer blob; another key reference: another config.
		const start = proxy.bodyBytesIn;
		const r = await sealWatching([
			`raw:${join(dir, "d.img")}`,
			`docker://${proxy.host}/pp/disk:v2`,
			"--key",
			keyPath,
			"--seal-id",
			SEAL_ID,
			"--key-ref",
			"kbs:///default/image-key/other",
			"--insecure",
		]);
		expect(r.code, r.seen.map((s) => s.line).join("\n")).toBe(0);
		const lines = r.seen.filter((s) => s.line.startsWith("pushing"));
		const final = lines[lines.length - 1] as Seen;
		// Only the config was sent (about a KiB: it carries the sealed config), not the 24 MiB layer the registry had.
		expect(final.line).toMatch(
			/^pushing: 100% \((\d+ B|\d\.\d KiB) \/ (\d+ B|\d\.\d KiB)\); 1 blob not sent \(24\.\d MiB\): 1 already there, 0 mounted$/,
		);
		const m = /\((\d+(?:\.\d)?) (B|KiB) \//.exec(final.line);
		const sent = Number(m?.[1]) * (m?.[2] === "KiB" ? 1024 : 1);
		// What is shown as sent was received by the registry (shown rounded to a tenth of a KiB).
		expect(sent).toBeLessThanOrEqual(final.bytesIn - start + 52);
		expect(sent).toBeLessThan(4096);
		for (const s of lines) expect(s.line).not.toMatch(/MiB \//);
	});
});

describe("building the file system", () => {
	it("a long mke2fs gets heartbeats naming the layer and phase, then the debugfs time fixing counts its commands", async () => {
		// A wrapper mke2fs that waits for the test's go-ahead (at most 30 s), then runs the real one.
		const bin = join(dir, "slow-bin");
		const go = join(dir, "mke2fs.go");
		await run("mkdir", ["-p", bin]);
		const real = (await run("sh", ["-c", "command -v mke2fs"])).trim();
		await writeFile(
			join(bin, "mke2fs"),
			`#!/bin/sh\ni=0\nwhile [ ! -e "${go}" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\nexec ${real} "$@"\n`,
		);
		await chmod(join(bin, "mke2fs"), 0o755);
		let heldHeartbeat: string | undefined;
		const r = await sealWatching(
			[`oci:${img}:v1`, `oci:${join(dir, "hb")}:v1`, "--key", keyPath],
			(s) => {
				if (
					heldHeartbeat === undefined &&
					/^layer 1\/1: building ext4… \[\d+ s\]$/.test(s.line)
				) {
					heldHeartbeat = s.line;
					void writeFile(go, "");
				}
			},
			{ ...process.env, PATH: `${bin}:${process.env.PATH}` },
		);
		const text = r.seen.map((s) => s.line).join("\n");
		expect(r.code, text).toBe(0);
		expect(heldHeartbeat, text).toBeDefined();
		await expect(stat(go)).resolves.toBeTruthy();
		expect(text).toMatch(/^layer 1\/1: applying: 100% \(/m);
		expect(text).toMatch(
			/^layer 1\/1: fixing inode times: 100% \((\d+) \/ \1 commands\)$/m,
		);
		expect(text).toMatch(/^layer 1\/1: sealing: 100% /m);
	});
});

describe("layer numbering", () => {
	it("progress, the report and --json number layers from 1 of n, the same way", async () => {
		const text = await runCli(BIN.seal, [
			"seal",
			`oci:${img}:v3`,
			`oci:${join(dir, "num")}:t`,
			"--key",
			keyPath,
		]);
		expect(text.code, text.stderr).toBe(0);
		const progressed = new Set(
			[...text.stderr.matchAll(/^layer (\d)\/(\d): sealing/gm)].map(
				(m) => `${m[1]}/${m[2]}`,
			),
		);
		const reported = [
			...text.stdout.matchAll(/^ {2}layer (\d)\/(\d): stored/gm),
		].map((m) => `${m[1]}/${m[2]}`);
		expect([...progressed]).toEqual(["1/3", "2/3", "3/3"]);
		expect(reported).toEqual(["1/3", "2/3", "3/3"]);
		const json = await runCli(BIN.seal, [
			"seal",
			`oci:${img}:v3`,
			`oci:${join(dir, "num-json")}:t`,
			"--key",
			keyPath,
			"--json",
		]);
		expect(json.code, json.stderr).toBe(0);
		const out = JSON.parse(json.stdout);
		expect(out.layerIndexBase).toBe(1);
		expect(out.sourceLayers).toBe(3);
		expect(
			out.layers.map((l: { position: number; sourceLayers: number[] }) => [
				l.position,
				l.sourceLayers,
			]),
		).toEqual([
			[1, [1]],
			[2, [2]],
			[3, [3]],
		]);
		const events = json.stderr
			.split("\n")
			.filter((l) => l.startsWith('{"progress"'))
			.map((l) => JSON.parse(l).progress);
		const sealing = new Set(
			events
				.filter((e) => e.phase === "sealing")
				.map((e) => `${e.layer}/${e.layers}`),
		);
		expect([...sealing]).toEqual(["1/3", "2/3", "3/3"]);
	});

	it("an error in a layer names it as progress did", async () => {
		const layout = join(dir, "bad-layer");
		await run("cp", ["-a", img, layout]);
		await writeFile(
			join(dir, "bad.tar"),
			tarOf([tarEntry({ name: "../escaped", body: Buffer.from("x") })]),
		);
		await run("umoci", [
			"raw",
			"add-layer",
			"--image",
			`${layout}:v1`,
			"--tag",
			"bad",
			join(dir, "bad.tar"),
		]);
		const r = await runCli(BIN.seal, [
			"seal",
			`oci:${layout}:bad`,
			`oci:${join(dir, "bad-out")}:t`,
			"--key",
			keyPath,
		]);
		expect(r.code).toBe(3);
		const lines = r.stderr.trimEnd().split("\n");
		const error = lines[lines.length - 1] as string;
		expect(error).toMatch(
			/^dadi-seal seal: error: layer 2\/2: tar entry "\.\.\/escaped": .*\[INPUT_INVALID\]$/,
		);
		const labels = lines
			.slice(0, -1)
			.map((l) => /^(layer \d\/\d):/.exec(l)?.[1])
			.filter(Boolean);
		expect(labels[labels.length - 1]).toBe("layer 2/2");
	});
});
