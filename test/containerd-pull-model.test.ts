/**
 * The pure parts of `dadi-snapshotter pull` (src/containerd): chain IDs (a vector computed with
 * sha256sum), the labels containerd's pull writes (examples and properties), image names, and the
 * parsing of what a registry sends — property-tested and fuzzed: any bytes, any JSON and mutated
 * real manifests give a result or a DadiError, never another exception. The per-layer unpack
 * decisions are driven against a scripted containerd (the paths a real one rarely takes: a claim
 * that never shows, a layer that unpacks to the wrong diff ID, a commit that lost a race).
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { chainIds } from "../src/containerd/chain-id.js";
import type { ContainerdClient } from "../src/containerd/client.js";
import { checkNamespace } from "../src/containerd/client.js";
import { parsePullReference } from "../src/containerd/image-name.js";
import {
	kindOf,
	parseDiffIds,
	parseImageManifest,
	parseIndex,
	selectEntry,
} from "../src/containerd/image-parts.js";
import {
	appendDistributionSource,
	childGcLabels,
	distributionSourceKey,
	labelFits,
	layerSnapshotLabels,
	layersLabel,
} from "../src/containerd/labels.js";
import { isLayerType } from "../src/containerd/media-types.js";
import {
	extractKey,
	type UnpackLayer,
	unpackLayer,
} from "../src/containerd/unpack.js";
import { DadiError, isDadiError } from "../src/errors.js";
import { rejection, thrown } from "./helpers.js";

const D = (n: number | string) =>
	`sha256:${String(n).padStart(2, "0").repeat(32).slice(0, 64)}`;
const LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
const MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const CONFIG = "application/vnd.oci.image.config.v1+json";

describe("chain IDs", () => {
	it("match sha256sum over 'CHAIN DIFFID'", () => {
		const a =
			"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
		const b =
			"sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb";
		const c =
			"sha256:3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d";
		expect(chainIds([a, b, c])).toEqual([
			a,
			"sha256:54310b28337ccdbb5477f2808753d5b0e7c87d84187cee28a330a3e71f6c16fc",
			"sha256:6e249d38c8038b0aefaa44893301e44ac47d767db1cb1a6cf4f2993a680add77",
		]);
		expect(chainIds([])).toEqual([]);
		expect(thrown(() => chainIds([a, "sha256:xyz"])).code).toBe(
			"INPUT_INVALID",
		);
	});

	it("a prefix's chain IDs are a prefix; any change below changes every ID above", () => {
		const digest = fc
			.uint8Array({ minLength: 32, maxLength: 32 })
			.map((b) => `sha256:${Buffer.from(b).toString("hex")}`);
		fc.assert(
			fc.property(
				fc.array(digest, { minLength: 2, maxLength: 8 }),
				fc.nat(),
				digest,
				(ids, at, other) => {
					const all = chainIds(ids);
					expect(chainIds(ids.slice(0, -1))).toEqual(all.slice(0, -1));
					const i = at % ids.length;
					if (other === ids[i]) return;
					const changed = chainIds(ids.map((d, j) => (j === i ? other : d)));
					for (let j = 0; j < ids.length; j++)
						expect(changed[j] === all[j]).toBe(j < i);
				},
			),
		);
	});
});

describe("containerd's labels", () => {
	it("children: config, l.N and m.N numbered as containerd does", () => {
		expect(
			childGcLabels([
				{ mediaType: CONFIG, digest: D(1) },
				{ mediaType: LAYER, digest: D(2) },
				{
					mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip",
					digest: D(3),
				},
			]),
		).toEqual({
			"containerd.io/gc.ref.content.config": D(1),
			"containerd.io/gc.ref.content.l.0": D(2),
			"containerd.io/gc.ref.content.l.1": D(3),
		});
		expect(
			childGcLabels([
				{ mediaType: MANIFEST, digest: D(1) },
				{
					mediaType: "application/vnd.docker.distribution.manifest.v2+json",
					digest: D(2),
				},
				{ mediaType: "application/vnd.oci.image.index.v1+json", digest: D(3) },
				{ mediaType: "application/x-unknown", digest: D(4) },
				{ mediaType: CONFIG, digest: D(5) },
				{ mediaType: CONFIG, digest: D(6) },
			]),
		).toEqual({
			"containerd.io/gc.ref.content.m.0": D(1),
			"containerd.io/gc.ref.content.m.1": D(2),
			"containerd.io/gc.ref.content.0": D(3),
			"containerd.io/gc.ref.content.1": D(4),
			"containerd.io/gc.ref.content.config": D(5),
			"containerd.io/gc.ref.content.config1": D(6),
		});
	});

	it("children: one distinct label per child, naming it", () => {
		const mt = fc.constantFrom(
			CONFIG,
			LAYER,
			MANIFEST,
			"application/vnd.oci.image.index.v1+json",
			"text/plain",
		);
		fc.assert(
			fc.property(
				fc.array(fc.record({ mediaType: mt, digest: fc.string() }), {
					maxLength: 30,
				}),
				(children) => {
					const labels = childGcLabels(children);
					expect(Object.keys(labels)).toHaveLength(children.length);
					expect(Object.values(labels).sort()).toEqual(
						children.map((c) => c.digest).sort(),
					);
				},
			),
		);
	});

	it("distribution source: the host without its port; repositories sorted, once each", () => {
		expect(distributionSourceKey("127.0.0.1:5000")).toBe(
			"containerd.io/distribution.source.127.0.0.1",
		);
		expect(distributionSourceKey("docker.io")).toBe(
			"containerd.io/distribution.source.docker.io",
		);
		expect(distributionSourceKey("[::1]:5000")).toBe(
			"containerd.io/distribution.source.::1",
		);
		expect(appendDistributionSource(undefined, "b/c")).toBe("b/c");
		expect(appendDistributionSource("x,b/c", "a")).toBe("a,b/c,x");
		expect(appendDistributionSource("a,b", "a")).toBe("a,b");
		const repo = fc.stringMatching(/^[a-z0-9]{1,6}(\/[a-z0-9]{1,6})?$/);
		fc.assert(
			fc.property(fc.array(repo, { maxLength: 10 }), repo, (have, add) => {
				const v = appendDistributionSource(have.join(","), add);
				const parts = v.split(",");
				expect(parts).toEqual([...new Set([...have, add])].sort());
				expect(appendDistributionSource(v, add)).toBe(v);
			}),
		);
	});

	it("the image-layers label holds as many digests as fit in containerd's 4096 bytes", () => {
		const key = "containerd.io/snapshot/cri.image-layers";
		const many = Array.from({ length: 100 }, (_, i) => ({ digest: D(i) }));
		const v = layersLabel(key, many);
		expect(labelFits(key, v)).toBe(true);
		const n = v.split(",").length;
		expect(n).toBeLessThan(100);
		expect(v.split(",")).toEqual(many.slice(0, n).map((l) => l.digest));
		expect(labelFits(key, `${v},${D(n)}`)).toBe(false);
	});

	it("a layer's snapshot labels: its containerd.io/snapshot/ annotations, the image facts, the ref last", () => {
		const layers = [
			{
				mediaType: LAYER,
				digest: D(1),
				size: 1,
				annotations: {
					"containerd.io/snapshot/dadi.x": "1",
					"containerd.io/snapshot.ref": "forged",
					"containerd.io/snapshot/cri.image-ref": "forged too",
					"org.opencontainers.image.title": "not passed on",
				},
			},
			{ mediaType: LAYER, digest: D(2), size: 1 },
		];
		const facts = { ref: "r.example/a:1", manifest: D(9), layers };
		expect(layerSnapshotLabels(facts, 0, D(7))).toEqual({
			"containerd.io/snapshot/dadi.x": "1",
			"containerd.io/snapshot/cri.image-ref": "r.example/a:1",
			"containerd.io/snapshot/cri.layer-digest": D(1),
			"containerd.io/snapshot/cri.image-layers": `${D(1)},${D(2)}`,
			"containerd.io/snapshot/cri.manifest-digest": D(9),
			"containerd.io/snapshot.ref": D(7),
		});
		expect(
			layerSnapshotLabels(facts, 1, D(8))[
				"containerd.io/snapshot/cri.image-layers"
			],
		).toBe(D(2));
	});

	it("media types as containerd classes them", () => {
		expect(isLayerType(LAYER)).toBe(true);
		expect(isLayerType(`${LAYER}+encrypted`)).toBe(true);
		expect(
			isLayerType("application/vnd.docker.image.rootfs.diff.tar.gzip+x"),
		).toBe(true);
		expect(isLayerType("application/vnd.dadi.image.layer.v1.sealed")).toBe(
			false,
		);
		expect(isLayerType(CONFIG)).toBe(false);
	});
});

describe("references and names", () => {
	it("as containerd names images", () => {
		expect(parsePullReference("127.0.0.1:5000/a/b:v1").name).toBe(
			"127.0.0.1:5000/a/b:v1",
		);
		expect(parsePullReference("docker://127.0.0.1:5000/a/b").name).toBe(
			"127.0.0.1:5000/a/b:latest",
		);
		expect(parsePullReference("busybox").name).toBe(
			"docker.io/library/busybox:latest",
		);
		const d = `sha256:${"ab".repeat(32)}`;
		expect(parsePullReference(`r.example/x@${d}`)).toMatchObject({
			name: `r.example/x@${d}`,
			registry: "r.example",
			repository: "x",
			digest: d,
		});
		expect(thrown(() => parsePullReference("r.example/UPPER:1")).code).toBe(
			"USAGE",
		);
	});

	it("namespaces as containerd allows them", () => {
		checkNamespace("default");
		checkNamespace("k8s.io");
		for (const bad of ["", "a b", "-x", "a..b", "x".repeat(77), "a/b"])
			expect(thrown(() => checkNamespace(bad)).code, bad).toBe("USAGE");
	});

	it("unpack keys: containerd's format, unique", () => {
		const keys = Array.from({ length: 200 }, () => extractKey(D(1)));
		for (const k of keys) expect(k).toMatch(/^extract-\d+-[\w-]{4} sha256:/);
		expect(new Set(keys).size).toBe(keys.length);
	});
});

const manifest = (o: Record<string, unknown> = {}) =>
	Buffer.from(
		JSON.stringify({
			schemaVersion: 2,
			mediaType: MANIFEST,
			config: { mediaType: CONFIG, digest: D(1), size: 10 },
			layers: [{ mediaType: LAYER, digest: D(2), size: 20 }],
			...o,
		}),
	);

describe("what the registry sends", () => {
	it("a manifest: config and layers; not a container image refused with the reason", () => {
		expect(parseImageManifest(manifest(), "m")).toEqual({
			config: { mediaType: CONFIG, digest: D(1), size: 10 },
			layers: [{ mediaType: LAYER, digest: D(2), size: 20 }],
		});
		const sealed = thrown(() =>
			parseImageManifest(
				manifest({
					config: {
						mediaType: "application/vnd.dadi.image.config.v1+json",
						digest: D(1),
						size: 1,
					},
				}),
				"m",
			),
		);
		expect(sealed.code).toBe("FORMAT_UNSUPPORTED");
		expect(sealed.message).toContain("dadi sealed image");
		expect(
			thrown(() =>
				parseImageManifest(
					manifest({
						layers: [{ mediaType: "text/plain", digest: D(2), size: 1 }],
					}),
					"m",
				),
			).code,
		).toBe("FORMAT_UNSUPPORTED");
		expect(
			thrown(() => parseImageManifest(manifest({ layers: [] }), "m")).code,
		).toBe("LAYOUT_INVALID");
		expect(
			thrown(() =>
				parseImageManifest(
					manifest({
						layers: Array.from({ length: 1001 }, () => ({
							mediaType: LAYER,
							digest: D(2),
							size: 1,
						})),
					}),
					"m",
				),
			).code,
		).toBe("LAYOUT_INVALID");
		expect(kindOf(MANIFEST, "m")).toBe("manifest");
		expect(
			thrown(() =>
				kindOf(
					"application/vnd.docker.distribution.manifest.v1+prettyjws",
					"m",
				),
			).message,
		).toContain("schema 1");
	});

	it("an index: the entry for the platform, or which platforms it has", () => {
		const entries = parseIndex(
			Buffer.from(
				JSON.stringify({
					schemaVersion: 2,
					manifests: [
						{
							mediaType: MANIFEST,
							digest: D(1),
							size: 1,
							platform: { os: "linux", architecture: "arm64", variant: "v8" },
						},
						{
							mediaType: MANIFEST,
							digest: D(2),
							size: 1,
							platform: { os: "linux", architecture: "amd64" },
						},
						{ mediaType: MANIFEST, digest: D(3), size: 1 },
					],
				}),
			),
			"i",
		);
		expect(
			selectEntry(entries, { os: "linux", architecture: "amd64" }, "i").digest,
		).toBe(D(2));
		expect(
			selectEntry(entries, { os: "linux", architecture: "arm64" }, "i").digest,
		).toBe(D(1));
		const none = thrown(() =>
			selectEntry(entries, { os: "linux", architecture: "s390x" }, "i"),
		);
		expect(none.code).toBe("INPUT_NOT_FOUND");
		expect(none.message).toContain(
			"(the index has: linux/arm64/v8, linux/amd64)",
		);
	});

	it("a config: one diff ID per layer", () => {
		const cfg = (ids: string[]) =>
			Buffer.from(
				JSON.stringify({ rootfs: { type: "layers", diff_ids: ids } }),
			);
		expect(parseDiffIds(cfg([D(5)]), 1, "c")).toEqual([D(5)]);
		expect(thrown(() => parseDiffIds(cfg([D(5)]), 2, "c")).code).toBe(
			"INPUT_INVALID",
		);
	});

	it("fuzz: any bytes or JSON give a result or a DadiError", () => {
		const parsers = [
			(b: Buffer) => parseImageManifest(b, "m"),
			(b: Buffer) => parseIndex(b, "i"),
			(b: Buffer) => parseDiffIds(b, 1, "c"),
		];
		const inputs = fc.oneof(
			fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
			fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v))),
			fc
				.record({
					schemaVersion: fc.oneof(fc.constant(2), fc.jsonValue()),
					config: fc.jsonValue(),
					layers: fc.oneof(fc.array(fc.jsonValue()), fc.jsonValue()),
					manifests: fc.oneof(fc.array(fc.jsonValue()), fc.jsonValue()),
					rootfs: fc.jsonValue(),
				})
				.map((v) => Buffer.from(JSON.stringify(v))),
		);
		fc.assert(
			fc.property(inputs, (b) => {
				for (const p of parsers)
					try {
						p(b);
					} catch (e) {
						if (!(e instanceof DadiError)) throw e;
					}
			}),
			{ numRuns: 2000 },
		);
	});

	it("fuzz: a real manifest with bytes changed gives a result or a DadiError", () => {
		const real = manifest({
			layers: [
				{ mediaType: LAYER, digest: D(2), size: 20, annotations: { a: "b" } },
				{ mediaType: LAYER, digest: D(3), size: 30 },
			],
		});
		fc.assert(
			fc.property(
				fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), {
					minLength: 1,
					maxLength: 4,
				}),
				(edits) => {
					const b = Buffer.from(real);
					for (const [at, v] of edits) b[at % b.length] = v;
					try {
						parseImageManifest(b, "m");
					} catch (e) {
						if (!(e instanceof DadiError)) throw e;
					}
				},
			),
			{ numRuns: 2000 },
		);
	});
});

/** A containerd that answers from a script and records the calls. */
function scripted(s: {
	stat: (key: string, n: number) => boolean;
	prepare: (n: number) => "exists" | "mounts";
	applied?: string;
	commit?: "ok" | "exists";
}) {
	const calls: string[] = [];
	let stats = 0;
	let prepares = 0;
	const client = {
		async snapshotStat(_sn: string, key: string) {
			calls.push(`stat ${key}`);
			return s.stat(key, ++stats)
				? { name: key, parent: "", kind: "COMMITTED", labels: {} }
				: undefined;
		},
		async snapshotPrepare(_sn: string, key: string) {
			calls.push(`prepare ${key.split(" ")[1]}`);
			return s.prepare(++prepares) === "exists"
				? "exists"
				: [{ type: "bind", source: "/x", options: ["rw"] }];
		},
		async diffApply() {
			calls.push("apply");
			return { mediaType: "x", digest: s.applied ?? D(5), size: 1 };
		},
		async snapshotCommit(_sn: string, name: string) {
			calls.push(`commit ${name}`);
			if (s.commit === "exists") throw new DadiError("OUTPUT_EXISTS", "taken");
		},
		async snapshotRemove(_sn: string, key: string) {
			calls.push(`remove ${key.split(" ")[1]}`);
		},
		async contentLabel(digest: string, labels: Record<string, string>) {
			calls.push(`label ${digest} ${JSON.stringify(labels)}`);
		},
	};
	return { client: client as unknown as ContainerdClient, calls };
}

const layer: UnpackLayer = {
	desc: { mediaType: LAYER, digest: D(2), size: 20 },
	diffId: D(5),
	chainId: D(6),
	parent: D(7),
	labels: { "containerd.io/snapshot.ref": D(6) },
	number: { number: 2, of: 2 },
};
const fetched: string[] = [];
const ctx = (client: ContainerdClient) => ({
	client,
	snapshotter: "dadi",
	fetch: async (d: { digest: string }) => {
		fetched.push(d.digest);
		return 20;
	},
});

describe("unpacking one layer (a scripted containerd)", () => {
	it("present: Stat finds the chain ID, nothing else is done", async () => {
		const { client, calls } = scripted({
			stat: () => true,
			prepare: () => "mounts",
		});
		expect(await unpackLayer(ctx(client), layer)).toEqual({
			outcome: "present",
			downloaded: 0,
		});
		expect(calls).toEqual([`stat ${D(6)}`]);
	});

	it("claimed: AlreadyExists, then Stat finds it; nothing fetched", async () => {
		fetched.length = 0;
		const { client, calls } = scripted({
			stat: (_k, n) => n > 1,
			prepare: () => "exists",
		});
		expect((await unpackLayer(ctx(client), layer)).outcome).toBe("claimed");
		expect(calls).toEqual([`stat ${D(6)}`, `prepare ${D(6)}`, `stat ${D(6)}`]);
		expect(fetched).toEqual([]);
	});

	it("AlreadyExists without the snapshot appearing: tried three times, then PRECONDITION_FAILED", async () => {
		const { client, calls } = scripted({
			stat: () => false,
			prepare: () => "exists",
		});
		const e = await rejection(unpackLayer(ctx(client), layer));
		expect(e.code).toBe("PRECONDITION_FAILED");
		expect(calls.filter((c) => c.startsWith("prepare"))).toHaveLength(3);
	});

	it("AlreadyExists once, then an ordinary Prepare: applied", async () => {
		const { client } = scripted({
			stat: () => false,
			prepare: (n) => (n === 1 ? "exists" : "mounts"),
		});
		expect((await unpackLayer(ctx(client), layer)).outcome).toBe("applied");
	});

	it("not claimed: fetched, applied, committed under the chain ID, labelled uncompressed", async () => {
		fetched.length = 0;
		const { client, calls } = scripted({
			stat: () => false,
			prepare: () => "mounts",
		});
		expect(await unpackLayer(ctx(client), layer)).toEqual({
			outcome: "applied",
			downloaded: 20,
		});
		expect(fetched).toEqual([D(2)]);
		expect(calls.slice(2)).toEqual([
			"apply",
			`commit ${D(6)}`,
			`label ${D(2)} {"containerd.io/uncompressed":"${D(5)}"}`,
		]);
	});

	it("a layer that unpacks to another diff ID: LAYER_MISMATCH, the extraction snapshot removed, nothing committed", async () => {
		const { client, calls } = scripted({
			stat: () => false,
			prepare: () => "mounts",
			applied: D(9),
		});
		const e = await rejection(unpackLayer(ctx(client), layer));
		expect(e.code).toBe("LAYER_MISMATCH");
		expect(calls).toContain(`remove ${D(6)}`);
		expect(calls.some((c) => c.startsWith("commit"))).toBe(false);
	});

	it("a commit another pull won: present, ours removed", async () => {
		const { client, calls } = scripted({
			stat: () => false,
			prepare: () => "mounts",
			commit: "exists",
		});
		expect((await unpackLayer(ctx(client), layer)).outcome).toBe("present");
		expect(calls.at(-1)).toBe(`remove ${D(6)}`);
	});

	it("containerd cannot reach the snapshotter: NETWORK, saying which snapshotter and what to check", async () => {
		const client = {
			async snapshotStat() {
				throw new DadiError(
					"NETWORK",
					"looking up …: containerd answered UNAVAILABLE",
				);
			},
		} as unknown as ContainerdClient;
		const e = await rejection(unpackLayer(ctx(client), layer));
		expect(isDadiError(e, "NETWORK")).toBe(true);
		expect(e.message).toContain('could not reach the snapshotter "dadi"');
	});
});
