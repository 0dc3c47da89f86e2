/**
 * A trivial remote-layer plug-in for tests: a layer whose labels carry
 * `containerd.io/snapshot/dadi-test.dir` = an existing directory is claimed, and that directory
 * is its lower directory. It records every call, and can be told to fail.
 */
import { stat } from "node:fs/promises";
import { DadiError } from "../../src/errors.js";
import type {
	Claim,
	ClaimedLayer,
	ClaimRequest,
	MountAnswer,
	MountRequest,
	RemoteLayers,
} from "../../src/snapshotter/remote.js";

export const DIR_LABEL = "containerd.io/snapshot/dadi-test.dir";

export class DirectoryLayers implements RemoteLayers {
	calls: string[] = [];
	started: string[] | undefined;
	fail: { claim?: boolean; mount?: boolean; removed?: boolean } = {};
	/** Answer replacement mounts instead of lower directories. */
	replaceMounts = false;

	async claim(r: ClaimRequest): Promise<Claim | undefined> {
		this.calls.push(`claim ${r.ref}`);
		const dir = r.labels[DIR_LABEL];
		if (!dir) return undefined;
		await new Promise((res) => setTimeout(res, 5)); // a real plug-in fetches something
		if (this.fail.claim)
			throw new DadiError("NETWORK", `cannot reach the registry for ${r.ref}`);
		if (!(await stat(dir)).isDirectory())
			throw new DadiError("INPUT_INVALID", `${dir}: not a directory`);
		return { metadata: { dir, ref: r.ref }, usage: { size: 4096, inodes: 7 } };
	}

	async mount(r: MountRequest): Promise<MountAnswer> {
		this.calls.push(
			`mount ${r.key} over ${r.layers.map((l) => l.name).join(",")}`,
		);
		if (this.fail.mount)
			throw new DadiError("NETWORK", "the lazy reader is not up");
		if (this.replaceMounts)
			return {
				mounts: [
					{ type: "bind", source: "/replaced", options: ["ro", "rbind"] },
				],
			};
		const lowerDirs: Record<string, string> = {};
		for (const l of r.layers)
			lowerDirs[l.name] = (l.metadata as { dir: string }).dir;
		return { lowerDirs };
	}

	async removed(l: ClaimedLayer): Promise<void> {
		this.calls.push(`removed ${l.name}`);
		if (this.fail.removed) throw new Error("plug-in failed to forget");
	}

	async start(layers: readonly ClaimedLayer[]): Promise<void> {
		this.started = layers.map((l) => l.name);
	}
}
