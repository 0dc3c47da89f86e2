/**
 * The mounts a snapshot above sealed layers gets (pure). A sealed image is a block-level overlay:
 * the file system of its top layer already holds every layer below it, so of the claimed layers
 * only the nearest one contributes a lower directory — the mounted file system of the image up to
 * that layer — and the others drop out of the overlay.
 *
 * - host mode: the overlay the snapshotter would build, with the claimed layers' directories
 *   replaced by that one mounted file system (a bind mount of it for a read-only view of it alone);
 * - guest mode: nothing of the image on the host — one mount that carries the image to the
 *   sandbox as a Kata virtual volume (`io.katacontainers.volume=` + base64 JSON, volume type
 *   `image_guest_pull`, as Kata passes remote images), with the writable upper directory the
 *   snapshotter made; a runtime other than Kata cannot mount it (unknown option), so it fails
 *   closed instead of running an empty root file system.
 */
import { DadiError } from "../errors.js";
import type { Mount } from "./types.js";

/** Splits an overlay option value on unescaped colons (the snapshotter never escapes). */
function lowerDirsOf(m: Mount): string[] | undefined {
	const o = m.options.find((x) => x.startsWith("lowerdir="));
	return o?.slice("lowerdir=".length).split(":");
}

export function hostModeMounts(
	mounts: readonly Mount[],
	/** The claimed layers' lower directories as the snapshotter built them (DIR/fs), nearest first. */
	claimedDirs: readonly string[],
	/** Where the image up to the nearest claimed layer is mounted. */
	imageDir: string,
): Mount[] {
	const claimed = new Set(claimedDirs);
	const [m, ...rest] = mounts;
	if (!m || rest.length > 0)
		throw new DadiError("INTERNAL", "expected exactly one mount to rewrite");
	if (m.type === "bind") {
		if (!claimed.has(m.source))
			throw new DadiError("INTERNAL", "a bind mount of no claimed layer");
		return [{ ...m, source: imageDir }];
	}
	const lowers = lowerDirsOf(m);
	if (m.type !== "overlay" || !lowers)
		throw new DadiError("INTERNAL", `cannot rewrite a ${m.type} mount`);
	const first = lowers.findIndex((d) => claimed.has(d));
	if (first < 0) throw new DadiError("INTERNAL", "no claimed layer below");
	const kept = lowers.filter((d, i) => !claimed.has(d) || i === first);
	const next = kept.map((d) => (claimed.has(d) ? imageDir : d));
	// Only ordinary layers above the sealed ones could remain; overlay needs at least one lower.
	return [
		{
			...m,
			options: m.options.map((o) =>
				o.startsWith("lowerdir=") ? `lowerdir=${next.join(":")}` : o,
			),
		},
	];
}

export const KATA_VOLUME_OPTION = "io.katacontainers.volume=";

export interface GuestImage {
	/** docker://HOST/REPO@DIGEST */
	image: string;
	/** The image key's KBS resource (kbs:///REPO/TYPE/TAG). */
	keyRef: string;
	/** Layers of the image to serve (from the bottom). */
	layers: number;
	config: string;
}

/** The Kata virtual volume a guest-mode rootfs carries (Kata's KataVirtualVolume, JSON). */
export function kataVolume(g: GuestImage): Record<string, unknown> {
	return {
		volume_type: "image_guest_pull",
		source: g.image,
		fs_type: "dadi",
		image_pull: {
			metadata: {
				"io.dadi.format": "sealed",
				"io.dadi.image": g.image,
				"io.dadi.config": g.config,
				"io.dadi.key-ref": g.keyRef,
				"io.dadi.layers": String(g.layers),
			},
		},
	};
}

export function guestModeMounts(
	mounts: readonly Mount[],
	g: GuestImage,
): Mount[] {
	const m = mounts[0];
	const upper = m?.options.find((o) => o.startsWith("upperdir="));
	const work = m?.options.find((o) => o.startsWith("workdir="));
	const volume = Buffer.from(JSON.stringify(kataVolume(g))).toString("base64");
	return [
		{
			type: "fuse.dadi-guest",
			source: "dadi",
			options: [
				...(upper ? [upper] : []),
				...(work ? [work] : []),
				...(m?.options.includes("ro") ? ["ro"] : []),
				`${KATA_VOLUME_OPTION}${volume}`,
			],
		},
	];
}
