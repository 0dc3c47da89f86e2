/**
 * dadi-snapshotter as a program: SIGKILLed at random moments while a client prepares, writes,
 * commits, views and removes snapshots, it restarts every time on the same root (the dead
 * process's lock and socket taken over) with a consistent store: every record has its directory,
 * no directory is left without a record, every committed layer still holds what was written into
 * it before its commit. Also: SIGTERM shuts down cleanly (socket removed, lock released), a second
 * server on a root in use is refused with exit 7, `list` reads a root, `--help` lists exit codes.
 */
import { existsSync } from "node:fs";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { type Daemon, killDaemons, startDaemon } from "./daemon.js";
import { BIN, cleanupTempDirs, must, runCli, tempDir } from "./helpers.js";
import { snapshotsClient } from "./snapshotter/client.js";

afterAll(async () => {
	killDaemons();
	await cleanupTempDirs();
});

function serve(root: string, socket: string): Promise<Daemon> {
	return startDaemon(BIN.snapshotter, [
		"serve",
		"--root",
		root,
		"--address",
		`unix:${socket}`,
		"--json",
	]);
}

interface Meta {
	snapshots: {
		key: string;
		id: string;
		kind: string;
		parent: string;
		labels: Record<string, string>;
	}[];
}
const meta = async (root: string): Promise<Meta> =>
	JSON.parse(await readFile(join(root, "metadata.json"), "utf8"));

describe("dadi-snapshotter serve", () => {
	it("SIGKILL at any moment leaves a store that opens consistent", async () => {
		const dir = await tempDir();
		const root = join(dir, "root");
		const socket = join(dir, "sn.sock");
		let n = 0;
		for (let round = 0; round < 6; round++) {
			const d = await serve(root, socket);
			const c = snapshotsClient(socket);
			// What a restart must show: the store is consistent with its directories.
			const m = await meta(root).catch(() => ({ snapshots: [] }) as Meta);
			const ids = m.snapshots.map((s) => s.id).sort();
			expect((await readdir(join(root, "snapshots"))).sort()).toEqual(ids);
			expect((await readdir(root)).sort()).toEqual(
				["lock", "snapshots", ...(round > 0 ? ["metadata.json"] : [])].sort(),
			);
			for (const s of m.snapshots) {
				expect(existsSync(join(root, "snapshots", s.id, "fs"))).toBe(true);
				if (s.kind === "committed" && s.labels.layer)
					expect(
						await readFile(join(root, "snapshots", s.id, "fs", "data"), "utf8"),
					).toBe(s.labels.layer);
			}
			const list = await c.list();
			expect(list.code).toBe(0);
			// Busy work until the kill.
			let stop = false;
			const work = (async () => {
				const committed = m.snapshots
					.filter((s) => s.kind === "committed")
					.map((s) => s.key);
				while (!stop) {
					const i = n++;
					const parent =
						committed.length > 0 && i % 3 === 0
							? (committed[i % committed.length] as string)
							: "";
					const p = await c.call("Prepare", { key: `k${i}`, parent });
					if (p.code !== 0) break;
					const stat = await c.call("Stat", { key: `k${i}` });
					if (stat.code !== 0) break;
					const upper =
						(p.value.mounts[0].options as string[])
							.find((o) => o.startsWith("upperdir="))
							?.slice(9) ?? p.value.mounts[0].source;
					await writeFile(join(upper, "data"), `layer ${i}\n`).catch(() => {});
					const cm = await c.call("Commit", {
						name: `c${i}`,
						key: `k${i}`,
						labels: { layer: `layer ${i}\n` },
					});
					if (cm.code !== 0) break;
					committed.push(`c${i}`);
					if (i % 4 === 1)
						await c.call("View", { key: `v${i}`, parent: `c${i}` });
					if (i % 5 === 2) {
						await c.call("Remove", { key: `v${i - 1}` });
						await c.call("Remove", { key: `c${i}` });
						committed.pop();
					}
				}
			})();
			await new Promise((r) => setTimeout(r, 100 + ((round * 137) % 400)));
			d.child.kill("SIGKILL");
			await d.exited;
			stop = true;
			await work.catch(() => {});
			c.close();
		}
		expect(n).toBeGreaterThan(6);
		const last = await serve(root, socket);
		expect(await last.stop()).toBe(0);
	});

	it("SIGTERM removes the socket and releases the root; a root in use is refused (exit 7); list reads it", async () => {
		const dir = await tempDir();
		const root = join(dir, "root");
		const socket = join(dir, "sn.sock");
		const d = await serve(root, socket);
		expect(d.ready).toMatchObject({
			ok: true,
			address: `unix:${socket}`,
			root,
			snapshots: 0,
		});
		const c = snapshotsClient(socket);
		expect((await c.call("Prepare", { key: "a", parent: "" })).code).toBe(0);
		expect(
			(
				await c.call("Commit", {
					name: "sha256:a",
					key: "a",
					labels: { x: "1" },
				})
			).code,
		).toBe(0);
		c.close();
		const second = await runCli(BIN.snapshotter, [
			"serve",
			"--root",
			root,
			"--address",
			`unix:${join(dir, "other.sock")}`,
		]);
		expect(second.code).toBe(7);
		expect(second.stderr).toContain(`in use by process ${d.child.pid}`);
		const onSocket = await runCli(BIN.snapshotter, [
			"serve",
			"--root",
			join(dir, "root2"),
			"--address",
			`unix:${socket}`,
		]);
		expect(onSocket.code).toBe(7);
		expect(onSocket.stderr).toContain("another server is listening");
		const listed = JSON.parse(
			(await must(runCli(BIN.snapshotter, ["list", "--root", root, "--json"])))
				.stdout,
		);
		expect(listed.snapshots).toMatchObject([
			{ name: "sha256:a", kind: "committed", labels: { x: "1" }, id: "1" },
		]);
		const text = (
			await must(
				runCli(BIN.snapshotter, [
					"list",
					"--root",
					root,
					"--filter",
					"kind==active",
				]),
			)
		).stdout;
		expect(text).toBe("no snapshots\n");
		expect(await d.stop()).toBe(0);
		expect(d.stderr()).toMatch(/SIGTERM: shutting down/);
		expect(existsSync(socket)).toBe(false);
		expect(existsSync(join(root, "lock"))).toBe(false);
		const bad = await runCli(BIN.snapshotter, [
			"serve",
			"--root",
			"/tmp/a:b",
			"--address",
			socket,
		]);
		expect(bad.code).toBe(2);
		expect(
			(await runCli(BIN.snapshotter, ["serve", "--root", root])).code,
		).toBe(2);
		await writeFile(join(root, "metadata.json"), "{not json");
		const broken = await runCli(BIN.snapshotter, [
			"serve",
			"--root",
			root,
			"--address",
			socket,
		]);
		expect(broken.code).toBe(4);
		expect(broken.stderr).toContain("FORMAT_INVALID");
		expect(await readFile(join(root, "metadata.json"), "utf8")).toBe(
			"{not json",
		); // nothing lost
	});
});
