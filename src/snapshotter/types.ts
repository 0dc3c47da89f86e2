/**
 * The snapshot model containerd's snapshots API speaks (after containerd's snapshots/snapshotter.go):
 * a snapshot is a file-system state identified by a key (active and view snapshots) or a name
 * (committed snapshots) — one key space for both. Active snapshots are writable and may be
 * committed; views are read-only and may not; committed snapshots are immutable and are the only
 * kind that may be a parent.
 */

export type Kind = "view" | "active" | "committed";

export type Labels = Readonly<Record<string, string>>;

export interface Info {
	/** The key (active, view) or name (committed). */
	name: string;
	/** The parent's name; "" for none. */
	parent: string;
	kind: Kind;
	created: Date;
	updated: Date;
	labels: Labels;
}

/** One mount(2) call, as containerd.types.Mount carries it. */
export interface Mount {
	type: string;
	source: string;
	target?: string;
	options: string[];
}

/** What a snapshot's own directory takes (not its parents'): bytes allocated and inodes. */
export interface Usage {
	size: number;
	inodes: number;
}

/** Plain JSON, for the metadata a remote-layer plug-in stores beside a snapshot. */
export type JsonValue =
	| null
	| boolean
	| number
	| string
	| JsonValue[]
	| { [key: string]: JsonValue };
