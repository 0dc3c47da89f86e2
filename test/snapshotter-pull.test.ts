/**
 * `dadi-snapshotter pull` against the real peers: Debian's containerd 1.6 and runc, the real
 * registry (distribution) behind a counting proxy, and dadi's snapshotter serving containerd as its
 * proxy snapshotter "dadi" with the directory test plug-in (test/snapshotter/directory-layers.ts),
 * which claims a layer whose descriptor carries the annotation
 * `containerd.io/snapshot/dadi-test.dir` and mounts that directory as the layer.
 *
 * (a) an image whose two lower layers carry the annotation and whose top layer does not: the two
 *     are claimed and never leave the registry (no request names them; the content store has not
 *     got them), the top one is downloaded and applied by containerd; `ctr images ls` lists the
 *     image, `ctr run --snapshotter dadi` runs it — the plug-in's files below, the applied layer on
 *     top — and after `ctr images rm --sync` containerd's garbage collector removes every snapshot
 *     and blob. (b) an ordinary two-platform image through the same command: this machine's image
 *     is downloaded and applied, runs, and its chain IDs and content labels are exactly what
 *     `ctr images pull` produces for it; the same image with docker's media types; a layer the
 *     registry tampers with; two pulls at once; a pull interrupted. (c) errors: containerd not
 *     running, an unknown snapshotter, a snapshotter whose process is down, an unknown tag, a
 *     platform the index lacks.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, symlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { chainIds } from "../src/containerd/chain-id.js";
import {
	type SnapshotsServer,
	serveSnapshots,
} from "../src/snapshotter/grpc-server.js";
import { detectOverlayOptions } from "../src/snapshotter/overlay-support.js";
import { Snapshotter } from "../src/snapshotter/snapshotter.js";
import {
	BIN,
	type CliResult,
	cleanupTempDirs,
	runCli,
	tempDir,
} from "./helpers.js";
import { run } from "./image-fixtures.js";
import {
	type FaultProxy,
	faultOnce,
	startFaultProxy,
} from "./registry/fault-proxy.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";
import { type Containerd, startContainerd } from "./snapshotter/containerd.js";
import { DIR_LABEL, DirectoryLayers } from "./snapshotter/directory-layers.js";
import {
	type BuiltImage,
	type Files,
	Layout,
	shellFiles,
} from "./snapshotter/pull-images.js";
import { unmountUnder } from "./snapshotter/unmount.js";

let dir: string;
let reg: RunningRegistry;
let proxy: FaultProxy;
let ctd: Containerd | undefined;
let sn: Snapshotter | undefined;
let server: SnapshotsServer | undefined;
const hook = new DirectoryLayers();
let lazy: BuiltImage;
let plain: { amd64: BuiltImage; arm64: BuiltImage; index: string };
/** The names the images are pulled by (through the counting proxy). */
let lazyRef: string;
let plainRef: string;
let dockerRef: string;

async function materialize(root: string, files: Files): Promise<void> {
	for (const [path, v] of Object.entries(files)) {
		const p = join(root, path);
		await mkdir(v === null ? p : dirname(p), { recursive: true });
		if (v === null) continue;
		if (typeof v === "object" && !Buffer.isBuffer(v)) await symlink(v.link, p);
		else
			await writeFile(p, v, { mode: path.startsWith("bin/") ? 0o755 : 0o644 });
	}
}

const pull = (args: string[]): Promise<CliResult> =>
	runCli(BIN.snapshotter, [
		"pull",
		"--insecure",
		"--address",
		(ctd as Containerd).socket,
		...args,
	]);

/** `ctr content ls`: digest → labels. */
async function content(
	ns = "default",
): Promise<Map<string, Record<string, string>>> {
	const out = await (ctd as Containerd).ctr(["-n", ns, "content", "ls"]);
	const m = new Map<string, Record<string, string>>();
	for (const line of out.trim().split("\n").slice(1)) {
		// tabwriter pads with tabs: a column may be followed by several
		const [digest, , , labels = ""] = line.split(/\t+/);
		if (!digest) continue;
		const l: Record<string, string> = {};
		for (const kv of labels.split(",").filter(Boolean)) {
			const at = kv.indexOf("=");
			l[kv.slice(0, at)] = kv.slice(at + 1);
		}
		m.set(digest, l);
	}
	return m;
}

/** Requests through the proxy whose path names a digest of `digests`. */
const requestsFor = (digests: string[]) =>
	proxy.requests.filter((r) => digests.some((d) => r.url.includes(d)));

async function snapshotterRecords(): Promise<
	{
		key: string;
		kind: string;
		remote?: unknown;
		labels: Record<string, string>;
	}[]
> {
	return JSON.parse(
		await readFile(join(dir, "sn-root", "metadata.json"), "utf8"),
	).snapshots;
}

async function waitFor(
	what: string,
	ok: () => Promise<boolean>,
): Promise<void> {
	const deadline = Date.now() + 30_000;
	while (!(await ok())) {
		if (Date.now() > deadline) throw new Error(`timed out waiting: ${what}`);
		await new Promise((r) => setTimeout(r, 250));
	}
}

async function withLogs<T>(fn: () => Promise<T>): Promise<T> {
	try {
		return await fn();
	} catch (e) {
		const c = ctd as Containerd;
		const log = existsSync(c.logFile)
			? (await readFile(c.logFile, "utf8")).slice(-3000)
			: "";
		// The same error (vitest still shows its diff), with containerd's last words.
		if (e instanceof Error)
			e.message += `\n--- containerd log ---\n${log.replace(/.*level=info.*\n/g, "")}`;
		throw e;
	}
}

beforeAll(async () => {
	if (process.getuid?.() !== 0) throw new Error("these tests run as root");
	dir = await tempDir();
	reg = await startRegistry();
	proxy = await startFaultProxy(reg);

	// (a): two claimed layers (their blobs hold other bytes than the plug-in's directories, so what
	// a container sees shows where each layer came from), one ordinary layer on top.
	const dirA = join(dir, "plugin-layer-a");
	const dirB = join(dir, "plugin-layer-b");
	await materialize(dirA, await shellFiles("from the plug-in's directory A\n"));
	await materialize(dirB, {
		etc: null,
		"etc/layer2": "layer 2 from the plug-in\n",
	});
	const a = await Layout.create(join(dir, "lazy-oci"));
	lazy = await a.image([
		{
			files: { etc: null, "etc/hello": "from the registry blob 1\n" },
			annotations: {
				[DIR_LABEL]: dirA,
				"containerd.io/snapshot/dadi-test.note": "claimed",
				"org.example.not-passed-on": "x",
			},
		},
		{
			files: { etc: null, "etc/layer2": "from the registry blob 2\n" },
			annotations: { [DIR_LABEL]: dirB },
		},
		{ files: { etc: null, "etc/layer3": "layer 3 applied by containerd\n" } },
	]);
	await a.tag("v1", lazy.manifest);
	await a.push("v1", `${reg.host}/pull/lazy:v1`);
	lazyRef = `${proxy.host}/pull/lazy:v1`;

	// (b): an ordinary image for two platforms (the arm64 one only differs in its config).
	const b = await Layout.create(join(dir, "plain-oci"));
	const layers = [
		{ files: await shellFiles("hello from layer 1\n") },
		{ files: { etc: null, "etc/layer2": "layer 2 was here\n" } },
	];
	const amd64 = await b.image(layers, "amd64");
	const arm64 = await b.image(layers, "arm64");
	const index = await b.index([
		{ manifest: amd64.manifest, architecture: "amd64" },
		{ manifest: arm64.manifest, architecture: "arm64" },
	]);
	await b.tag("v1", index);
	await b.push("v1", `${reg.host}/pull/plain:v1`);
	await b.tag("amd64", amd64.manifest);
	await b.push("amd64", `${reg.host}/pull/docker:v1`, true);
	plain = { amd64, arm64, index: index.digest };
	plainRef = `${proxy.host}/pull/plain:v1`;
	dockerRef = `${proxy.host}/pull/docker:v1`;

	const socket = join(dir, "sn.sock");
	sn = await Snapshotter.open({
		root: join(dir, "sn-root"),
		log: () => {},
		overlay: detectOverlayOptions(),
		remote: hook,
	});
	server = await serveSnapshots(sn, socket, () => {});
	ctd = await startContainerd(join(dir, "ctd"), socket, {
		down: join(dir, "nobody-listens.sock"),
	});
	await ctd.waitForSnapshotter();
}, 300_000);

// Each test starts from an empty containerd: what a failed test left is removed (best effort), so
// one failure does not fail the tests after it.
afterEach(async () => {
	const c = ctd;
	proxy?.setRule(undefined);
	if (!c) return;
	for (const ns of ["default", "ctrpull"]) {
		const names = await c.ctr(["-n", ns, "images", "ls", "-q"]).catch(() => "");
		for (const n of names.split("\n").filter(Boolean))
			await c.ctr(["-n", ns, "images", "rm", "--sync", n]).catch(() => "");
	}
	await waitFor("every snapshot to go", async () =>
		(await snapshotterRecords()).every((s) => s.kind === "committed"),
	).catch(() => {});
});

afterAll(async () => {
	await ctd?.stop();
	await server?.close();
	await sn?.close();
	await proxy?.close();
	await reg?.stop();
	if (dir) await unmountUnder(dir);
	await cleanupTempDirs();
});

describe("dadi-snapshotter pull", () => {
	it("(a) claimed layers are never downloaded; the image is listed, runs from the plug-in's files, and is garbage collected", () =>
		withLogs(async () => {
			const c = ctd as Containerd;
			const claimedDigests = lazy.layers.slice(0, 2).map((l) => l.digest);
			const top = lazy.layers[2] as BuiltImage["layers"][number];
			const chains = chainIds(lazy.layers.map((l) => l.diffId));
			const r = await pull(["--json", lazyRef]);
			expect(r.code, r.stderr).toBe(0);
			const doc = JSON.parse(r.stdout);
			expect(doc).toMatchObject({
				ok: true,
				name: lazyRef,
				target: { digest: lazy.manifest.digest },
				config: { digest: lazy.config.digest },
				chainId: chains[2],
				image: "created",
				namespace: "default",
				snapshotter: "dadi",
			});
			expect(
				doc.layers.map((l: { outcome: string; chainId: string }) => [
					l.outcome,
					l.chainId,
				]),
			).toEqual([
				["claimed", chains[0]],
				["claimed", chains[1]],
				["applied", chains[2]],
			]);
			expect(doc.layers[2].downloaded).toBe(top.size);
			// Progress went to stderr as JSON lines, naming each layer's fate.
			const phases = r.stderr
				.trim()
				.split("\n")
				.map((l) => JSON.parse(l).progress)
				.map((p) => (p.layer ? `${p.layer}/${p.layers} ${p.phase}` : p.phase));
			expect(phases).toContain(
				'1/3 claimed by the snapshotter "dadi" (not downloaded)',
			);
			expect(phases).toContain(
				'2/3 claimed by the snapshotter "dadi" (not downloaded)',
			);
			expect(phases).toContain("3/3 downloading");
			expect(phases).toContain("3/3 applying");
			// The registry was never asked for the claimed layers; the top layer once.
			expect(requestsFor(claimedDigests)).toEqual([]);
			expect(requestsFor([top.digest]).map((q) => q.method)).toEqual(["GET"]);
			// The content store has the manifest, config and top layer, not the claimed layers.
			const cs = await content();
			expect([...cs.keys()].sort()).toEqual(
				[lazy.manifest.digest, lazy.config.digest, top.digest].sort(),
			);
			expect(cs.get(lazy.manifest.digest)).toEqual({
				"containerd.io/gc.ref.content.config": lazy.config.digest,
				"containerd.io/gc.ref.content.l.0": lazy.layers[0]?.digest,
				"containerd.io/gc.ref.content.l.1": lazy.layers[1]?.digest,
				"containerd.io/gc.ref.content.l.2": top.digest,
				"containerd.io/distribution.source.127.0.0.1": "pull/lazy",
			});
			expect(cs.get(lazy.config.digest)).toEqual({
				"containerd.io/gc.ref.snapshot.dadi": chains[2],
				"containerd.io/distribution.source.127.0.0.1": "pull/lazy",
			});
			expect(cs.get(top.digest)).toEqual({
				"containerd.io/uncompressed": top.diffId,
				"containerd.io/distribution.source.127.0.0.1": "pull/lazy",
			});

			// The plug-in claimed exactly the two annotated layers; containerd recorded them.
			expect(hook.calls.filter((x) => x.startsWith("claim"))).toEqual([
				`claim ${chains[0]}`,
				`claim ${chains[1]}`,
				`claim ${chains[2]}`,
			]);
			const recs = await snapshotterRecords();
			expect(
				// containerd commits an applied layer under "NAMESPACE/ID/NAME"; a claimed one keeps the
				// chain ID the snapshotter recorded it under.
				recs
					.map((s) => [
						s.key.replace(/^default\/\d+\//, ""),
						s.kind,
						s.remote !== undefined,
					])
					.sort(),
			).toEqual(
				[
					[chains[0], "committed", true],
					[chains[1], "committed", true],
					[chains[2], "committed", false],
				].sort(),
			);
			const claimed = recs.find((s) => s.key === chains[0]);
			expect(claimed?.labels).toEqual({
				"containerd.io/snapshot.ref": chains[0],
				[DIR_LABEL]: join(dir, "plugin-layer-a"),
				"containerd.io/snapshot/dadi-test.note": "claimed",
				"containerd.io/snapshot/cri.image-ref": lazyRef,
				"containerd.io/snapshot/cri.manifest-digest": lazy.manifest.digest,
				"containerd.io/snapshot/cri.layer-digest": lazy.layers[0]?.digest,
				"containerd.io/snapshot/cri.image-layers": lazy.layers
					.map((l) => l.digest)
					.join(","),
			});
			const ls = await c.ctr(["snapshots", "--snapshotter", "dadi", "ls"]);
			for (const ch of chains) expect(ls).toContain(ch);
			expect(await c.ctr(["images", "ls", "-q"])).toContain(lazyRef);
			expect(await c.ctr(["leases", "ls", "-q"])).toBe("");

			// ctr run finds the image unpacked (nothing more is fetched) and runs it.
			const before = proxy.requests.length;
			const out = await c.ctr([
				"run",
				"--rm",
				"--snapshotter",
				"dadi",
				lazyRef,
				"lazy1",
				"/bin/sh",
				"-c",
				"cat /etc/hello /etc/layer2 /etc/layer3",
			]);
			expect(out).toBe(
				"from the plug-in's directory A\nlayer 2 from the plug-in\nlayer 3 applied by containerd\n",
			);
			expect(proxy.requests.length).toBe(before);

			// Pulling again (text output): every layer is there already; no blob is asked for.
			const again = await pull(["--quiet", lazyRef]);
			expect(again.code, again.stderr).toBe(0);
			expect(again.stderr).toBe("");
			expect(again.stdout.split("\n")).toEqual([
				expect.stringMatching(
					new RegExp(
						`^pulled ${lazyRef} \\(${lazy.manifest.digest}\\) into containerd \\S+ \\(namespace default, snapshotter dadi\\): 3 layers, 0 claimed by the snapshotter, 0 downloaded and applied, 3 already unpacked; .* downloaded in [\\d.]+ s$`,
					),
				),
				expect.stringMatching(
					/^ {2}layer 1\/3 sha256:\w+ \(.*\): already unpacked$/,
				),
				expect.stringMatching(/^ {2}layer 2\/3 /),
				expect.stringMatching(/^ {2}layer 3\/3 /),
				`run it: ctr run --snapshotter dadi ${lazyRef} ID`,
				"",
			]);
			expect(requestsFor(claimedDigests)).toEqual([]);
			expect(requestsFor([top.digest])).toHaveLength(1);

			// Removing the image: containerd's garbage collector removes the snapshots (the plug-in is
			// told about its layers) and every blob.
			await waitFor("the container's snapshot to go", async () =>
				(await snapshotterRecords()).every((s) => s.kind === "committed"),
			);
			await c.ctr(["images", "rm", "--sync", lazyRef]);
			await waitFor(
				"every snapshot to go",
				async () => (await snapshotterRecords()).length === 0,
			);
			expect(hook.calls).toContain(`removed ${chains[0]}`);
			expect(hook.calls).toContain(`removed ${chains[1]}`);
			expect(await c.ctr(["content", "ls", "-q"])).toBe("");
			expect(await c.ctr(["images", "ls", "-q"])).toBe("");
		}));

	it("(b) an ordinary image (an index for two platforms) is downloaded and applied through the same command, runs, and matches what ctr images pull makes of it", () =>
		withLogs(async () => {
			const c = ctd as Containerd;
			const img = plain.amd64;
			const chains = chainIds(img.layers.map((l) => l.diffId));
			const r = await pull(["--json", plainRef]);
			expect(r.code, r.stderr).toBe(0);
			const doc = JSON.parse(r.stdout);
			expect(doc).toMatchObject({
				name: plainRef,
				target: {
					digest: plain.index,
					mediaType: "application/vnd.oci.image.index.v1+json",
				},
				manifest: { digest: img.manifest.digest },
				chainId: chains[1],
			});
			expect(doc.layers.map((l: { outcome: string }) => l.outcome)).toEqual([
				"applied",
				"applied",
			]);
			// Only this machine's image was fetched.
			expect(
				requestsFor([plain.arm64.manifest.digest, plain.arm64.config.digest]),
			).toEqual([]);
			const cs = await content();
			expect([...cs.keys()].sort()).toEqual(
				[
					plain.index,
					img.manifest.digest,
					img.config.digest,
					...img.layers.map((l) => l.digest),
				].sort(),
			);
			expect(cs.get(plain.index)).toEqual({
				"containerd.io/gc.ref.content.m.0": img.manifest.digest,
				"containerd.io/gc.ref.content.m.1": plain.arm64.manifest.digest,
				"containerd.io/distribution.source.127.0.0.1": "pull/plain",
			});
			const out = await c.ctr([
				"run",
				"--rm",
				"--snapshotter",
				"dadi",
				plainRef,
				"plain1",
				"/bin/sh",
				"-c",
				"cat /etc/hello /etc/layer2",
			]);
			expect(out).toBe("hello from layer 1\nlayer 2 was here\n");

			// containerd's own pull of the same image (another namespace, its overlayfs snapshotter):
			// the same chain IDs, and the same labels on every blob but the snapshotter's own.
			await c.ctr([
				"-n",
				"ctrpull",
				"images",
				"pull",
				"--plain-http",
				"--snapshotter",
				"overlayfs",
				plainRef,
			]);
			const theirs = await c.ctr([
				"-n",
				"ctrpull",
				"snapshots",
				"--snapshotter",
				"overlayfs",
				"ls",
			]);
			for (const ch of chains) expect(theirs).toContain(ch);
			const theirLabels = await content("ctrpull");
			const ours = await content();
			expect([...theirLabels.keys()].sort()).toEqual([...ours.keys()].sort());
			const withoutSnapshotGc = (l: Record<string, string> = {}) =>
				Object.fromEntries(
					Object.entries(l).filter(
						([k]) => !k.startsWith("containerd.io/gc.ref.snapshot."),
					),
				);
			for (const [digest, labels] of ours)
				expect(withoutSnapshotGc(labels), digest).toEqual(
					withoutSnapshotGc(theirLabels.get(digest)),
				);
			expect(
				ours.get(img.config.digest)?.["containerd.io/gc.ref.snapshot.dadi"],
			).toBe(chains[1]);
			expect(
				theirLabels.get(img.config.digest)?.[
					"containerd.io/gc.ref.snapshot.overlayfs"
				],
			).toBe(chains[1]);

			await c.ctr(["-n", "ctrpull", "images", "rm", "--sync", plainRef]);
			await c.ctr(["images", "rm", "--sync", plainRef]);
			await waitFor(
				"every snapshot to go",
				async () => (await snapshotterRecords()).length === 0,
			);
			expect(await c.ctr(["content", "ls", "-q"])).toBe("");
		}));

	it("an image with docker's media types (as Docker Hub serves them) pulls and runs the same way", () =>
		withLogs(async () => {
			const c = ctd as Containerd;
			const r = await pull(["--json", "--quiet", dockerRef]);
			expect(r.code, r.stderr).toBe(0);
			const doc = JSON.parse(r.stdout);
			expect(doc.target.mediaType).toBe(
				"application/vnd.docker.distribution.manifest.v2+json",
			);
			expect(doc.config.mediaType).toBe(
				"application/vnd.docker.container.image.v1+json",
			);
			expect(
				doc.layers.map((l: { mediaType: string; outcome: string }) => [
					l.mediaType,
					l.outcome,
				]),
			).toEqual([
				["application/vnd.docker.image.rootfs.diff.tar.gzip", "applied"],
				["application/vnd.docker.image.rootfs.diff.tar.gzip", "applied"],
			]);
			expect(
				await c.ctr([
					"run",
					"--rm",
					"--snapshotter",
					"dadi",
					dockerRef,
					"docker1",
					"/bin/cat",
					"/etc/hello",
				]),
			).toBe("hello from layer 1\n");
			await waitFor("the container's snapshot to go", async () =>
				(await snapshotterRecords()).every((s) => s.kind === "committed"),
			);
			await c.ctr(["images", "rm", "--sync", dockerRef]);
			await waitFor(
				"every snapshot to go",
				async () => (await snapshotterRecords()).length === 0,
			);
			expect(await c.ctr(["content", "ls", "-q"])).toBe("");
		}));

	it("a layer the registry tampers with: DIGEST_MISMATCH (exit 5), no ingest, snapshot or lease left; a clean pull afterwards works", () =>
		withLogs(async () => {
			const c = ctd as Containerd;
			const bottom = plain.amd64.layers[0] as BuiltImage["layers"][number];
			proxy.setRule(
				faultOnce((q) => q.method === "GET" && q.url.includes(bottom.digest), {
					kind: "flip-byte",
				}),
			);
			try {
				const r = await pull(["--json", "--quiet", plainRef]);
				expect(r.code, r.stderr).toBe(5);
				expect(JSON.parse(r.stdout).error.code).toBe("DIGEST_MISMATCH");
				expect(r.stderr).toContain(`layer 1/2 (${bottom.digest}):`);
			} finally {
				proxy.setRule(undefined);
			}
			expect(await c.ctr(["content", "active"])).not.toContain("layer-");
			expect(
				(await c.ctr(["snapshots", "--snapshotter", "dadi", "ls"]))
					.trim()
					.split("\n"),
			).toHaveLength(1);
			expect(await c.ctr(["leases", "ls", "-q"])).toBe("");
			// The manifest and config stored before the failure are no image's: an image record is
			// only written at the end.
			expect(await c.ctr(["images", "ls", "-q"])).toBe("");
			const again = await pull(["--json", "--quiet", plainRef]);
			expect(again.code, again.stderr).toBe(0);
			await c.ctr(["images", "rm", "--sync", plainRef]);
			await waitFor(
				"every snapshot to go",
				async () => (await snapshotterRecords()).length === 0,
			);
		}));

	it("two pulls of one image at once both succeed; each layer is unpacked once and the image runs", () =>
		withLogs(async () => {
			const c = ctd as Containerd;
			const [one, two] = await Promise.all([
				pull(["--json", "--quiet", plainRef]),
				pull(["--json", "--quiet", plainRef]),
			]);
			expect(one?.code, one?.stderr).toBe(0);
			expect(two?.code, two?.stderr).toBe(0);
			const outcomes = [one, two].map((r) =>
				JSON.parse(r?.stdout as string).layers.map(
					(l: { outcome: string }) => l.outcome,
				),
			);
			// Each layer was applied by at least one of the two; the other found it there (or lost
			// the race to commit it, and removed its own copy).
			for (const i of [0, 1])
				expect(outcomes.map((o) => o[i])).toContain("applied");
			// A losing pull's extraction snapshot is removed from containerd's records at once and
			// from the snapshotter by containerd's garbage collector soon after.
			await waitFor("extraction snapshots to go", async () =>
				(await snapshotterRecords()).every((s) => s.kind === "committed"),
			);
			expect((await snapshotterRecords()).map((s) => s.kind)).toEqual([
				"committed",
				"committed",
			]);
			expect(
				(await c.ctr(["snapshots", "--snapshotter", "dadi", "ls"]))
					.trim()
					.split("\n"),
			).toHaveLength(3);
			expect(await c.ctr(["leases", "ls", "-q"])).toBe("");
			expect(
				await c.ctr([
					"run",
					"--rm",
					"--snapshotter",
					"dadi",
					plainRef,
					"plain2",
					"/bin/cat",
					"/etc/layer2",
				]),
			).toBe("layer 2 was here\n");
			await waitFor("the container's snapshot to go", async () =>
				(await snapshotterRecords()).every((s) => s.kind === "committed"),
			);
			await c.ctr(["images", "rm", "--sync", plainRef]);
			await waitFor(
				"every snapshot to go",
				async () => (await snapshotterRecords()).length === 0,
			);
		}));

	it("interrupted (SIGINT) while a layer downloads: exit 130, the lease released, no image record; the garbage collector removes what was stored", () =>
		withLogs(async () => {
			const c = ctd as Containerd;
			const bottom = plain.amd64.layers[0] as BuiltImage["layers"][number];
			let release: () => void = () => {};
			const held = new Promise<void>((r) => {
				release = r;
			});
			proxy.setRule(
				faultOnce((q) => q.method === "GET" && q.url.includes(bottom.digest), {
					kind: "hold",
					until: held,
				}),
			);
			const child = spawn(
				process.execPath,
				[
					BIN.snapshotter,
					"pull",
					"--insecure",
					"--quiet",
					"--address",
					c.socket,
					plainRef,
				],
				{ stdio: ["ignore", "pipe", "pipe"] },
			);
			let stderr = "";
			child.stderr.on("data", (d) => {
				stderr += d;
			});
			const exited = new Promise<number | null>((r) =>
				child.once("exit", (code) => r(code)),
			);
			try {
				await waitFor("the layer request", async () =>
					proxy.requests.some((q) => q.fault === "hold"),
				);
				expect(await c.ctr(["leases", "ls", "-q"])).toMatch(/^dadi-pull-/);
				child.kill("SIGINT");
				expect(await exited).toBe(130);
			} finally {
				child.kill("SIGKILL");
				release();
				proxy.setRule(undefined);
			}
			expect(stderr).toMatch(
				/interrupted \(SIGINT\); lease dadi-pull-\S+ released; no image record was written/,
			);
			expect(await c.ctr(["leases", "ls", "-q"])).toBe("");
			expect(await c.ctr(["images", "ls", "-q"])).toBe("");
			// A synchronous collection (through a lease of our own) removes the stored manifest and
			// config and the extraction snapshot the pull had prepared.
			const id = (await c.ctr(["leases", "create"]))
				.trim()
				.split(/\s+/)[0] as string;
			await c.ctr(["leases", "rm", "--sync", id]);
			await waitFor(
				"the extraction snapshot to go",
				async () => (await snapshotterRecords()).length === 0,
			);
			expect(await c.ctr(["content", "ls", "-q"])).toBe("");
		}));

	it("a registry that wants credentials: refused without them (exit 8, saying to pass --creds), pulled with --creds", () =>
		withLogs(async () => {
			const c = ctd as Containerd;
			const locked = await startRegistry({ auth: "htpasswd" });
			try {
				const creds = `${locked.username}:${locked.password}`;
				await run("skopeo", [
					"copy",
					"--dest-tls-verify=false",
					"--dest-creds",
					creds,
					`oci:${join(dir, "plain-oci")}:amd64`,
					`docker://${locked.host}/pull/private:v1`,
				]);
				const ref = `${locked.host}/pull/private:v1`;
				// No credentials anywhere (an auth file without entries, whatever the host has).
				await writeFile(join(dir, "no-auths.json"), '{"auths":{}}');
				const env = {
					...process.env,
					REGISTRY_AUTH_FILE: join(dir, "no-auths.json"),
				};
				const denied = await runCli(
					BIN.snapshotter,
					["pull", "--insecure", "--address", c.socket, ref],
					undefined,
					env,
				);
				expect(denied.code, denied.stderr).toBe(8);
				expect(denied.stderr).toMatch(/--creds.*\[REMOTE_DENIED\]/);
				expect(await c.ctr(["leases", "ls", "-q"])).toBe("");
				const ok = await pull(["--quiet", "--creds", creds, ref]);
				expect(ok.code, ok.stderr).toBe(0);
				expect(ok.stdout).toContain("2 downloaded and applied");
				await c.ctr(["images", "rm", "--sync", ref]);
				await waitFor(
					"every snapshot to go",
					async () => (await snapshotterRecords()).length === 0,
				);
			} finally {
				await locked.stop();
			}
		}));

	it("(c) clear errors: containerd not running, unknown snapshotter, snapshotter down, unknown tag, missing platform", () =>
		withLogs(async () => {
			const c = ctd as Containerd;
			const noCtd = await runCli(BIN.snapshotter, [
				"pull",
				"--insecure",
				"--address",
				join(dir, "no-containerd.sock"),
				plainRef,
			]);
			expect(noCtd.code).toBe(8);
			expect(noCtd.stderr).toMatch(
				/cannot reach containerd at .*no-containerd\.sock \(there is no socket\); is containerd running\? .*\[NETWORK\]/,
			);

			const unknown = await pull(["--json", "--snapshotter", "nope", plainRef]);
			expect(unknown.code).toBe(3);
			expect(JSON.parse(unknown.stdout).error.code).toBe("INPUT_NOT_FOUND");
			expect(unknown.stderr).toMatch(
				/has no snapshotter "nope" \(it has: .*dadi.*overlayfs.*\); configure dadi-snapshotter as \[proxy_plugins\.nope\]/,
			);

			const down = await pull(["--snapshotter", "down", plainRef]);
			expect(down.code).toBe(8);
			expect(down.stderr).toMatch(
				/layer 1\/2 .*containerd could not reach the snapshotter "down": is its process \(dadi-snapshotter serve\) running .*\[NETWORK\]/,
			);

			const tag = await pull([`${proxy.host}/pull/plain:nope`]);
			expect(tag.code).toBe(3);
			expect(tag.stderr).toMatch(
				/pull\/plain:nope: not found in the registry.*\[INPUT_NOT_FOUND\]/,
			);

			const platform = await pull(["--platform", "linux/s390x", plainRef]);
			expect(platform.code).toBe(3);
			expect(platform.stderr).toContain(
				"no image for platform linux/s390x (the index has: linux/amd64, linux/arm64)",
			);

			// Failed pulls leave no lease, no image and nothing the garbage collector keeps.
			expect(await c.ctr(["leases", "ls", "-q"])).toBe("");
			expect(await c.ctr(["images", "ls", "-q"])).toBe("");
		}));
});
