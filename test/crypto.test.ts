import { randomBytes } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
	generateImageKey,
	parseImageKey,
	thumbprint,
	toJwk,
} from "../src/crypto/image-key.js";
import { unwrapLayerKey, wrapLayerKey } from "../src/crypto/keywrap.js";
import { LayerCipher } from "../src/crypto/layer-cipher.js";
import { sivOpen, sivSeal } from "../src/crypto/siv.js";
import { DadiError } from "../src/errors.js";
import { EXTENT_COMPRESSED } from "../src/format/constants.js";

const code = (fn: () => unknown) => {
	try {
		fn();
		return "ok";
	} catch (e) {
		return e instanceof DadiError ? e.code : `crash: ${String(e)}`;
	}
};

describe("chunk AEAD", () => {
	const key = randomBytes(32);
	const id = randomBytes(32);
	const c = new LayerCipher(key, id, 4096);
	const plain = randomBytes(4096);
	const stored = c.sealChunk(5, plain, 0);

	it("round-trips", () => {
		expect(stored.length).toBe(4096 + 16);
		expect(c.openChunk(5, stored, 0)).toEqual(plain);
	});

	it("is bound to chunk index, flags, layer id, layer key and chunk size", () => {
		expect(code(() => c.openChunk(6, stored, 0))).toBe("AUTH_FAILED");
		expect(code(() => c.openChunk(5, stored, EXTENT_COMPRESSED))).toBe(
			"AUTH_FAILED",
		);
		expect(
			code(() =>
				new LayerCipher(key, randomBytes(32), 4096).openChunk(5, stored, 0),
			),
		).toBe("AUTH_FAILED");
		expect(
			code(() =>
				new LayerCipher(randomBytes(32), id, 4096).openChunk(5, stored, 0),
			),
		).toBe("AUTH_FAILED");
		expect(
			code(() => new LayerCipher(key, id, 8192).openChunk(5, stored, 0)),
		).toBe("AUTH_FAILED");
		expect(code(() => c.openChunk(5, stored.subarray(0, 10), 0))).toBe(
			"AUTH_FAILED",
		);
		expect(code(() => c.openChunk(5, stored.subarray(0, 4100), 0))).toBe(
			"AUTH_FAILED",
		);
	});

	it("refuses any single flipped bit (property)", () => {
		fc.assert(
			fc.property(
				fc.integer({ min: 0, max: stored.length - 1 }),
				fc.integer({ min: 0, max: 7 }),
				(pos, bit) => {
					const m = Buffer.from(stored);
					m[pos] = (m[pos] as number) ^ (1 << bit);
					expect(code(() => c.openChunk(5, m, 0))).toBe("AUTH_FAILED");
				},
			),
			{ numRuns: 300 },
		);
	});

	it("error messages say nothing about why", () => {
		try {
			c.openChunk(6, stored, 0);
		} catch (e) {
			expect((e as Error).message).not.toMatch(/tag|nonce|index 5|aad/i);
		}
	});

	it("the index is authenticated with its header and trailer", () => {
		const aad = randomBytes(128);
		const sealed = c.sealIndex(Buffer.from("index bytes"), aad);
		expect(c.openIndex(sealed, aad).toString()).toBe("index bytes");
		const aad2 = Buffer.from(aad);
		aad2[100] = (aad2[100] as number) ^ 1;
		expect(code(() => c.openIndex(sealed, aad2))).toBe("AUTH_FAILED");
	});
});

describe("layer key wrap", () => {
	it("round-trips, is deterministic, and is bound to the image key and the layer id", () => {
		const img = randomBytes(32);
		const id = randomBytes(32);
		const lk = randomBytes(32);
		const w = wrapLayerKey(img, id, lk);
		expect(w.length).toBe(40);
		expect(wrapLayerKey(img, id, lk)).toEqual(w);
		expect(unwrapLayerKey(img, id, w)).toEqual(lk);
		expect(code(() => unwrapLayerKey(randomBytes(32), id, w))).toBe(
			"AUTH_FAILED",
		);
		expect(code(() => unwrapLayerKey(img, randomBytes(32), w))).toBe(
			"AUTH_FAILED",
		);
		const bad = Buffer.from(w);
		bad[39] = (bad[39] as number) ^ 1;
		expect(code(() => unwrapLayerKey(img, id, bad))).toBe("AUTH_FAILED");
		expect(code(() => unwrapLayerKey(img, id, w.subarray(0, 32)))).toBe(
			"AUTH_FAILED",
		);
	});
});

describe("SIV record encryption", () => {
	it("is deterministic, authenticated and fails closed", () => {
		const k1 = randomBytes(32);
		const k2 = randomBytes(32);
		const aad = Buffer.from("aad");
		const s = sivSeal(k1, k2, aad, Buffer.from("config"));
		expect(sivSeal(k1, k2, aad, Buffer.from("config"))).toEqual(s);
		expect(sivSeal(k1, k2, aad, Buffer.from("config2"))).not.toEqual(s);
		expect(sivOpen(k1, k2, aad, s, "x").toString()).toBe("config");
		expect(code(() => sivOpen(k1, k2, Buffer.from("other"), s, "x"))).toBe(
			"AUTH_FAILED",
		);
		expect(code(() => sivOpen(k2, k1, aad, s, "x"))).toBe("AUTH_FAILED");
		expect(code(() => sivOpen(k1, k2, aad, s.subarray(0, 20), "x"))).toBe(
			"AUTH_FAILED",
		);
	});
});

describe("image key files", () => {
	it("round-trips a generated key; kid is the RFC 7638 thumbprint", () => {
		const k = generateImageKey();
		const parsed = parseImageKey(JSON.stringify(toJwk(k)), "k.jwk");
		expect(parsed.key).toEqual(k.key);
		expect(parsed.kid).toBe(thumbprint(k.key));
	});

	it("RFC 7638 thumbprint matches a known value", () => {
		// {"k":"AAAA...","kty":"oct"} with 32 zero bytes, hashed with SHA-256, computed independently with openssl
		expect(thumbprint(Buffer.alloc(32))).toBe(
			"9nnxVaRYos6pwySYZALWRL64fgG5CMX9No3tAqd5urU",
		);
	});

	it("refuses malformed key files without echoing key material", () => {
		const k = toJwk(generateImageKey());
		const bad = [
			"not json",
			"[]",
			JSON.stringify({ ...k, kty: "RSA" }),
			JSON.stringify({ ...k, k: "short" }),
			JSON.stringify({ ...k, k: 5 }),
			JSON.stringify({ ...k, kid: "wrong" }),
			JSON.stringify({ ...k, k: `${k.k}!` }),
		];
		for (const text of bad) {
			try {
				parseImageKey(text, "k.jwk");
				expect.unreachable(text);
			} catch (e) {
				expect((e as DadiError).code).toBe("KEY_INVALID");
				expect((e as Error).message).not.toContain(k.k);
			}
		}
	});

	it("never crashes on arbitrary text (property)", () => {
		fc.assert(
			fc.property(fc.oneof(fc.string(), fc.json()), (t) => {
				expect(code(() => parseImageKey(t, "k"))).toMatch(/^(ok|KEY_INVALID)$/);
			}),
			{ numRuns: 1000 },
		);
	});
});
