/**
 * The plug-in point for remote layers (docs/snapshotter.md §6): how a layer that lives elsewhere (a
 * dadi sealed image served lazily, …) enters the snapshotter without containerd downloading or
 * applying it — the mechanism of stargz, overlaybd and nydus snapshotters.
 *
 * While unpacking an image, containerd calls Prepare(key, parent) for each layer with the label
 * `containerd.io/snapshot.ref` = the layer's chain ID, plus every layer-descriptor annotation
 * prefixed `containerd.io/snapshot/` as a label. The snapshotter then:
 *
 * 1. if a committed snapshot named that chain ID with that parent is already recorded, answers
 *    AlreadyExists (containerd finds it by a List filter on the ref label and skips the layer);
 * 2. otherwise asks `claim`. A claim is recorded at once as a committed snapshot named the chain
 *    ID, with the request's parent and labels and the claim's `metadata` stored in its record, and
 *    Prepare answers AlreadyExists; declining (undefined) makes it an ordinary Prepare; a throw
 *    fails the Prepare with that error and records nothing.
 *
 * When a snapshot whose ancestry includes claimed layers is mounted (Prepare, View, Mounts), `mount`
 * gives each claimed layer's lower directory or replaces the mounts outright. When a claimed
 * snapshot has been removed, `removed` is told. `start` hears, once at start-up, every claimed layer
 * the store holds, so a plug-in can drop what a crash between a removal and `removed` left behind.
 *
 * Every hook may be async and may fail: a failure fails the request with the error (a DadiError's
 * code maps to a gRPC code; anything else is Unknown) and leaves the store as it was. Hooks run
 * while the snapshotter holds its lock for changes, so they should answer promptly: other
 * Prepare/Commit/Remove requests wait meanwhile (Stat, List and Usage do not).
 */
import type { JsonValue, Labels, Mount, Usage } from "./types.js";

/** What containerd asked for when it prepared an unpack snapshot carrying a snapshot ref. */
export interface ClaimRequest {
	/** The unpack key containerd chose (e.g. "default/4/extract-… sha256:…"). */
	key: string;
	/** The parent's name ("" for the bottom layer). */
	parent: string;
	/** `containerd.io/snapshot.ref`: the layer's chain ID, the snapshot's name if claimed. */
	ref: string;
	/** All labels of the request (the ref and the inherited `containerd.io/snapshot/…` annotations). */
	labels: Labels;
}

export interface Claim {
	/** Stored beside the snapshot in the metadata (JSON; handed back to `mount` and `removed`). */
	metadata: JsonValue;
	/** The layer's usage as Usage reports it; default: what its (empty) directory takes. */
	usage?: Usage;
}

/** A claimed layer as the hooks see it. */
export interface ClaimedLayer {
	/** Its name: the chain ID it was claimed under. */
	name: string;
	/** Its directory, snapshots/ID: the plug-in may keep files or mount things below it. */
	dir: string;
	labels: Labels;
	metadata: JsonValue;
}

export interface MountRequest {
	/** The snapshot being mounted (an active or view key). */
	key: string;
	kind: "active" | "view";
	/** The claimed layers in its ancestry, nearest first. */
	layers: readonly ClaimedLayer[];
	/** What the snapshotter would answer if each claimed layer's lower directory were `DIR/fs`. */
	mounts: readonly Mount[];
}

/** Either a lower directory for each claimed layer (by name), or the mounts to answer instead. */
export type MountAnswer =
	| { lowerDirs: Readonly<Record<string, string>> }
	| { mounts: Mount[] };

export interface RemoteLayers {
	/** Takes over the layer (a claim) or declines (undefined); throwing fails the Prepare. */
	claim(request: ClaimRequest): Promise<Claim | undefined>;
	/** Where a snapshot above claimed layers finds them. */
	mount(request: MountRequest): Promise<MountAnswer>;
	/** A claimed snapshot was removed from the store (its directory is gone too). */
	removed(layer: ClaimedLayer): Promise<void>;
	/** Optional: every claimed layer in the store, once, before the first request. */
	start?(layers: readonly ClaimedLayer[]): Promise<void>;
}
