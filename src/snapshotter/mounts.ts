/**
 * The mounts a snapshot is reached through, exactly as containerd's overlayfs snapshotter describes
 * them (snapshots/overlay/overlay.go), so containerd, its differ and runc mount them unchanged:
 *
 * - no parents: a bind mount of the snapshot's own `fs` directory, options [rw|ro, rbind]
 *   (ro for a view);
 * - a view with one parent: a read-only bind mount of the parent's directory, [ro, rbind];
 * - otherwise overlay, source "overlay": [index=off?, userxattr?, workdir=…, upperdir=… (active
 *   only), lowerdir=P1:P2:… (nearest parent first)]; a view's overlay has no upper dir and is
 *   therefore read-only.
 *
 * Pure: the directories come in as arguments.
 */
import type { Kind, Mount } from "./types.js";

export interface OverlayOptions {
	/** The kernel's overlay module has an `index` parameter: mount with index=off (as containerd). */
	indexOff: boolean;
	/** In a user namespace overlay needs "userxattr". */
	userxattr: boolean;
}

export interface MountTarget {
	kind: Kind;
	/** This snapshot's own directories. */
	upper: string;
	work: string;
	/** The parents' directories to use as lower layers, nearest first. */
	lowers: readonly string[];
}

export function snapshotMounts(t: MountTarget, o: OverlayOptions): Mount[] {
	if (t.lowers.length === 0)
		return [
			{
				type: "bind",
				source: t.upper,
				options: [t.kind === "view" ? "ro" : "rw", "rbind"],
			},
		];
	if (t.kind !== "active" && t.lowers.length === 1)
		return [
			{ type: "bind", source: t.lowers[0] as string, options: ["ro", "rbind"] },
		];
	const options: string[] = [];
	if (o.indexOff) options.push("index=off");
	if (o.userxattr) options.push("userxattr");
	if (t.kind === "active")
		options.push(`workdir=${t.work}`, `upperdir=${t.upper}`);
	options.push(`lowerdir=${t.lowers.join(":")}`);
	return [{ type: "overlay", source: "overlay", options }];
}
