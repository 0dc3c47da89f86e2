/**
 * Issue 18, end to end as root with a real registry and a real FUSE + loop mount: a start-up
 * trace recorded by `dadi-guest serve --record-trace`, attached with `dadi-seal trace attach`
 * (found under the referrers tag `sha256-<hex>`), replayed on a cold start; a trace moved onto
 * another image or tampered with is refused and never used; `dadi-seal copy` carries it along.
 */
import { createHash } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeTrace } from "../src/format/trace.js";
import {
	attachTrace,
	findTrace,
	RegistryReferrerStore,
	referrersTag,
	TRACE_ARTIFACT_TYPE,
} from "../src/image/trace-referrer.js";
import { MT_OCI_MANIFEST } from "../src/oci/media-types.js";
import { RegistryClient } from "../src/registry/client.js";
import { type Daemon, killDaemons, startDaemon } from "./daemon.js";
import {
	BIN,
	cleanupTempDirs,
	must,
	runCli,
	tempDir,
	writeKey,
} from "./helpers.js";
import { buildTestImage, sh } from "./image-fixtures.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";

let reg: RunningRegistry;
let dir: string;
let keyPath: string;
let keyText: string;
const A = "trace/app:v1";
const B = "trace/other:v1";
/** The start-up set: what the "container" reads first. */
const FILES = [
	"bin/busybox",
	"srv/app/static/index.html",
	"etc/app.conf",
	"etc/hello",
];

beforeAll(async () => {
	if (process.getuid?.() !== 0) throw new Error("these tests run as root");
	reg = await startRegistry();
	dir = await tempDir();
	keyPath = (await writeKey(dir)).path;
	keyText = await readFile(keyPath, "utf8");
	const src = await buildTestImage(await tempDir());
	for (const name of [A, B])
		await must(
			runCli(BIN.seal, [
				"seal",
				`oci:${src}:v3`,
				`docker://${reg.host}/${name}`,
				"--key",
				keyPath,
				"--insecure",
				"--quiet",
			]),
		);
});

afterAll(async () => {
	killDaemons();
	await reg?.stop();
	await cleanupTempDirs();
});

let n = 0;
/** `dadi-guest serve IMAGE --json --mount-at M --cache-dir (fresh) --stats F …`. */
async function serve(
	image: string,
	extra: string[] = [],
): Promise<Daemon & { mnt: string; statsFile: string }> {
	const d = join(dir, `s${++n}`);
	await sh("mkdir", ["-p", join(d, "mnt")]);
	const statsFile = join(d, "stats.json");
	const s = await startDaemon(BIN.guest, [
		"serve",
		`docker://${reg.host}/${image}`,
		"--key",
		keyPath,
		"--insecure",
		"--mount-at",
		join(d, "mnt"),
		"--cache-dir",
		join(d, "cache"),
		"--stats",
		statsFile,
		"--json",
		...extra,
	]);
	return Object.assign(s, { mnt: join(d, "mnt"), statsFile });
}

/**
 * Serves `image` whose attached trace must be refused (AUTH_FAILED): the start still reads the
 * same bytes, and serving stops cleanly. Returns the stopped server (its stderr, its stats).
 */
async function servesWithoutTrace(image: string) {
	const s = await serve(image);
	try {
		expect(s.ready.trace).toMatchObject({
			state: "refused",
			error: { code: "AUTH_FAILED" },
		});
		expect(await readStartupSet(s.mnt)).toEqual(startupHashes);
	} finally {
		expect(await s.stop()).toBe(0);
	}
	return s;
}

async function readStartupSet(mnt: string): Promise<string[]> {
	const out: string[] = [];
	for (const f of FILES)
		out.push(
			createHash("sha256")
				.update(await readFile(join(mnt, f)))
				.digest("hex"),
		);
	return out;
}

async function manifestDigest(image: string): Promise<string> {
	const [repo, tag] = image.split(":") as [string, string];
	const res = await fetch(`${reg.url}/v2/${repo}/manifests/${tag}`, {
		method: "HEAD",
		headers: { accept: MT_OCI_MANIFEST },
	});
	return res.headers.get("docker-content-digest") as string;
}

// biome-ignore lint/suspicious/noExplicitAny: registry JSON documents
async function getJson(path: string, accept: string): Promise<any> {
	const res = await fetch(`${reg.url}/v2/${path}`, { headers: { accept } });
	expect(res.status, path).toBe(200);
	return res.json();
}

function seal(args: string[]) {
	return runCli(BIN.seal, [...args, "--key", keyPath, "--insecure", "--json"]);
}

let traceFile: string;
let startupHashes: string[];
// biome-ignore lint/suspicious/noExplicitAny: the --stats JSON
let coldStats: any;

describe("start-up traces", () => {
	it("records the start-up reads, attaches the sealed trace as a referrer, and replays it on a cold start", async () => {
		traceFile = join(dir, "startup.trace");
		const rec = await serve(A, ["--record-trace", traceFile]);
		try {
			expect(rec.ready.recording).toMatchObject({ file: traceFile });
			expect(rec.ready.trace).toBeUndefined(); // recording means --prefetch none
			startupHashes = await readStartupSet(rec.mnt);
		} finally {
			expect(await rec.stop(), rec.stderr()).toBe(0);
		}
		expect(rec.stderr()).toMatch(/start-up trace: \d+ chunks .* written to/);
		expect(rec.stderr()).not.toContain(JSON.parse(keyText).k);
		expect((await stat(traceFile)).mode & 0o777).toBe(0o600);
		const entries = decodeTrace(await readFile(traceFile));
		expect(entries.length).toBeGreaterThan(10);
		expect(new Set(entries.map((e) => e.layer)).size).toBeGreaterThan(0);
		const recStats = JSON.parse(await readFile(rec.statsFile, "utf8"));
		expect(recStats.recording).toMatchObject({
			entries: entries.length,
			written: true,
		});

		const attached = await must(
			seal([
				"trace",
				"attach",
				`docker://${reg.host}/${A}`,
				"--trace",
				traceFile,
			]),
		);
		const a = JSON.parse(attached.stdout);
		const subject = await manifestDigest(A);
		expect(a).toMatchObject({
			ok: true,
			subject,
			tag: referrersTag(subject),
			entries: entries.length,
			replaced: 0,
		});
		// Discoverable the tag-schema way: the tag's index lists the artifact, whose subject is A.
		const index = await getJson(
			`trace/app/manifests/${referrersTag(subject)}`,
			"application/vnd.oci.image.index.v1+json",
		);
		expect(index.manifests).toEqual([
			expect.objectContaining({
				digest: a.artifact,
				artifactType: TRACE_ARTIFACT_TYPE,
			}),
		]);
		const artifact = await getJson(
			`trace/app/manifests/${a.artifact}`,
			MT_OCI_MANIFEST,
		);
		expect(artifact.subject.digest).toBe(subject);
		expect(artifact.artifactType).toBe(TRACE_ARTIFACT_TYPE);
		const shown = JSON.parse(
			(await must(seal(["trace", "show", `docker://${reg.host}/${A}`]))).stdout,
		);
		expect(shown).toMatchObject({
			entries: entries.length,
			artifact: a.artifact,
		});
		// Attaching again replaces the trace (one dadi trace per image).
		const again = JSON.parse(
			(
				await must(
					seal([
						"trace",
						"attach",
						`docker://${reg.host}/${A}`,
						"--trace",
						traceFile,
					]),
				)
			).stdout,
		);
		expect(again.replaced).toBe(1);

		const cold = await serve(A);
		try {
			expect(cold.ready.trace).toMatchObject({
				mode: "auto",
				entries: entries.length,
			});
			expect(["replaying", "done"]).toContain(
				(cold.ready.trace as { state: string }).state,
			);
			expect(await readStartupSet(cold.mnt)).toEqual(startupHashes);
		} finally {
			expect(await cold.stop(), cold.stderr()).toBe(0);
		}
		coldStats = JSON.parse(await readFile(cold.statsFile, "utf8"));
		expect(coldStats.trace).toMatchObject({
			state: "done",
			entries: entries.length,
			prefetch: expect.objectContaining({ stoppedBy: "done" }),
		});
		// the trace names the metadata the start reads: no file-system walk besides it
		expect(coldStats.fetched.metadataPrefetch).toBeUndefined();
	});

	it("the cold start's on-demand chunk reads are mostly hits", () => {
		const f = coldStats.fetched;
		// the replay fetched chunks, and the start-up's reads used them
		expect(coldStats.trace.prefetch.chunks).toBeGreaterThan(0);
		expect(f.prefetchUsed).toBeGreaterThan(0);
		const hits = f.memoryHits + f.diskHits + f.sharedFetches;
		const misses = Math.max(
			0,
			f.chunksFetched - f.readAheadChunks - f.prefetchChunks,
		);
		expect(hits / (hits + misses)).toBeGreaterThanOrEqual(0.8);
	});

	it("refuses a trace moved onto another image, or tampered with, and runs without it", async () => {
		const client = new RegistryClient(reg.host, { insecure: true });
		try {
			const storeA = new RegistryReferrerStore(client, "trace/app");
			const storeB = new RegistryReferrerStore(client, "trace/other");
			const subjectA = await manifestDigest(A);
			const subjectB = await manifestDigest(B);
			const found = await findTrace(storeA, subjectA);
			if (!found) throw new Error("no trace on A");
			// 1. A's referrer manifest copied by hand onto B's referrers tag: its subject is A.
			await storeB.putBlob(
				Buffer.from("{}"),
				"application/vnd.oci.empty.v1+json",
			);
			await storeB.putBlob(found.sealed, found.blob.mediaType);
			const m = await storeB.putManifest(found.manifestBytes, MT_OCI_MANIFEST);
			await storeB.putManifest(
				Buffer.from(
					JSON.stringify({
						schemaVersion: 2,
						mediaType: "application/vnd.oci.image.index.v1+json",
						manifests: [{ ...m, artifactType: TRACE_ARTIFACT_TYPE }],
					}),
				),
				"application/vnd.oci.image.index.v1+json",
				referrersTag(subjectB),
			);
			const s1 = await servesWithoutTrace(B);
			expect(s1.stderr()).toMatch(
				/warning: ignoring the image's start-up trace: .*another image/,
			);
			// without a usable trace, the file system's metadata is prefetched instead
			const s1Stats = JSON.parse(await readFile(s1.statsFile, "utf8"));
			expect(s1Stats.fetched.metadataPrefetch).toMatchObject({
				fsType: "ext4",
			});
			// 2. Rewritten to name B as its subject: the sealed trace is still bound to A.
			const b2 = await attachTrace(
				storeB,
				{ mediaType: MT_OCI_MANIFEST, digest: subjectB, size: 0 },
				found.sealed,
			);
			expect(b2.replaced).toBe(1);
			const shownB = await seal(["trace", "show", `docker://${reg.host}/${B}`]);
			expect(shownB.code, shownB.stderr).toBe(5);
			expect(JSON.parse(shownB.stdout).error.code).toBe("AUTH_FAILED");
			await sh("mkdir", ["-p", join(dir, "strict-fuse")]);
			const strict = await runCli(BIN.guest, [
				"serve",
				`docker://${reg.host}/${B}`,
				"--key",
				keyPath,
				"--insecure",
				"--fuse",
				join(dir, "strict-fuse"),
				"--prefetch",
				"trace",
				"--json",
			]);
			expect(strict.code, strict.stderr).toBe(5);
			expect(strict.stdout + strict.stderr).toMatch(
				/--prefetch trace: .*authentication failed/,
			);
			// 3. A's own trace with one byte changed (re-pushed with a matching digest).
			const tampered = Buffer.from(found.sealed);
			tampered.writeUInt8(
				(tampered.readUInt8(tampered.length - 20) ^ 1) & 0xff,
				tampered.length - 20,
			);
			await attachTrace(
				storeA,
				{ mediaType: MT_OCI_MANIFEST, digest: subjectA, size: 0 },
				tampered,
			);
			const shownA = await seal(["trace", "show", `docker://${reg.host}/${A}`]);
			expect(shownA.code).toBe(5);
			await servesWithoutTrace(A);
			// Put the good trace back for the copy test.
			await must(
				seal([
					"trace",
					"attach",
					`docker://${reg.host}/${A}`,
					"--trace",
					traceFile,
				]),
			);
		} finally {
			await client.close();
		}
	});

	it("dadi-seal copy carries the trace to another repository and to a layout, where it is found", async () => {
		const copied = JSON.parse(
			(
				await must(
					runCli(BIN.seal, [
						"copy",
						`docker://${reg.host}/${A}`,
						`docker://${reg.host}/trace/copied:v1`,
						"--insecure",
						"--quiet",
						"--json",
					]),
				)
			).stdout,
		);
		expect(copied.trace).toMatchObject({
			artifact: expect.stringMatching(/^sha256:/),
		});
		const entries = decodeTrace(await readFile(traceFile)).length;
		const s = await serve("trace/copied:v1");
		try {
			expect(s.ready.trace).toMatchObject({ entries });
			expect(await readStartupSet(s.mnt)).toEqual(startupHashes);
		} finally {
			expect(await s.stop()).toBe(0);
		}
		const layout = join(await tempDir(), "layout");
		const toLayout = JSON.parse(
			(
				await must(
					runCli(BIN.seal, [
						"copy",
						`docker://${reg.host}/${A}`,
						`oci:${layout}:v1`,
						"--insecure",
						"--quiet",
						"--json",
					]),
				)
			).stdout,
		);
		expect(toLayout.trace).not.toBeNull();
		const shown = await must(
			runCli(BIN.seal, [
				"trace",
				"show",
				`oci:${layout}`,
				"--key",
				keyPath,
				"--json",
			]),
		);
		expect(JSON.parse(shown.stdout).entries).toBe(entries);
	});

	it("dadi-guest run replays the trace as well, and says so in its report", async () => {
		const r = await runCli(BIN.guest, [
			"run",
			`docker://${reg.host}/${A}`,
			"--key",
			keyPath,
			"--insecure",
			"--block",
			"loop",
			"--json",
			"--",
			"/bin/busybox",
			"cat",
			"/etc/hello",
		]);
		expect(r.code, r.stderr).toBe(0);
		expect(r.stdout).toMatch(/^hello from layer/);
		const line = r.stderr.trimEnd().split("\n").pop() as string;
		const report = JSON.parse(line.replace(/^DADI-RUN /, ""));
		expect(report.trace).toMatchObject({
			mode: "auto",
			state: "done",
			entries: decodeTrace(await readFile(traceFile)).length,
		});
	});

	it("SIGUSR1 writes the trace early; later reads are not recorded", async () => {
		const early = join(dir, "early.trace");
		const s = await serve(A, [
			"--record-trace",
			early,
			"--trace-budget-ms",
			"600000",
		]);
		try {
			await readFile(join(s.mnt, "etc/hello"));
			s.child.kill("SIGUSR1");
			for (let i = 0; i < 100; i++) {
				if (
					await stat(early).then(
						() => true,
						() => false,
					)
				)
					break;
				await new Promise((r) => setTimeout(r, 50));
			}
			const first = decodeTrace(await readFile(early));
			expect(first.length).toBeGreaterThan(0);
			await readFile(join(s.mnt, "bin/busybox"));
			expect(decodeTrace(await readFile(early))).toEqual(first);
		} finally {
			expect(await s.stop(), s.stderr()).toBe(0);
		}
		expect(s.stderr()).toMatch(/\(stopped: signal\)/);
		const stats = JSON.parse(await readFile(s.statsFile, "utf8"));
		expect(stats.recording).toMatchObject({
			stoppedBy: "signal",
			written: true,
		});
	});
});
