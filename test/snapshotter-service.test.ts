/**
 * The snapshots gRPC service end to end, in process, through a client built from containerd's own
 * .proto files: every call with containerd's codes; the mounts really mounted (as root) and used;
 * usage; cleanup of orphans; random request sequences against a reference model (fast-check);
 * random and malformed protobuf bytes in raw HTTP/2 gRPC calls; the state surviving a restart.
 */
import { execFile } from "node:child_process";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import http2 from "node:http2";
import { connect } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { status } from "@grpc/grpc-js";
import fc from "fast-check";
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
import { unmountUnder } from "./snapshotter/unmount.js";

const sh = promisify(execFile);
let dir: string;
let root: string;
let socket: string;
let sn: Snapshotter;
let server: SnapshotsServer;
let client: SnapshotsClient;
const logs: string[] = [];

async function start(): Promise<void> {
	sn = await Snapshotter.open({
		root,
		log: (l) => logs.push(l),
		overlay: detectOverlayOptions(),
	});
	server = await serveSnapshots(sn, socket, (l) => logs.push(l));
	client = snapshotsClient(socket);
}
async function stop(): Promise<void> {
	client?.close();
	await server?.close();
	await sn?.close();
}

beforeAll(async () => {
	dir = await tempDir();
	root = join(dir, "root");
	socket = join(dir, "sn.sock");
	await start();
});
afterAll(async () => {
	await stop();
	await unmountUnder(dir);
	await cleanupTempDirs();
});

const ok = <T>(r: { code: number; value?: T; message?: string }): T => {
	expect(r.code, r.message).toBe(0);
	return r.value as T;
};
const upper = (id: string) => join(root, "snapshots", id, "fs");
const idOf = (key: string) => sn.records().get(key)?.id as string;

async function mountAt(
	mounts: { type: string; source: string; options: string[] }[],
	target: string,
): Promise<void> {
	await mkdir(target, { recursive: true });
	const m = mounts[0] as { type: string; source: string; options: string[] };
	const opts =
		m.type === "bind"
			? m.options.filter((o) => o !== "rbind").concat("bind")
			: m.options;
	await sh("mount", [
		"-t",
		m.type === "bind" ? "none" : m.type,
		"-o",
		opts.join(","),
		m.source,
		target,
	]);
}

describe("snapshots service", () => {
	it("a layer lifecycle as containerd drives it: prepare, apply, commit, prepare on it, mount, write, view, usage, remove", async () => {
		const base = ok<Msg>(
			await client.call("Prepare", {
				key: "extract-1",
				parent: "",
				labels: { "containerd.io/snapshot.ref": "sha256:l1" },
			}),
		);
		expect(base.mounts).toEqual([
			{
				type: "bind",
				source: upper(idOf("extract-1")),
				target: "",
				options: ["rw", "rbind"],
			},
		]);
		await writeFile(
			join(upper(idOf("extract-1")), "hello"),
			"hello from layer 1\n",
		);
		const stat = ok<Msg>(await client.call("Stat", { key: "extract-1" }));
		expect(stat.info).toMatchObject({
			name: "extract-1",
			parent: "",
			kind: "ACTIVE",
			labels: { "containerd.io/snapshot.ref": "sha256:l1" },
		});
		expect(Number(stat.info.createdAt.seconds)).toBeGreaterThan(1.7e9);
		const active = ok<Msg>(await client.call("Usage", { key: "extract-1" }));
		expect(Number(active.inodes)).toBe(2);
		expect(Number(active.size)).toBeGreaterThan(0);
		ok(
			await client.call("Commit", {
				name: "layer-1",
				key: "extract-1",
				labels: { a: "1" },
			}),
		);
		expect((await client.call("Stat", { key: "extract-1" })).code).toBe(
			status.NOT_FOUND,
		);
		const committed = ok<Msg>(await client.call("Stat", { key: "layer-1" }));
		expect(committed.info).toMatchObject({
			kind: "COMMITTED",
			labels: { a: "1" },
		});
		expect(ok<Msg>(await client.call("Usage", { key: "layer-1" }))).toEqual(
			active,
		);
		expect((await client.call("Mounts", { key: "layer-1" })).code).toBe(
			status.FAILED_PRECONDITION,
		);

		const ctr = ok<Msg>(
			await client.call("Prepare", { key: "ctr", parent: "layer-1" }),
		);
		const id = idOf("ctr");
		const opts = ctr.mounts[0].options as string[];
		expect(ctr.mounts[0]).toMatchObject({ type: "overlay", source: "overlay" });
		expect(opts.slice(-3)).toEqual([
			`workdir=${join(root, "snapshots", id, "work")}`,
			`upperdir=${upper(id)}`,
			`lowerdir=${upper(idOf("layer-1"))}`,
		]);
		expect(ok<Msg>(await client.call("Mounts", { key: "ctr" })).mounts).toEqual(
			ctr.mounts,
		);
		const target = join(dir, "rootfs");
		await mountAt(ctr.mounts, target);
		try {
			expect(await readFile(join(target, "hello"), "utf8")).toBe(
				"hello from layer 1\n",
			);
			await writeFile(join(target, "written"), "by the container\n");
		} finally {
			await sh("umount", [target]);
		}
		expect(await readFile(join(upper(id), "written"), "utf8")).toBe(
			"by the container\n",
		);
		expect(
			Number(ok<Msg>(await client.call("Usage", { key: "ctr" })).inodes),
		).toBe(2);

		const view = ok<Msg>(
			await client.call("View", { key: "view-1", parent: "layer-1" }),
		);
		expect(view.mounts).toEqual([
			{
				type: "bind",
				source: upper(idOf("layer-1")),
				target: "",
				options: ["ro", "rbind"],
			},
		]);
		expect(
			(await client.call("Commit", { name: "x", key: "view-1" })).code,
		).toBe(status.FAILED_PRECONDITION);
		expect((await client.call("Remove", { key: "layer-1" })).code).toBe(
			status.FAILED_PRECONDITION,
		);
		ok(await client.call("Remove", { key: "view-1" }));
		ok(await client.call("Remove", { key: "ctr" }));
		ok(await client.call("Remove", { key: "layer-1" }));
		expect(await readdir(join(root, "snapshots"))).toEqual([]);
	});

	it("containerd's error codes: NotFound, AlreadyExists, InvalidArgument, FailedPrecondition", async () => {
		ok(await client.call("Prepare", { key: "e-a", parent: "" }));
		ok(await client.call("Commit", { name: "e-c", key: "e-a" }));
		ok(await client.call("Prepare", { key: "e-b", parent: "e-c" }));
		const codes = async (m: string, req: Record<string, unknown>) =>
			(await client.call(m, req)).code;
		expect(await codes("Stat", { key: "nope" })).toBe(status.NOT_FOUND);
		expect(await codes("Mounts", { key: "nope" })).toBe(status.NOT_FOUND);
		expect(await codes("Usage", { key: "nope" })).toBe(status.NOT_FOUND);
		expect(await codes("Remove", { key: "nope" })).toBe(status.NOT_FOUND);
		expect(await codes("Update", { info: { name: "nope" } })).toBe(
			status.NOT_FOUND,
		);
		expect(await codes("Prepare", { key: "e-x", parent: "nope" })).toBe(
			status.NOT_FOUND,
		);
		expect(await codes("Prepare", { key: "e-x", parent: "e-b" })).toBe(
			status.INVALID_ARGUMENT,
		);
		expect(await codes("Prepare", { key: "e-b", parent: "e-c" })).toBe(
			status.ALREADY_EXISTS,
		);
		expect(await codes("View", { key: "e-c", parent: "" })).toBe(
			status.ALREADY_EXISTS,
		);
		expect(await codes("Prepare", { key: "", parent: "" })).toBe(
			status.INVALID_ARGUMENT,
		);
		expect(
			await codes("Prepare", {
				key: "e-y",
				parent: "",
				labels: { big: "x".repeat(4094) },
			}),
		).toBe(status.INVALID_ARGUMENT);
		expect(await codes("Commit", { name: "e-c", key: "e-b" })).toBe(
			status.ALREADY_EXISTS,
		);
		expect(await codes("Commit", { name: "e-d", key: "e-a" })).toBe(
			status.NOT_FOUND,
		); // committed already
		expect(await codes("Remove", { key: "e-c" })).toBe(
			status.FAILED_PRECONDITION,
		);
		expect(
			await codes("Update", {
				info: { name: "e-c" },
				updateMask: { paths: ["kind"] },
			}),
		).toBe(status.INVALID_ARGUMENT);
		expect(await codes("Update", {})).toBe(status.INVALID_ARGUMENT);
		expect((await client.list(["name=="])).code).toBe(status.INVALID_ARGUMENT);
		ok(await client.call("Remove", { key: "e-b" }));
		ok(await client.call("Remove", { key: "e-c" }));
	});

	it("Update and List as containerd's metadata layer uses them", async () => {
		ok(await client.call("Prepare", { key: "u-a", parent: "" }));
		ok(
			await client.call("Commit", {
				name: "sha256:u",
				key: "u-a",
				labels: { "containerd.io/snapshot.ref": "sha256:u", keep: "1" },
			}),
		);
		const u = ok<Msg>(
			await client.call("Update", {
				info: { name: "sha256:u", labels: { x: "1", keep: "" } },
				updateMask: { paths: ["labels.x", "labels.keep"] },
			}),
		);
		expect(u.info.labels).toEqual({
			"containerd.io/snapshot.ref": "sha256:u",
			x: "1",
		});
		const all = ok(
			await client.call("Update", {
				info: {
					name: "sha256:u",
					labels: { "containerd.io/snapshot.ref": "sha256:u" },
				},
			}),
		);
		expect((all as Msg).info.labels).toEqual({
			"containerd.io/snapshot.ref": "sha256:u",
		});
		const found = ok(
			await client.list([
				'labels."containerd.io/snapshot.ref"==sha256:u,parent==""',
			]),
		);
		expect(found.map((i) => i.name)).toEqual(["sha256:u"]);
		expect(ok(await client.list(["kind==active"]))).toEqual([]);
		for (let i = 0; i < 120; i++)
			ok(
				await client.call("View", {
					key: `l-${String(i).padStart(3, "0")}`,
					parent: "sha256:u",
				}),
			);
		const views = ok(await client.list(["kind==view"]));
		expect(views).toHaveLength(120); // streamed in messages of 100
		for (let i = 0; i < 120; i++)
			ok(
				await client.call("Remove", { key: `l-${String(i).padStart(3, "0")}` }),
			);
		ok(await client.call("Remove", { key: "sha256:u" }));
	});

	it("Remove and Cleanup never reach into a file system mounted inside a snapshot directory", async () => {
		const precious = join(dir, "precious");
		await mkdir(precious, { recursive: true });
		await writeFile(join(precious, "keep"), "keep me\n");
		ok(await client.call("Prepare", { key: "m-a", parent: "" }));
		const inside = join(upper(idOf("m-a")), "mnt");
		await mkdir(inside);
		await sh("mount", ["--bind", precious, inside]);
		ok(await client.call("Remove", { key: "m-a" }));
		expect(await readFile(join(precious, "keep"), "utf8")).toBe("keep me\n");
		expect(await readFile("/proc/self/mountinfo", "utf8")).not.toContain(
			inside,
		);
		await mkdir(join(root, "snapshots", "777", "fs"), { recursive: true });
		await sh("mount", [
			"--bind",
			precious,
			join(root, "snapshots", "777", "fs"),
		]);
		ok(await client.call("Cleanup", {}));
		expect(await readFile(join(precious, "keep"), "utf8")).toBe("keep me\n");
		expect(await readdir(join(root, "snapshots"))).toEqual([]);
	});

	it("concurrent requests: one Prepare of a key wins, distinct keys all succeed with their own directories", async () => {
		const same = await Promise.all(
			Array.from({ length: 16 }, () =>
				client.call("Prepare", { key: "race", parent: "" }),
			),
		);
		expect(same.filter((r) => r.code === 0)).toHaveLength(1);
		expect(same.filter((r) => r.code === status.ALREADY_EXISTS)).toHaveLength(
			15,
		);
		const many = await Promise.all(
			Array.from({ length: 16 }, (_, i) =>
				client.call("View", { key: `race-${i}`, parent: "" }),
			),
		);
		expect(many.every((r) => r.code === 0)).toBe(true);
		const sources = new Set(many.map((r) => r.value.mounts[0].source));
		expect(sources.size).toBe(16);
		const removed = await Promise.all(
			["race", ...Array.from({ length: 16 }, (_, i) => `race-${i}`)].map(
				(key) => client.call("Remove", { key }),
			),
		);
		expect(removed.every((r) => r.code === 0)).toBe(true);
		expect(await readdir(join(root, "snapshots"))).toEqual([]);
	});

	it("Cleanup removes directories no snapshot owns, and nothing else", async () => {
		ok(await client.call("Prepare", { key: "c-a", parent: "" }));
		await mkdir(join(root, "snapshots", "9999", "fs"), { recursive: true });
		await mkdir(join(root, "snapshots", "new-leftover"));
		ok(await client.call("Cleanup", {}));
		expect(await readdir(join(root, "snapshots"))).toEqual([idOf("c-a")]);
		ok(await client.call("Remove", { key: "c-a" }));
	});

	it("property: random request sequences answer as a reference model does, and leave nothing behind", async () => {
		type M = Map<string, { kind: string; parent: string }>;
		const keys = ["a", "b", "c", "d"];
		const op = fc.oneof(
			fc.record({
				m: fc.constant("Prepare"),
				key: fc.constantFrom(...keys),
				parent: fc.constantFrom("", ...keys),
			}),
			fc.record({
				m: fc.constant("View"),
				key: fc.constantFrom(...keys),
				parent: fc.constantFrom("", ...keys),
			}),
			fc.record({
				m: fc.constant("Commit"),
				key: fc.constantFrom(...keys),
				name: fc.constantFrom(...keys),
			}),
			fc.record({ m: fc.constant("Remove"), key: fc.constantFrom(...keys) }),
			fc.record({ m: fc.constant("Stat"), key: fc.constantFrom(...keys) }),
			fc.record({ m: fc.constant("Mounts"), key: fc.constantFrom(...keys) }),
		);
		const expected = (m: M, o: Record<string, string>): number => {
			const key = o.key as string;
			switch (o.m) {
				case "Prepare":
				case "View": {
					const p = o.parent as string;
					if (p && !m.has(p)) return status.NOT_FOUND;
					if (p && m.get(p)?.kind !== "committed")
						return status.INVALID_ARGUMENT;
					if (m.has(key)) return status.ALREADY_EXISTS;
					m.set(key, { kind: o.m === "View" ? "view" : "active", parent: p });
					return 0;
				}
				case "Commit": {
					const r = m.get(key);
					if (!r) return status.NOT_FOUND;
					if (m.has(o.name as string)) return status.ALREADY_EXISTS;
					if (r.kind !== "active") return status.FAILED_PRECONDITION;
					m.delete(key);
					m.set(o.name as string, { kind: "committed", parent: r.parent });
					return 0;
				}
				case "Remove":
					if (!m.has(key)) return status.NOT_FOUND;
					if ([...m.values()].some((r) => r.parent === key))
						return status.FAILED_PRECONDITION;
					m.delete(key);
					return 0;
				case "Mounts":
					if (!m.has(key)) return status.NOT_FOUND;
					return m.get(key)?.kind === "committed"
						? status.FAILED_PRECONDITION
						: 0;
				default:
					return m.has(key) ? 0 : status.NOT_FOUND;
			}
		};
		let run = 0;
		await fc.assert(
			fc.asyncProperty(
				fc.array(op, { minLength: 1, maxLength: 25 }),
				async (ops) => {
					const ns = `run${run++}/`;
					const m: M = new Map();
					const q = (k: string) => (k === "" ? "" : ns + k);
					for (const o of ops) {
						const want = expected(m, o as Record<string, string>);
						const req: Record<string, unknown> = { key: q(o.key) };
						if ("parent" in o) req.parent = q(o.parent);
						if ("name" in o) req.name = q(o.name);
						const got = await client.call(o.m, req);
						expect(got.code, `${o.m} ${JSON.stringify(req)}`).toBe(want);
					}
					const listed = ok(await client.list([`name~=^${ns}`]));
					expect(
						listed
							.map((i) => [
								i.name.slice(ns.length),
								i.kind.toLowerCase(),
								i.parent ? i.parent.slice(ns.length) : "",
							])
							.sort(),
					).toEqual(
						[...m.entries()].map(([k, r]) => [k, r.kind, r.parent]).sort(),
					);
					// tear down children first
					while (m.size > 0)
						for (const k of [...m.keys()])
							if (![...m.values()].some((r) => r.parent === k)) {
								ok(await client.call("Remove", { key: ns + k }));
								m.delete(k);
							}
				},
			),
			{ numRuns: 40 },
		);
		expect(await readdir(join(root, "snapshots"))).toEqual([]);
	});

	it("random and malformed protobuf bytes in raw HTTP/2 gRPC calls get a status, and the server goes on", async () => {
		const session = http2.connect("http://localhost", {
			createConnection: () => connect(socket),
		});
		const raw = (method: string, body: Buffer): Promise<string | undefined> =>
			new Promise((resolve) => {
				const req = session.request({
					":method": "POST",
					":path": `/containerd.services.snapshots.v1.Snapshots/${method}`,
					"content-type": "application/grpc",
					te: "trailers",
				});
				let grpcStatus: string | undefined;
				req.on("response", (h) => {
					if (h["grpc-status"] !== undefined)
						grpcStatus = String(h["grpc-status"]);
				});
				req.on("trailers", (t) => {
					grpcStatus = String(t["grpc-status"]);
				});
				req.on("data", () => {});
				req.on("close", () => resolve(grpcStatus));
				req.on("error", () => resolve(grpcStatus));
				req.end(body);
			});
		const frame = (payload: Buffer, flag = 0, len = payload.length) => {
			const h = Buffer.alloc(5);
			h[0] = flag;
			h.writeUInt32BE(len >>> 0, 1);
			return Buffer.concat([h, payload]);
		};
		const methods = [
			"Prepare",
			"View",
			"Mounts",
			"Commit",
			"Remove",
			"Stat",
			"Update",
			"List",
			"Usage",
			"Cleanup",
			"Nope",
		];
		try {
			await fc.assert(
				fc.asyncProperty(
					fc.constantFrom(...methods),
					fc.oneof(
						fc.uint8Array({ maxLength: 64 }).map((b) => frame(Buffer.from(b))),
						fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
						fc
							.tuple(fc.uint8Array({ maxLength: 32 }), fc.nat())
							.map(([b, n]) => frame(Buffer.from(b), 0, n)),
						fc
							.uint8Array({ maxLength: 32 })
							.map((b) => frame(Buffer.from(b), 1)),
						// well-formed field tags with random values: keys, labels, nested info
						fc
							.array(
								fc.tuple(
									fc.integer({ min: 1, max: 6 }),
									fc.uint8Array({ maxLength: 12 }),
								),
								{ maxLength: 6 },
							)
							.map((fs) =>
								frame(
									Buffer.concat(
										fs.map(([f, v]) =>
											Buffer.concat([
												Buffer.from([(f << 3) | 2, v.length]),
												Buffer.from(v),
											]),
										),
									),
								),
							),
					),
					async (method, body) => {
						const s = await raw(method, body);
						expect(s, `${method} ${body.toString("hex")}`).toMatch(/^\d+$/);
					},
				),
				{ numRuns: 400 },
			);
		} finally {
			session.close();
		}
		expect((await client.call("Stat", { key: "still-here?" })).code).toBe(
			status.NOT_FOUND,
		);
		// Random bytes may well be valid requests that made snapshots: every directory has its record.
		const state = sn.records();
		expect((await readdir(join(root, "snapshots"))).sort()).toEqual(
			[...state.values()].map((r) => r.id).sort(),
		);
		// The records map is replaced by each change: look again every time.
		while (sn.records().size > 0) {
			const now = sn.records();
			const leaf = [...now.keys()].find(
				(k) => ![...now.values()].some((r) => r.parent === k),
			);
			ok(await client.call("Remove", { key: leaf as string }));
		}
		expect(await readdir(join(root, "snapshots"))).toEqual([]);
	});

	it("the state survives a restart; a second process cannot open the same root", async () => {
		ok(await client.call("Prepare", { key: "r-a", parent: "" }));
		ok(
			await client.call("Commit", {
				name: "r-c",
				key: "r-a",
				labels: { l: "v" },
			}),
		);
		ok(await client.call("View", { key: "r-v", parent: "r-c" }));
		const before = ok(await client.list());
		await expect(
			Snapshotter.open({
				root,
				log: () => {},
				overlay: detectOverlayOptions(),
			}),
		).rejects.toMatchObject({ code: "IO" });
		await stop();
		await start();
		expect(ok(await client.list())).toEqual(before);
		ok(await client.call("Remove", { key: "r-v" }));
		ok(await client.call("Remove", { key: "r-c" }));
	});
});
