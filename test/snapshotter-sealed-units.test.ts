/** The sealed-layer plug-in's pure parts: recognising a sealed layer, and the mounts above one. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
	LABEL_CRI_IMAGE_REF,
	LABEL_CRI_LAYER,
	LABEL_CRI_MANIFEST,
	LABEL_LAYER_INDEX,
	LABEL_SEALED_CONFIG,
	LABEL_SEALED_LAYER,
	sealedLayerOf,
} from "../src/snapshotter/sealed-labels.js";
import {
	guestModeMounts,
	hostModeMounts,
	KATA_VOLUME_OPTION,
} from "../src/snapshotter/sealed-mounts.js";
import { thrown } from "./helpers.js";

const D = (c: string) => `sha256:${c.repeat(64)}`;
const LABELS = {
	"containerd.io/snapshot.ref": D("c"),
	[LABEL_SEALED_LAYER]: D("a"),
	[LABEL_SEALED_CONFIG]: D("b"),
	[LABEL_LAYER_INDEX]: "1/3",
	[LABEL_CRI_IMAGE_REF]: "127.0.0.1:5000/team/app:v1",
	[LABEL_CRI_MANIFEST]: D("d"),
	[LABEL_CRI_LAYER]: D("a"),
};

describe("sealedLayerOf", () => {
	it("recognises a sealed layer and pins its image to the manifest digest", () => {
		expect(sealedLayerOf(LABELS)).toEqual({
			layer: D("a"),
			config: D("b"),
			index: 1,
			count: 3,
			image: `docker://127.0.0.1:5000/team/app@${D("d")}`,
		});
		expect(
			sealedLayerOf({ "containerd.io/snapshot.ref": D("c") }),
		).toBeUndefined();
	});

	it("refuses a sealed layer it cannot locate, or labels that disagree", () => {
		const { [LABEL_CRI_IMAGE_REF]: _, ...noRef } = LABELS;
		expect(thrown(() => sealedLayerOf(noRef)).message).toMatch(
			/disable_snapshot_annotations = false.*dadi-snapshotter pull/,
		);
		for (const bad of [
			{ [LABEL_LAYER_INDEX]: "3/3" },
			{ [LABEL_LAYER_INDEX]: "x" },
			{ [LABEL_SEALED_CONFIG]: "sha256:nope" },
			{ [LABEL_CRI_LAYER]: D("e") },
			{ [LABEL_CRI_MANIFEST]: "latest" },
			{ [LABEL_CRI_IMAGE_REF]: "not a reference" },
		])
			expect(thrown(() => sealedLayerOf({ ...LABELS, ...bad })).code).toBe(
				"INPUT_INVALID",
			);
	});

	it("never throws anything but a coded error on arbitrary labels (property)", () => {
		fc.assert(
			fc.property(
				fc.dictionary(
					fc.constantFrom(...Object.keys(LABELS), "other"),
					fc.string({ maxLength: 80 }),
				),
				(labels) => {
					try {
						sealedLayerOf({
							...labels,
							[LABEL_SEALED_LAYER]: labels[LABEL_SEALED_LAYER] ?? D("a"),
						});
					} catch (e) {
						expect((e as { code?: string }).code).toBe("INPUT_INVALID");
					}
				},
			),
		);
	});
});

describe("mounts above sealed layers", () => {
	const overlay = {
		type: "overlay",
		source: "overlay",
		options: [
			"index=off",
			"workdir=/r/snapshots/9/work",
			"upperdir=/r/snapshots/9/fs",
			"lowerdir=/r/snapshots/8/fs:/r/snapshots/3/fs:/r/snapshots/2/fs:/r/snapshots/1/fs",
		],
	};

	it("host mode: the claimed layers collapse into the image's mounted file system", () => {
		expect(
			hostModeMounts(
				[overlay],
				["/r/snapshots/3/fs", "/r/snapshots/2/fs", "/r/snapshots/1/fs"],
				"/img/mnt",
			),
		).toEqual([
			{
				...overlay,
				options: [
					"index=off",
					"workdir=/r/snapshots/9/work",
					"upperdir=/r/snapshots/9/fs",
					"lowerdir=/r/snapshots/8/fs:/img/mnt",
				],
			},
		]);
		expect(
			hostModeMounts(
				[
					{
						type: "bind",
						source: "/r/snapshots/3/fs",
						options: ["ro", "rbind"],
					},
				],
				["/r/snapshots/3/fs"],
				"/img/mnt",
			),
		).toEqual([{ type: "bind", source: "/img/mnt", options: ["ro", "rbind"] }]);
	});

	it("guest mode: one mount with the Kata virtual volume, the upper directory, nothing of the image", () => {
		const [m, ...rest] = guestModeMounts([overlay], {
			image: `docker://127.0.0.1:5000/team/app@${D("d")}`,
			config: D("b"),
			keyRef: "kbs:///default/image-key/app",
			layers: 3,
		});
		expect(rest).toEqual([]);
		expect(m?.options).toContain("upperdir=/r/snapshots/9/fs");
		expect(m?.options.some((o) => o.startsWith("lowerdir="))).toBe(false);
		const vol = m?.options.find((o) => o.startsWith(KATA_VOLUME_OPTION)) ?? "";
		const json = JSON.parse(
			Buffer.from(vol.slice(KATA_VOLUME_OPTION.length), "base64").toString(),
		);
		expect(json).toEqual({
			volume_type: "image_guest_pull",
			source: `docker://127.0.0.1:5000/team/app@${D("d")}`,
			fs_type: "dadi",
			image_pull: {
				metadata: {
					"io.dadi.format": "sealed",
					"io.dadi.image": `docker://127.0.0.1:5000/team/app@${D("d")}`,
					"io.dadi.config": D("b"),
					"io.dadi.key-ref": "kbs:///default/image-key/app",
					"io.dadi.layers": "3",
				},
			},
		});
	});
});
