/**
 * The host half of a Kata start, as containerd and dadi-snapshotter (guest mode) do it: pull the
 * sealed image through the proxy snapshotter, prepare a container's snapshot, and take from its
 * one mount the Kata virtual volume (`io.katacontainers.volume=` + base64 JSON) that carries the
 * pinned image and key references to the sandbox. Kata's runtime hands that volume to its agent;
 * the sandbox proof hands it to the VM's job. The snapshotter's and containerd's state stay under
 * `dir`, on the host side the scan reads.
 */
import { join } from "node:path";
import { startDaemon } from "../daemon.js";
import { BIN, must, runCli } from "../helpers.js";
import { startContainerd } from "../snapshotter/containerd.js";

const SNAP = "dadi";
const VOLUME = "io.katacontainers.volume=";

export async function snapshotterVolume(
	dir: string,
	/** HOST:PORT/REPO@DIGEST as the host reaches the registry. */
	ref: string,
): Promise<{ volume: string; mountType: string }> {
	const socket = join(dir, "snapshotter.sock");
	const snap = await startDaemon(BIN.snapshotter, [
		"serve",
		"--root",
		join(dir, "snapshotter"),
		"--address",
		`unix:${socket}`,
		"--insecure",
		"--mode",
		"guest",
		"--json",
	]);
	const c = await startContainerd(join(dir, "containerd"), socket);
	try {
		await c.waitForSnapshotter();
		await must(
			runCli(BIN.snapshotter, [
				"pull",
				`docker://${ref}`,
				"--address",
				c.socket,
				"--snapshotter",
				SNAP,
				"--insecure",
			]),
		);
		const rows = (await c.ctr(["snapshots", "--snapshotter", SNAP, "ls"]))
			.trim()
			.split("\n")
			.slice(1)
			.map((l) => l.split(/\s+/));
		const parents = rows.map((r) => r[1]);
		const head = rows.map((r) => r[0]).find((k) => !parents.includes(k));
		if (!head) throw new Error("the pulled image has no snapshots");
		const mounts = JSON.parse(
			await c.ctr([
				"snapshots",
				"--snapshotter",
				SNAP,
				"prepare",
				"--mounts",
				"sandbox-1",
				head,
			]),
		) as { Type: string; Options: string[] }[];
		const option = mounts[0]?.Options.find((o) => o.startsWith(VOLUME));
		if (mounts.length !== 1 || !option)
			throw new Error(
				`expected one mount carrying a Kata virtual volume, got ${JSON.stringify(mounts)}`,
			);
		await c.ctr(["snapshots", "--snapshotter", SNAP, "rm", "sandbox-1"]);
		return {
			volume: option.slice(VOLUME.length),
			mountType: mounts[0]?.Type as string,
		};
	} finally {
		await c.stop();
		await snap.stop();
	}
}
