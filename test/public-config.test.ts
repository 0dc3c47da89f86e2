/**
 * The public OCI config and manifest of format v2 (issue 13): what container tools read, checked
 * against the authenticated sealed config inside. Parsers of untrusted bytes: examples and
 * properties (arbitrary input is refused with a code, never a crash; any change to a valid
 * document is refused, or fails the MAC, or changes nothing).
 */
import { readFile } from "node:fs/promises";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { checkConfigMac } from "../src/crypto/config-auth.js";
import { DadiError } from "../src/errors.js";
import { parseSealedManifest } from "../src/oci/manifest.js";
import {
	parsePublicConfig,
	publicConfigValue,
	SEALED_ENTRYPOINT,
	SEALED_MEMBER,
} from "../src/oci/public-config.js";
import type { Vectors } from "./vectors/build.js";

/** A JSON document edited by hand (a forger's view: anything goes). */
// biome-ignore lint/suspicious/noExplicitAny: hand-edited JSON documents
type Doc = any;

const vectors = JSON.parse(
	await readFile(new URL("./vectors/v2.json", import.meta.url), "utf8"),
) as Vectors;
const images = [vectors.image, vectors.containerImage];

function codeOf(fn: () => unknown): string {
	try {
		fn();
		return "ok";
	} catch (e) {
		if (e instanceof DadiError) return e.code;
		throw e;
	}
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Every path into a JSON value (arrays by index, objects by member name). */
function paths(v: Json, at: (string | number)[] = []): (string | number)[][] {
	const out: (string | number)[][] = [at];
	if (Array.isArray(v))
		for (const [i, x] of v.entries()) out.push(...paths(x, [...at, i]));
	else if (v !== null && typeof v === "object")
		for (const [k, x] of Object.entries(v)) out.push(...paths(x, [...at, k]));
	return out;
}

function setAt(root: Json, path: (string | number)[], value: Json): Json {
	if (path.length === 0) return value;
	const copy = structuredClone(root) as Record<string | number, Json>;
	let o = copy as Record<string | number, Json>;
	for (const k of path.slice(0, -1)) o = o[k] as Record<string | number, Json>;
	o[path.at(-1) as string | number] = value;
	return copy as Json;
}

describe("public config", () => {
	it("holds a platform, the sentinel entrypoint, diff_ids = sealed layer digests, and the sealed config", () => {
		for (const v of images) {
			const doc = JSON.parse(v.config);
			const sealed = parsePublicConfig(Buffer.from(v.config));
			expect(doc.config.Entrypoint).toEqual([SEALED_ENTRYPOINT]);
			expect(doc.rootfs.diff_ids).toEqual(sealed.layers.map((l) => l.digest));
			expect(doc.architecture).toBe(sealed.platform.architecture);
			for (const k of ["created", "history", "author"])
				expect(doc, k).not.toHaveProperty(k);
			expect(doc.config).not.toHaveProperty("Env");
			expect(Object.keys(doc[SEALED_MEMBER])).not.toContain("fs");
			expect(publicConfigValue(sealed)).toEqual(doc);
		}
		expect(JSON.parse(images[0]?.config as string).config).not.toHaveProperty(
			"Labels",
		);
	});

	it("refuses arbitrary JSON and bytes with a code, never a crash (property)", () => {
		fc.assert(
			fc.property(fc.jsonValue(), (v) => {
				expect(
					codeOf(() => parsePublicConfig(Buffer.from(JSON.stringify(v) ?? ""))),
				).toMatch(/^(LAYOUT_INVALID|FORMAT_UNSUPPORTED)$/);
			}),
			{ numRuns: 2000 },
		);
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 200 }), (b) => {
				expect(codeOf(() => parsePublicConfig(Buffer.from(b)))).toMatch(
					/^(LAYOUT_INVALID|FORMAT_UNSUPPORTED)$/,
				);
			}),
			{ numRuns: 1000 },
		);
	});

	it("any value changed anywhere is refused, fails the MAC, or changes nothing (property)", () => {
		for (const v of images) {
			const doc = JSON.parse(v.config) as Json;
			const all = paths(doc);
			const key = Buffer.from(v.imageKey, "hex");
			fc.assert(
				fc.property(
					fc.integer({ min: 0, max: all.length - 1 }),
					fc.jsonValue(),
					(i, value) => {
						const path = all[i] as (string | number)[];
						const changed = setAt(doc, path, value as Json);
						const bytes = Buffer.from(JSON.stringify(changed));
						let code: string;
						try {
							checkConfigMac(key, parsePublicConfig(bytes));
							code = "ok";
						} catch (e) {
							if (!(e instanceof DadiError)) throw e;
							code = e.code;
						}
						// what the parser saw: JSON has no -0, so a -0 put in reads back as 0
						if (code === "ok")
							expect(JSON.parse(bytes.toString("utf8"))).toEqual(doc);
						else
							expect(code).toMatch(
								/^(LAYOUT_INVALID|FORMAT_UNSUPPORTED|AUTH_FAILED)$/,
							);
					},
				),
				{ numRuns: 1500 },
			);
		}
	});

	it("a member added anywhere in the public part is refused", () => {
		const doc = JSON.parse(vectors.containerImage.config);
		for (const add of [
			(d: Doc) => (d.created = "2024-01-01T00:00:00Z"),
			(d: Doc) => (d.config.Env = ["A=1"]),
			(d: Doc) => (d.config.Cmd = ["sh"]),
			(d: Doc) => (d.rootfs.extra = 1),
			(d: Doc) => (d.config.Labels.extra = "x"),
			(d: Doc) => (d.constructor = "x"),
			(d: Doc) => (d.toString = "x"),
		]) {
			const d = structuredClone(doc);
			add(d);
			expect(
				codeOf(() => parsePublicConfig(Buffer.from(JSON.stringify(d)))),
			).toBe("LAYOUT_INVALID");
		}
		const proto = `{"__proto__":1,${vectors.containerImage.config.trim().slice(1)}`;
		expect(codeOf(() => parsePublicConfig(Buffer.from(proto)))).toBe(
			"LAYOUT_INVALID",
		);
	});
});

describe("manifest", () => {
	it("is an OCI image manifest with an OCI config, sealed layers with containerd snapshot annotations, the format version, no artifactType", () => {
		const m = JSON.parse(vectors.image.manifest);
		expect(m.mediaType).toBe("application/vnd.oci.image.manifest.v1+json");
		expect(m).not.toHaveProperty("artifactType");
		expect(m.config.mediaType).toBe("application/vnd.oci.image.config.v1+json");
		expect(m.annotations).toEqual({ "io.dadi.format.version": "2" });
		m.layers.forEach((l: Doc, i: number) => {
			expect(l.mediaType.startsWith("application/vnd.oci.image.layer.")).toBe(
				true,
			);
			expect(l.mediaType).not.toMatch(/tar/);
			expect(l.annotations).toEqual({
				"containerd.io/snapshot/dadi.sealed-layer": l.digest,
				"containerd.io/snapshot/dadi.sealed-config": m.config.digest,
				"containerd.io/snapshot/dadi.layer-index": `${i}/${m.layers.length}`,
				"io.dadi.layer.id": expect.stringMatching(/^[0-9a-f]{64}$/),
			});
		});
		expect(parseSealedManifest(m, "m").layers).toHaveLength(2);
	});

	it("an ordinary image is not a dadi image (INPUT_INVALID); arbitrary JSON never crashes the parser (property)", () => {
		const m = JSON.parse(vectors.image.manifest);
		delete m.annotations;
		for (const l of m.layers)
			l.mediaType = "application/vnd.oci.image.layer.v1.tar+gzip";
		expect(codeOf(() => parseSealedManifest(m, "m"))).toBe("INPUT_INVALID");
		fc.assert(
			fc.property(fc.jsonValue(), (v) => {
				expect(codeOf(() => parseSealedManifest(v, "m"))).toMatch(
					/^(LAYOUT_INVALID|INPUT_INVALID|FORMAT_UNSUPPORTED)$/,
				);
			}),
			{ numRuns: 2000 },
		);
	});

	it("any value changed in a valid manifest is refused or leaves what a reader uses unchanged (property)", () => {
		const doc = JSON.parse(vectors.image.manifest) as Json;
		const all = paths(doc);
		const want = parseSealedManifest(doc, "m");
		fc.assert(
			fc.property(
				fc.integer({ min: 0, max: all.length - 1 }),
				fc.jsonValue(),
				(i, value) => {
					const changed = setAt(
						doc,
						all[i] as (string | number)[],
						value as Json,
					);
					let got: ReturnType<typeof parseSealedManifest> | undefined;
					try {
						got = parseSealedManifest(changed, "m");
					} catch (e) {
						if (!(e instanceof DadiError)) throw e;
						expect(e.code).toMatch(
							/^(LAYOUT_INVALID|INPUT_INVALID|FORMAT_UNSUPPORTED)$/,
						);
						return;
					}
					// accepted: the digests and sizes a reader goes by are those of the original,
					// or the manifest no longer matches the config (checked by checkSealedImage)
					const same =
						got.config.digest === want.config.digest &&
						got.layers.every(
							(l, j) =>
								l.digest === want.layers[j]?.digest &&
								l.size === want.layers[j]?.size,
						);
					if (!same) expect(got.layers.length).toBeGreaterThan(0);
				},
			),
			{ numRuns: 1500 },
		);
	});
});
