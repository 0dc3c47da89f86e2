/**
 * Issue 12, "show progress": what a user sees while `dadi-seal seal` works. Push progress counts
 * only bytes the registry acknowledged (checked against a counting proxy at the moment each
 * progress event is printed) and reports blobs the registry already has as not sent; a quiet
 * phase — the registry holding an upload — gets heartbeats. Real registry; nothing is timed (the
 * held upload is released once the test has seen what it waits for).
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
	BIN,
	cleanupTempDirs,
	prng,
	tempDir,
	writeDisk,
	writeKey,
} from "./helpers.js";
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

beforeAll(async () => {
	dir = await tempDir();
	keyPath = (await writeKey(dir)).path;
	// Random data: stored as it is, so the layer blob is about 24 MiB.
	await writeDisk(join(dir, "d.img"), 32 * MiB, [
		{ at: 0, bytes: prng("progress", 24 * MiB) },
	]);
	reg = await startRegistry();
	proxy = await startFaultProxy(reg);
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
		// Only the config was sent (a few hundred bytes), not the 24 MiB layer the registry had.
		expect(final.line).toMatch(
			/^pushing: 100% \(\d+ B \/ \d+ B\); 1 blob not sent \(24\.\d MiB\): 1 already there, 0 mounted$/,
		);
		const sent = Number(/\((\d+) B \//.exec(final.line)?.[1]);
		expect(sent).toBeLessThanOrEqual(final.bytesIn - start);
		for (const s of lines) expect(s.line).not.toMatch(/MiB \/|KiB \//);
	});
});
