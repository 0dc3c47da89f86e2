/**
 * Canonical base64url (issue 14): every base64url field of a sealed config, and an image key file's
 * "k", has exactly one accepted spelling. Before, the config MAC's 43 characters carried two unused
 * bits, so four different config documents (four digests) authenticated as the same image.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkConfigMac } from "../src/crypto/config-auth.js";
import { parseImageKey } from "../src/crypto/image-key.js";
import { DadiError } from "../src/errors.js";
import {
	decodeCanonicalBase64url,
	isCanonicalBase64url,
} from "../src/oci/base64url.js";
import { parseSealedConfig } from "../src/oci/sealed-config.js";
import {
	cleanupTempDirs,
	prng,
	sealInto,
	tempDir,
	writeDisk,
	writeKey,
} from "./helpers.js";

/** A JSON document edited by hand (a forger's view: anything goes). */
// biome-ignore lint/suspicious/noExplicitAny: hand-edited JSON documents
type Doc = any;

const ALPHABET =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/** The other spellings of `text`: its last character with different unused low bits. */
function respellings(text: string): string[] {
	const bytes = Buffer.from(text, "base64url").length;
	const unused = text.length * 6 - bytes * 8;
	const last = ALPHABET.indexOf(text.at(-1) as string);
	const out: string[] = [];
	for (let k = 1; k < 1 << unused; k++)
		out.push(text.slice(0, -1) + ALPHABET[last ^ k]);
	return out;
}

function codeOf(fn: () => unknown): string {
	try {
		fn();
		return "ok";
	} catch (e) {
		if (e instanceof DadiError) return e.code;
		throw e;
	}
}

describe("canonical base64url", () => {
	it("accepts exactly what the encoder writes (property)", () => {
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 80 }), (b) => {
				const text = Buffer.from(b).toString("base64url");
				expect(decodeCanonicalBase64url(text)?.equals(Buffer.from(b))).toBe(
					true,
				);
				for (const other of respellings(text))
					expect(isCanonicalBase64url(other), other).toBe(false);
				expect(isCanonicalBase64url(`${text}=`)).toBe(false);
			}),
			{ numRuns: 1000 },
		);
	});

	it("never throws, and whatever it accepts re-encodes to the same text (property)", () => {
		fc.assert(
			fc.property(fc.string({ maxLength: 60 }), (t) => {
				const b = decodeCanonicalBase64url(t);
				if (b !== undefined) expect(b.toString("base64url")).toBe(t);
			}),
			{ numRuns: 3000 },
		);
		for (const bad of ["A", "AB=", "A+B/", "ab cd", "AAA.", "QQ==", "QR"])
			expect(isCanonicalBase64url(bad), bad).toBe(false);
		expect(isCanonicalBase64url("QQ")).toBe(true);
		expect(isCanonicalBase64url("QQ", 2)).toBe(false);
	});
});

describe("sealed config fields", () => {
	let config: Record<string, Doc>;
	let imageKey: Buffer;
	let keyText: string;

	beforeAll(async () => {
		const dir = await tempDir();
		const k = await writeKey(dir);
		imageKey = k.key.key;
		keyText = await readFile(k.path, "utf8");
		await writeDisk(join(dir, "d.img"), 40_000, [
			{ at: 0, bytes: prng("d", 40_000) },
		]);
		const r = await sealInto(join(dir, "d.img"), join(dir, "oci"), "t", k.key, {
			imageConfig: Buffer.from('{"config":{"Env":["A=1"]}}'),
		});
		config = JSON.parse(JSON.stringify(r.config));
	});
	afterAll(cleanupTempDirs);

	it("the image as sealed parses and authenticates", () => {
		checkConfigMac(imageKey, parseSealedConfig(config));
	});

	it("a re-spelled MAC, kid, wrapped key or image config is refused before anything is trusted", () => {
		const fields: [string, (c: Doc) => string, (c: Doc, v: string) => void][] =
			[
				["mac", (c) => c.mac, (c, v) => (c.mac = v)],
				["kid", (c) => c.key.kid, (c, v) => (c.key.kid = v)],
				[
					"wrappedKey",
					(c) => c.layers[0].wrappedKey,
					(c, v) => (c.layers[0].wrappedKey = v),
				],
				["imageConfig", (c) => c.imageConfig, (c, v) => (c.imageConfig = v)],
			];
		for (const [name, get, set] of fields) {
			const spellings = respellings(get(config));
			if (name !== "imageConfig")
				expect(spellings.length, name).toBeGreaterThan(0);
			for (const s of spellings) {
				const c = structuredClone(config);
				set(c, s);
				expect(
					codeOf(() => parseSealedConfig(c)),
					`${name} ${s}`,
				).toBe("LAYOUT_INVALID");
			}
		}
	});

	it("the MAC check itself refuses a re-spelled MAC (it does not rely on the parser)", () => {
		const parsed = parseSealedConfig(config);
		for (const s of respellings(parsed.mac))
			expect(
				codeOf(() => checkConfigMac(imageKey, { ...parsed, mac: s })),
			).toBe("AUTH_FAILED");
	});

	it("an image key file's k is refused in any other spelling", async () => {
		const jwk = JSON.parse(keyText);
		for (const s of respellings(jwk.k))
			expect(
				codeOf(() => parseImageKey(JSON.stringify({ ...jwk, k: s }), "k.jwk")),
			).toBe("KEY_INVALID");
		expect(codeOf(() => parseImageKey(keyText, "k.jwk"))).toBe("ok");
	});
});
