/**
 * Unpacking one layer the way containerd's unpacker does (unpacker.go), through containerd's
 * snapshots service so that containerd's metadata records what happens:
 *
 * 1. Stat(chain ID): found — the layer is unpacked already (by an earlier pull), nothing to do.
 * 2. Prepare("extract-<unique> <chain ID>", parent chain ID, labels with the snapshot ref and the
 *    layer's `containerd.io/snapshot/…` labels). AlreadyExists means the snapshotter took the layer
 *    over (a remote layer) — or another pull committed it meanwhile: Stat must now find the chain
 *    ID; if it does not, try again with a new key (three times, as containerd).
 * 3. Prepare succeeded: the snapshotter did not claim the layer, so it is unpacked containerd's
 *    ordinary way — the blob fetched into the content store, applied onto the returned mounts by
 *    containerd's diff service (whose answer, the uncompressed digest, must be the config's diff
 *    ID), the snapshot committed under the chain ID, and the blob labelled with its uncompressed
 *    digest. On failure the extraction snapshot is removed.
 */
import { randomBytes } from "node:crypto";
import { DadiError, isDadiError } from "../errors.js";
import type { LayerNumber } from "../layer-label.js";
import type { Descriptor } from "../oci/digest.js";
import type { OnProgress } from "../progress.js";
import type { Mount } from "../snapshotter/types.js";
import type { ContainerdClient } from "./client.js";
import { LABEL_UNCOMPRESSED } from "./labels.js";

const PREPARE_ATTEMPTS = 3;

export type LayerOutcome = "claimed" | "applied" | "present";

export interface UnpackLayer {
	desc: Descriptor;
	diffId: string;
	chainId: string;
	/** The parent's chain ID, "" for the bottom layer. */
	parent: string;
	/** The unpack snapshot's labels (labels.ts layerSnapshotLabels). */
	labels: Record<string, string>;
	number: LayerNumber;
}

export interface UnpackContext {
	client: ContainerdClient;
	snapshotter: string;
	/** Puts the layer's blob into containerd's content store; the bytes downloaded (0 if it was there). */
	fetch(desc: Descriptor, onBytes: (n: number) => void): Promise<number>;
	onProgress?: OnProgress;
}

export interface UnpackResult {
	outcome: LayerOutcome;
	/** Bytes of the layer downloaded from the registry. */
	downloaded: number;
}

/** containerd's unpack key: "extract-<nanoseconds>-<random> <chain ID>". */
export function extractKey(chainId: string): string {
	const nanos = Number(process.hrtime.bigint() % 1_000_000_000n);
	return `extract-${nanos}-${randomBytes(3).toString("base64url")} ${chainId}`;
}

/** A snapshots call that failed because containerd could not reach the (proxy) snapshotter. */
function snapshotterError(e: unknown, ctx: UnpackContext): unknown {
	if (isDadiError(e, "NETWORK"))
		return new DadiError(
			"NETWORK",
			`${e.message}; containerd could not reach the snapshotter "${ctx.snapshotter}": is its process (dadi-snapshotter serve) running on the address containerd's [proxy_plugins.${ctx.snapshotter}] names?`,
			{ cause: e },
		);
	return e;
}

export async function unpackLayer(
	ctx: UnpackContext,
	l: UnpackLayer,
): Promise<UnpackResult> {
	try {
		return await unpack(ctx, l);
	} catch (e) {
		throw snapshotterError(e, ctx);
	}
}

async function unpack(
	ctx: UnpackContext,
	l: UnpackLayer,
): Promise<UnpackResult> {
	const { client, snapshotter } = ctx;
	const say = (phase: string, done = 0, total = 0) =>
		ctx.onProgress?.({ phase, layer: l.number, done, total });
	if (await client.snapshotStat(snapshotter, l.chainId)) {
		say("already unpacked");
		return { outcome: "present", downloaded: 0 };
	}
	let mounts: Mount[] | undefined;
	let key = "";
	for (let attempt = 1; attempt <= PREPARE_ATTEMPTS && !mounts; attempt++) {
		key = extractKey(l.chainId);
		const r = await client.snapshotPrepare(
			snapshotter,
			key,
			l.parent,
			l.labels,
		);
		if (r !== "exists") mounts = r;
		else if (await client.snapshotStat(snapshotter, l.chainId)) {
			say(`claimed by the snapshotter "${snapshotter}" (not downloaded)`);
			return { outcome: "claimed", downloaded: 0 };
		}
	}
	if (!mounts)
		throw new DadiError(
			"PRECONDITION_FAILED",
			`the snapshotter "${snapshotter}" answered AlreadyExists ${PREPARE_ATTEMPTS} times but no snapshot ${l.chainId} appeared`,
		);
	// Not claimed: containerd's ordinary path for this layer.
	try {
		const downloaded = await ctx.fetch(l.desc, (n) =>
			say("downloading", n, l.desc.size),
		);
		say("applying");
		const applied = await client.diffApply(l.desc, mounts);
		if (applied.digest !== l.diffId)
			throw new DadiError(
				"LAYER_MISMATCH",
				`it unpacks to ${applied.digest}, but the image config's diff_ids say ${l.diffId}`,
			);
		try {
			await client.snapshotCommit(snapshotter, l.chainId, key, l.labels);
		} catch (e) {
			// Another pull committed the same layer first: it is there, ours is not needed.
			if (!isDadiError(e, "OUTPUT_EXISTS")) throw e;
			await removeQuietly(ctx, key);
			return { outcome: "present", downloaded };
		}
		await client.contentLabel(l.desc.digest, {
			[LABEL_UNCOMPRESSED]: l.diffId,
		});
		return { outcome: "applied", downloaded };
	} catch (e) {
		await removeQuietly(ctx, key);
		throw e;
	}
}

async function removeQuietly(ctx: UnpackContext, key: string): Promise<void> {
	// Best effort: a snapshot already gone is fine, and an extraction snapshot left behind is not
	// referenced by anything, so containerd's garbage collector removes it once the lease is gone.
	await ctx.client.snapshotRemove(ctx.snapshotter, key).catch(() => {});
}
