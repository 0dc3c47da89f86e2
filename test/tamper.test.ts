/**
 * Guarantee (2) and (3) of docs/threat-model.md: any change to any stored byte makes verify and
 * export fail with a stable code, never wrong data, and nothing half-written is left behind;
 * layers cannot be swapped, moved or substituted.
 */
import {
	copyFile,
	readdir,
	readFile,
	rm,
	truncate,
	writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ImageKey } from "../src/crypto/image-key.js";
import { DadiError } from "../src/errors.js";
import { HEADER_SIZE, TAG_SIZE } from "../src/format/constants.js";
import { exportDisk } from "../src/image/export.js";
import { openSealedImage } from "../src/image/open-image.js";
import { verifyImage } from "../src/image/verify.js";
import { sha256Digest } from "../src/oci/digest.js";
import {
	cleanupTempDirs,
	prng,
	sealInto,
	tempDir,
	texty,
	writeDisk,
	writeKey,
} from "./helpers.js";

/** A JSON document edited by hand (a forger's view: anything goes). */
// biome-ignore lint/suspicious/noExplicitAny: hand-edited JSON documents
type Doc = any;

const INTEGRITY = [
	"AUTH_FAILED",
	"DIGEST_MISMATCH",
	"FORMAT_INVALID",
	"FORMAT_UNSUPPORTED",
	"LAYER_MISMATCH",
	"LAYOUT_INVALID",
];
const CS = 4096;

let dir: string;
let oci: string;
let key: ImageKey;
let modified: Buffer;
let blobs: { name: string; path: string; digest: string }[];

async function attempt(fn: () => Promise<unknown>): Promise<string> {
	try {
		await fn();
		return "ok";
	} catch (e) {
		if (e instanceof DadiError) return e.code;
		throw e;
	}
}

async function verifyCode(tag = "v2"): Promise<string> {
	return attempt(async () => {
		const img = await openSealedImage({ transport: "oci", dir: oci, tag }, key);
		try {
			await verifyImage(img);
		} finally {
			await img.close();
		}
	});
}

/** Exports into a fresh directory; returns the code and what the directory holds afterwards. */
async function exportCode(
	tag = "v2",
): Promise<{ code: string; left: string[]; bytes?: Buffer }> {
	const outDir = await tempDir();
	const out = join(outDir, "disk.img");
	const code = await attempt(async () => {
		const img = await openSealedImage({ transport: "oci", dir: oci, tag }, key);
		try {
			await exportDisk(img.disk, out);
		} finally {
			await img.close();
		}
	});
	const left = await readdir(outDir);
	const bytes = code === "ok" ? await readFile(out) : undefined;
	await rm(outDir, { recursive: true, force: true });
	return { code, left, bytes };
}

async function withModifiedFile(
	path: string,
	mutate: (b: Buffer) => Buffer,
	fn: () => Promise<void>,
): Promise<void> {
	const orig = await readFile(path);
	await writeFile(path, mutate(Buffer.from(orig)));
	try {
		await fn();
	} finally {
		await writeFile(path, orig);
	}
}

async function manifestOf(tag: string): Promise<{ path: string; json: Doc }> {
	const index = JSON.parse(await readFile(join(oci, "index.json"), "utf8"));
	const d = index.manifests.find(
		(m: Doc) => m.annotations["org.opencontainers.image.ref.name"] === tag,
	);
	const path = join(oci, "blobs/sha256", d.digest.slice(7));
	return { path, json: JSON.parse(await readFile(path, "utf8")) };
}

/**
 * An attacker with write access to the layout: rewrites the config (and so the manifest and
 * index.json) consistently, so every digest matches again. `mutate` edits the sealed config (the
 * public config's "io.dadi.sealed" member), the manifest and the public config; afterwards the
 * public part is made to agree with the sealed member again (diff_ids), and the manifest's layer
 * annotations with the new config digest — as a careful forger would.
 */
async function forgeConfig(
	tag: string,
	mutate: (sealed: Doc, manifest: Doc, publicConfig: Doc) => void,
	o: { keepPublicPart?: boolean } = {},
): Promise<string> {
	const { json: manifest } = await manifestOf(tag);
	const publicConfig = JSON.parse(
		await readFile(
			join(oci, "blobs/sha256", manifest.config.digest.slice(7)),
			"utf8",
		),
	);
	const sealed = publicConfig["io.dadi.sealed"];
	mutate(sealed, manifest, publicConfig);
	if (!o.keepPublicPart)
		publicConfig.rootfs.diff_ids = sealed.layers.map((l: Doc) => l.digest);
	const cbytes = Buffer.from(JSON.stringify(publicConfig));
	manifest.config.digest = sha256Digest(cbytes);
	manifest.config.size = cbytes.length;
	if (!o.keepPublicPart)
		manifest.layers.forEach((l: Doc, i: number) => {
			l.annotations = {
				...l.annotations,
				"containerd.io/snapshot/dadi.sealed-layer": l.digest,
				"containerd.io/snapshot/dadi.sealed-config": manifest.config.digest,
				"containerd.io/snapshot/dadi.layer-index": `${i}/${manifest.layers.length}`,
			};
		});
	await writeFile(
		join(oci, "blobs/sha256", manifest.config.digest.slice(7)),
		cbytes,
	);
	const mbytes = Buffer.from(JSON.stringify(manifest));
	const md = sha256Digest(mbytes);
	await writeFile(join(oci, "blobs/sha256", md.slice(7)), mbytes);
	const index = JSON.parse(await readFile(join(oci, "index.json"), "utf8"));
	index.manifests.push({
		mediaType: "application/vnd.oci.image.manifest.v1+json",
		digest: md,
		size: mbytes.length,
		annotations: { "org.opencontainers.image.ref.name": "forged" },
	});
	index.manifests = index.manifests.filter(
		(m: Doc, i: number, all: Doc[]) =>
			m.annotations["org.opencontainers.image.ref.name"] !== "forged" ||
			i === all.length - 1,
	);
	await writeFile(join(oci, "index.json"), JSON.stringify(index));
	return "forged";
}

beforeAll(async () => {
	dir = await tempDir();
	oci = join(dir, "oci");
	key = (await writeKey(dir)).key;
	const size = 40 * CS + 1000;
	const base = await writeDisk(join(dir, "base.img"), size, [
		{ at: 0, bytes: prng("base", 20 * CS) },
		{ at: 24 * CS, bytes: texty("text", 10 * CS) },
	]);
	modified = Buffer.from(base);
	prng("up", 6 * CS).copy(modified, 2 * CS); // shadows base chunks 2..7
	modified.fill(0, 10 * CS, 12 * CS); // zero extent over base data
	texty("tail", 3000).copy(modified, size - 3000);
	await writeDisk(join(dir, "mod.img"), size, [{ at: 0, bytes: modified }]);
	await sealInto(join(dir, "base.img"), oci, "v1", key, {
		chunkSize: CS,
		compression: "zstd",
	});
	await sealInto(join(dir, "mod.img"), oci, "v2", key, {
		compression: "none",
		base: "v1",
	});
	// an unrelated image of the same shape under the same image key, for substitution attacks
	await writeDisk(join(dir, "other.img"), size, [
		{ at: 0, bytes: prng("other", size) },
	]);
	await sealInto(join(dir, "other.img"), join(dir, "oci-other"), "o", key, {
		chunkSize: CS,
		compression: "none",
	});

	const { path: mpath, json: m } = await manifestOf("v2");
	blobs = [
		{ name: "manifest", path: mpath, digest: "" },
		{
			name: "config",
			path: join(oci, "blobs/sha256", m.config.digest.slice(7)),
			digest: m.config.digest,
		},
		...m.layers.map((l: Doc, i: number) => ({
			name: `layer${i}`,
			path: join(oci, "blobs/sha256", l.digest.slice(7)),
			digest: l.digest,
		})),
	];
});
afterAll(cleanupTempDirs);

describe("the untampered image", () => {
	it("verifies and exports exactly", async () => {
		expect(await verifyCode()).toBe("ok");
		const r = await exportCode();
		expect(r.code).toBe("ok");
		expect(r.bytes?.equals(modified)).toBe(true);
	});
});

describe("flipping any single byte of any blob", () => {
	it("makes verify and export fail with an integrity code and leaves no output (property)", async () => {
		const sizes = await Promise.all(
			blobs.map(async (b) => (await readFile(b.path)).length),
		);
		await fc.assert(
			fc.asyncProperty(
				fc
					.integer({ min: 0, max: blobs.length - 1 })
					.chain((bi) =>
						fc.tuple(
							fc.constant(bi),
							fc.nat((sizes[bi] as number) - 1),
							fc.integer({ min: 1, max: 255 }),
						),
					),
				async ([bi, pos, x]) => {
					const b = blobs[bi] as (typeof blobs)[number];
					await withModifiedFile(
						b.path,
						(buf) => {
							buf[pos] = (buf[pos] as number) ^ x;
							return buf;
						},
						async () => {
							expect(INTEGRITY).toContain(await verifyCode());
							const r = await exportCode();
							expect(INTEGRITY).toContain(r.code);
							expect(r.left).toEqual([]);
						},
					);
				},
			),
			{ numRuns: 120 },
		);
		expect(await verifyCode()).toBe("ok"); // restored
	});

	it("every byte of the header, trailer and index of the upper layer is covered", async () => {
		const layer = blobs[3] as (typeof blobs)[number];
		const size = (await readFile(layer.path)).length;
		const positions = [
			...Array(HEADER_SIZE).keys(),
			...Array.from({ length: 200 }, (_, i) => size - 1 - i),
		];
		for (const pos of positions) {
			await withModifiedFile(
				layer.path,
				(buf) => {
					buf[pos] = (buf[pos] as number) ^ 0x01;
					return buf;
				},
				async () => {
					const r = await exportCode();
					expect(INTEGRITY, `byte ${pos}`).toContain(r.code);
				},
			);
		}
	});

	it("a flipped byte in a chunk shadowed by an upper layer still fails export", async () => {
		const base = blobs[2] as (typeof blobs)[number];
		const img = await openSealedImage(
			{ transport: "oci", dir: oci, tag: "v2" },
			key,
		);
		const e = img.disk.layers[0]?.extents.find(
			(x) => x.first <= 3 && x.first + x.count > 3,
		);
		const shownBy = img.disk.layerOf(3);
		await img.close();
		expect(shownBy).toBe(1); // chunk 3 comes from the upper layer
		expect(e?.storedLength).toBe(CS + TAG_SIZE); // random data: stored raw in the base
		const at =
			(e?.offset as number) +
			(3 - (e?.first as number)) * (CS + TAG_SIZE) +
			100;
		await withModifiedFile(
			base.path,
			(buf) => {
				buf[at] = (buf[at] as number) ^ 1;
				return buf;
			},
			async () => expect((await exportCode()).code).toBe("AUTH_FAILED"),
		);
	});
});

describe("moving stored bytes around", () => {
	const upper = () => blobs[3] as (typeof blobs)[number];
	const stored = CS + TAG_SIZE;

	it("swapping two chunks is detected", async () => {
		await withModifiedFile(
			upper().path,
			(buf) => {
				const a = Buffer.from(buf.subarray(HEADER_SIZE, HEADER_SIZE + stored));
				buf.copy(
					buf,
					HEADER_SIZE,
					HEADER_SIZE + stored,
					HEADER_SIZE + 2 * stored,
				);
				a.copy(buf, HEADER_SIZE + stored);
				return buf;
			},
			async () => {
				expect(await verifyCode()).toBe("DIGEST_MISMATCH");
				expect((await exportCode()).code).toBe("AUTH_FAILED");
			},
		);
	});

	it("copying a chunk over another index is detected", async () => {
		await withModifiedFile(
			upper().path,
			(buf) => {
				buf.copy(
					buf,
					HEADER_SIZE + 3 * stored,
					HEADER_SIZE,
					HEADER_SIZE + stored,
				);
				return buf;
			},
			async () => expect((await exportCode()).code).toBe("AUTH_FAILED"),
		);
	});

	it("truncating or extending a layer is detected", async () => {
		for (const cut of [1, 64, 100, 5000]) {
			await withModifiedFile(
				upper().path,
				(buf) => buf.subarray(0, buf.length - cut),
				async () => {
					expect(INTEGRITY).toContain(await verifyCode());
					expect(INTEGRITY).toContain((await exportCode()).code);
				},
			);
		}
		await withModifiedFile(
			upper().path,
			(buf) => Buffer.concat([buf, Buffer.alloc(1)]),
			async () => {
				expect(INTEGRITY).toContain((await exportCode()).code);
			},
		);
	});

	it("a missing blob is a clear layout error", async () => {
		await withModifiedFile(
			upper().path,
			(b) => b,
			async () => {
				await rm(upper().path);
				expect(await verifyCode()).toBe("LAYOUT_INVALID");
			},
		);
	});
});

describe("substituting layers", () => {
	async function otherLayerPath(): Promise<string> {
		const idx = JSON.parse(
			await readFile(join(dir, "oci-other/index.json"), "utf8"),
		);
		const m = JSON.parse(
			await readFile(
				join(dir, "oci-other/blobs/sha256", idx.manifests[0].digest.slice(7)),
				"utf8",
			),
		);
		return join(dir, "oci-other/blobs/sha256", m.layers[0].digest.slice(7));
	}

	it("a layer sealed under the same image key, put in place of another, is refused", async () => {
		const other = await readFile(await otherLayerPath());
		const upper = blobs[3] as (typeof blobs)[number];
		// same name (digest) as the real layer, other bytes: as a lazy reader would see it
		await withModifiedFile(
			upper.path,
			() => other,
			async () => {
				expect(INTEGRITY).toContain(await verifyCode());
				expect(INTEGRITY).toContain((await exportCode()).code);
			},
		);
		// with its header rewritten to claim the expected layer id: the index no longer authenticates
		const expectedId = (await readFile(upper.path)).subarray(24, 56);
		await withModifiedFile(
			upper.path,
			() => {
				const b = Buffer.from(other);
				expectedId.copy(b, 24);
				return b;
			},
			async () => expect(INTEGRITY).toContain((await exportCode()).code),
		);
	});

	it("a forged config that swaps in another layer (digests all consistent) fails the config MAC", async () => {
		const otherPath = await otherLayerPath();
		const otherBytes = await readFile(otherPath);
		const d = sha256Digest(otherBytes);
		await copyFile(otherPath, join(oci, "blobs/sha256", d.slice(7)));
		const otherCfgIdx = JSON.parse(
			await readFile(join(dir, "oci-other/index.json"), "utf8"),
		);
		const om = JSON.parse(
			await readFile(
				join(
					dir,
					"oci-other/blobs/sha256",
					otherCfgIdx.manifests[0].digest.slice(7),
				),
				"utf8",
			),
		);
		const oc = JSON.parse(
			await readFile(
				join(dir, "oci-other/blobs/sha256", om.config.digest.slice(7)),
				"utf8",
			),
		)["io.dadi.sealed"];
		const tag = await forgeConfig("v2", (config, manifest) => {
			config.layers[1] = oc.layers[0];
			manifest.layers[1] = om.layers[0];
		});
		expect(await verifyCode(tag)).toBe("AUTH_FAILED");
		expect((await exportCode(tag)).code).toBe("AUTH_FAILED");
	});

	it("reordering layers or editing any config field, with consistent digests, fails the config MAC", async () => {
		const edits: ((c: Doc, m: Doc, p: Doc) => void)[] = [
			(c, m) => {
				c.layers.reverse();
				m.layers.reverse();
			},
			(c) => {
				c.virtualSize -= 1;
				c.layers[1].virtualSize -= 1;
			},
			(c) => {
				c.layers[0].zeroChunks += 1;
			},
			(c) => {
				c.key.ref = "kbs:///evil/image-key/x";
			},
			(c) => {
				c.sealId = "00".repeat(16);
			},
			// the platform and public labels the public config shows are authenticated too
			(c, _m, p) => {
				c.platform.architecture = "arm64";
				p.architecture = "arm64";
			},
			(c, _m, p) => {
				c.publicLabels = { "org.opencontainers.image.title": "innocent" };
				p.config.Labels = c.publicLabels;
			},
		];
		for (const edit of edits) {
			const tag = await forgeConfig("v2", edit);
			expect(await verifyCode(tag)).toBe("AUTH_FAILED");
		}
	});

	it("dropping the upper layer (an older view of the image) fails the config MAC", async () => {
		const tag = await forgeConfig("v2", (c, m) => {
			c.layers.pop();
			m.layers.pop();
			c.virtualSize = c.layers[0].virtualSize;
		});
		expect(await verifyCode(tag)).toBe("AUTH_FAILED");
	});
});

describe("the public config and the manifest", () => {
	it("a public part that says anything the sealed config does not is refused (LAYOUT_INVALID)", async () => {
		const edits: ((c: Doc, m: Doc, p: Doc) => void)[] = [
			(_c, _m, p) => {
				p.architecture = "s390x";
			},
			(_c, _m, p) => {
				p.config.Env = ["PATH=/evil"];
			},
			(_c, _m, p) => {
				p.config.Entrypoint = ["/bin/sh"];
			},
			(_c, _m, p) => {
				p.config.Labels = { "a.b": "c" };
			},
			(_c, _m, p) => {
				p.created = "2024-01-01T00:00:00Z";
			},
			(_c, _m, p) => {
				p.history = [{ created_by: "x" }];
			},
			(_c, _m, p) => {
				p.rootfs.diff_ids.reverse();
			},
			(_c, _m, p) => {
				p.rootfs.diff_ids.pop();
			},
			(_c, _m, p) => {
				p.variant = "v8";
			},
			(_c, m) => {
				m.layers[0].annotations["containerd.io/snapshot/dadi.layer-index"] =
					"1/2";
			},
			(_c, m) => {
				m.layers[1].annotations["containerd.io/snapshot/dadi.sealed-layer"] =
					m.layers[0].digest;
			},
			(_c, m) => {
				m.layers[0].annotations["containerd.io/snapshot/dadi.sealed-config"] =
					`sha256:${"0".repeat(64)}`;
			},
			(_c, m) => {
				m.layers[0].annotations["io.dadi.layer.id"] = "ab".repeat(32);
			},
		];
		for (const [i, edit] of edits.entries()) {
			const tag = await forgeConfig("v2", edit, { keepPublicPart: true });
			expect(await verifyCode(tag), `edit ${i}`).toBe("LAYOUT_INVALID");
		}
	});

	it("a manifest of another format version, or without one, is not read as this one", async () => {
		const { path, json } = await manifestOf("v2");
		const orig = await readFile(path);
		const codes: string[] = [];
		for (const v of ["3", "1", undefined]) {
			const m = structuredClone(json);
			if (v === undefined) delete m.annotations;
			else m.annotations["io.dadi.format.version"] = v;
			const tag = await (async () => {
				const b = Buffer.from(JSON.stringify(m));
				const d = sha256Digest(b);
				await writeFile(join(oci, "blobs/sha256", d.slice(7)), b);
				const index = JSON.parse(
					await readFile(join(oci, "index.json"), "utf8"),
				);
				index.manifests.push({
					mediaType: "application/vnd.oci.image.manifest.v1+json",
					digest: d,
					size: b.length,
					annotations: { "org.opencontainers.image.ref.name": `fv${v}` },
				});
				await writeFile(join(oci, "index.json"), JSON.stringify(index));
				return `fv${v}`;
			})();
			codes.push(await verifyCode(tag));
		}
		expect(codes).toEqual([
			"FORMAT_UNSUPPORTED",
			"FORMAT_UNSUPPORTED",
			"INPUT_INVALID",
		]);
		expect((await readFile(path)).equals(orig)).toBe(true);
	});
});

describe("keys", () => {
	it("another image key is refused before any data is read", async () => {
		const other = (await writeKey(await tempDir())).key;
		const code = await attempt(() =>
			openSealedImage({ transport: "oci", dir: oci, tag: "v2" }, other),
		);
		expect(code).toBe("KEY_MISMATCH");
	});

	it("a key claiming the right kid but holding other bytes fails authentication", async () => {
		const other = (await writeKey(await tempDir())).key;
		const code = await attempt(() =>
			openSealedImage(
				{ transport: "oci", dir: oci, tag: "v2" },
				{ kid: key.kid, key: other.key },
			),
		);
		expect(code).toBe("AUTH_FAILED");
	});
});

describe("truncated layouts", () => {
	it("a layout without index.json or oci-layout is refused", async () => {
		await withModifiedFile(
			join(oci, "index.json"),
			(b) => b,
			async () => {
				await truncate(join(oci, "index.json"), 10);
				expect(await verifyCode()).toBe("LAYOUT_INVALID");
			},
		);
		await withModifiedFile(
			join(oci, "oci-layout"),
			(b) => b,
			async () => {
				await rm(join(oci, "oci-layout"));
				expect(await verifyCode()).toBe("INPUT_NOT_FOUND");
			},
		);
	});
});
