/**
 * The remote-layer plug-in point, driven the way containerd's unpacker and metadata layer drive a
 * remote snapshotter (Prepare with the snapshot ref → AlreadyExists → List with containerd's
 * filter → Stat), with the trivial directory plug-in: the claimed layer is recorded committed under
 * its chain ID with the plug-in's metadata, a container snapshot on it mounts the plug-in's
 * directory as its lower layer (really mounted here), removal tells the plug-in; failing hooks
 * fail the request with their code and record nothing.
 */
import { execFile } from "node:child_process";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
	type SnapshotsServer,
	serveSnapshots,
} from "../src/snapshotter/grpc-server.js";
import { detectOverlayOptions } from "../src/snapshotter/overlay-support.js";
import { Snapshotter } from "../src/snapshotter/snapshotter.js";
import { cleanupTempDirs, tempDir } from "./helpers.js";
import {
	type Msg,
	type SnapshotsClient,
	snapshotsClient,
} from "./snapshotter/client.js";
import { DIR_LABEL, DirectoryLayers } from "./snapshotter/directory-layers.js";
import { unmountUnder } from "./snapshotter/unmount.js";

const sh = promisify(execFile);
const REF = "containerd.io/snapshot.ref";
let dir: string;
let root: string;
let socket: string;
let layerDir: string;
let hook: DirectoryLayers;
let sn: Snapshotter;
let server: SnapshotsServer;
let client: SnapshotsClient;

async function start(): Promise<void> {
	sn = await Snapshotter.open({
		root,
		log: () => {},
		overlay: detectOverlayOptions(),
		remote: hook,
	});
	server = await serveSnapshots(sn, socket, () => {});
	client = snapshotsClient(socket);
}
async function stop(): Promise<void> {
	client.close();
	await server.close();
	await sn.close();
}

beforeAll(async () => {
	dir = await tempDir();
	root = join(dir, "root");
	socket = join(dir, "sn.sock");
	layerDir = join(dir, "remote-layer");
	await mkdir(join(layerDir, "etc"), { recursive: true });
	await writeFile(join(layerDir, "etc/hello"), "from the remote layer\n");
	hook = new DirectoryLayers();
	await start();
});
afterAll(async () => {
	await stop();
	await unmountUnder(dir);
	await cleanupTempDirs();
});

const dirs = async () => (await readdir(join(root, "snapshots"))).sort();

describe("remote layers", () => {
	it("a claimed layer: AlreadyExists, found by containerd's filter, mounted from the plug-in's directory, removed with word to the plug-in", async () => {
		const labels = {
			[REF]: "sha256:chain1",
			[DIR_LABEL]: layerDir,
			"containerd.io/snapshot/other": "x",
		};
		const p = await client.call("Prepare", {
			key: "default/1/extract-1 sha256:chain1",
			parent: "",
			labels,
		});
		expect(p.code).toBe(status.ALREADY_EXISTS);
		expect(hook.calls).toEqual(["claim sha256:chain1"]);
		// what containerd's metadata layer does next
		const found = await client.list([
			`labels."${REF}"==sha256:chain1,parent==""`,
		]);
		expect(found.code).toBe(0);
		expect(
			(found as Msg).value.map((i: Msg) => [i.name, i.kind, i.labels]),
		).toEqual([["sha256:chain1", "COMMITTED", labels]]);
		expect(
			(await client.call("Stat", { key: "default/1/extract-1 sha256:chain1" }))
				.code,
		).toBe(status.NOT_FOUND);
		expect(
			((await client.call("Usage", { key: "sha256:chain1" })) as Msg).value,
		).toEqual({ size: "4096", inodes: "7" });
		const meta = JSON.parse(
			await readFile(join(root, "metadata.json"), "utf8"),
		);
		expect(meta.snapshots[0]).toMatchObject({
			key: "sha256:chain1",
			remote: { dir: layerDir, ref: "sha256:chain1" },
		});
		// A second unpack of the same layer (another namespace): AlreadyExists without asking the plug-in.
		expect(
			(
				await client.call("Prepare", {
					key: "ns2/1/extract",
					parent: "",
					labels,
				})
			).code,
		).toBe(status.ALREADY_EXISTS);
		expect(hook.calls).toEqual(["claim sha256:chain1"]);

		// An ordinary layer above it, then a container snapshot: the overlay's lowest layer is the plug-in's directory.
		const l2 = await client.call("Prepare", {
			key: "extract-2",
			parent: "sha256:chain1",
			labels: { [REF]: "sha256:chain2" },
		});
		expect(l2.code).toBe(0);
		expect(hook.calls.slice(1)).toEqual([
			"claim sha256:chain2",
			"mount extract-2 over sha256:chain1",
		]);
		const id2 = sn.records().get("extract-2")?.id as string;
		await writeFile(
			join(root, "snapshots", id2, "fs", "layer2"),
			"from layer 2\n",
		);
		expect(
			(await client.call("Commit", { name: "sha256:chain2", key: "extract-2" }))
				.code,
		).toBe(0);
		const c = await client.call("Prepare", {
			key: "ctr",
			parent: "sha256:chain2",
		});
		expect(c.code).toBe(0);
		const m = (c as Msg).value.mounts[0];
		const chain2 = join(root, "snapshots", id2, "fs");
		expect(m.options.at(-1)).toBe(`lowerdir=${chain2}:${layerDir}`);
		const target = join(dir, "rootfs");
		await mkdir(target);
		await sh("mount", [
			"-t",
			"overlay",
			"-o",
			m.options.join(","),
			"overlay",
			target,
		]);
		try {
			expect(await readFile(join(target, "etc/hello"), "utf8")).toBe(
				"from the remote layer\n",
			);
			expect(await readFile(join(target, "layer2"), "utf8")).toBe(
				"from layer 2\n",
			);
			await writeFile(join(target, "etc/hello"), "changed\n");
		} finally {
			await sh("umount", [target]);
		}
		expect(await readFile(join(layerDir, "etc/hello"), "utf8")).toBe(
			"from the remote layer\n",
		); // lower untouched
		// Mounts asks again; a view of the claimed layer alone is a read-only bind of its directory.
		expect(
			((await client.call("Mounts", { key: "ctr" })) as Msg).value.mounts,
		).toEqual((c as Msg).value.mounts);
		const v = await client.call("View", { key: "v", parent: "sha256:chain1" });
		expect((v as Msg).value.mounts).toEqual([
			{ type: "bind", source: layerDir, target: "", options: ["ro", "rbind"] },
		]);

		// Restart: the plug-in hears the claimed layers it has.
		await stop();
		await start();
		expect(hook.started).toEqual(["sha256:chain1"]);

		for (const k of ["v", "ctr", "sha256:chain2"])
			expect((await client.call("Remove", { key: k })).code).toBe(0);
		expect(hook.calls.filter((x) => x.startsWith("removed"))).toEqual([]);
		expect((await client.call("Remove", { key: "sha256:chain1" })).code).toBe(
			0,
		);
		expect(hook.calls.at(-1)).toBe("removed sha256:chain1");
		expect(await dirs()).toEqual([]);
	});

	it("failing hooks fail the request with their code and record nothing", async () => {
		hook.calls = [];
		hook.fail = { claim: true };
		const labels = { [REF]: "sha256:f1", [DIR_LABEL]: layerDir };
		const p = await client.call("Prepare", { key: "x1", parent: "", labels });
		expect(p.code).toBe(status.UNAVAILABLE);
		expect((await client.list()) as Msg).toMatchObject({ code: 0, value: [] });
		expect(await dirs()).toEqual([]);

		hook.fail = {};
		expect(
			(await client.call("Prepare", { key: "x1", parent: "", labels })).code,
		).toBe(status.ALREADY_EXISTS);
		hook.fail = { mount: true };
		const c = await client.call("Prepare", {
			key: "ctr2",
			parent: "sha256:f1",
		});
		expect(c.code).toBe(status.UNAVAILABLE);
		expect((await client.call("Stat", { key: "ctr2" })).code).toBe(
			status.NOT_FOUND,
		);
		expect(await dirs()).toHaveLength(1); // only the claimed layer's
		expect(
			(await client.call("View", { key: "v2", parent: "sha256:f1" })).code,
		).toBe(status.UNAVAILABLE);

		hook.fail = {};
		hook.replaceMounts = true;
		const r = await client.call("Prepare", {
			key: "ctr2",
			parent: "sha256:f1",
		});
		expect((r as Msg).value.mounts).toEqual([
			{
				type: "bind",
				source: "/replaced",
				target: "",
				options: ["ro", "rbind"],
			},
		]);
		hook.replaceMounts = false;
		hook.fail = { removed: true };
		expect((await client.call("Remove", { key: "ctr2" })).code).toBe(0);
		expect((await client.call("Remove", { key: "sha256:f1" })).code).toBe(0); // removal stands; the plug-in's failure is logged
		hook.fail = {};
		expect(await dirs()).toEqual([]);
		// A claimed parent with no plug-in loaded: FailedPrecondition, not a wrong mount.
		expect(
			(
				await client.call("Prepare", {
					key: "x2",
					parent: "",
					labels: { [REF]: "sha256:f2", [DIR_LABEL]: layerDir },
				})
			).code,
		).toBe(status.ALREADY_EXISTS);
		await stop();
		sn = await Snapshotter.open({
			root,
			log: () => {},
			overlay: detectOverlayOptions(),
		});
		server = await serveSnapshots(sn, socket, () => {});
		client = snapshotsClient(socket);
		expect(
			(await client.call("Prepare", { key: "c3", parent: "sha256:f2" })).code,
		).toBe(status.FAILED_PRECONDITION);
		expect((await client.call("Remove", { key: "sha256:f2" })).code).toBe(0);
		await stop();
		await start();
	});
});
