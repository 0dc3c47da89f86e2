/**
 * The encrypted records of a sealed config (format v2 §5.11): padding that hides a record's length
 * (Padmé), the AAD that keeps image configs and seal parameters apart and bound to their seal, and
 * the seal-parameter parser. Parsers of (authenticated, but still checked) bytes get properties.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { openRecord, sealRecord } from "../src/crypto/config-auth.js";
import { pad, paddedLength, padme, unpad } from "../src/crypto/padding.js";
import { DadiError } from "../src/errors.js";
import {
	decodeSealParams,
	encodeSealParams,
	type SealParams,
} from "../src/seal/seal-params.js";

function codeOf(fn: () => unknown): string {
	try {
		fn();
		return "ok";
	} catch (e) {
		if (e instanceof DadiError) return e.code;
		throw e;
	}
}

const key = Buffer.alloc(32, 0x42);
const sealId = "ab".repeat(16);

describe("padding", () => {
	it("Padmé: never shorter, at most 12 % longer, monotone (property)", () => {
		fc.assert(
			fc.property(fc.integer({ min: 2, max: 1 << 26 }), (n) => {
				const p = padme(n);
				expect(p).toBeGreaterThanOrEqual(n);
				expect(p / n).toBeLessThanOrEqual(1.12);
				expect(padme(n + 1)).toBeGreaterThanOrEqual(p);
				expect(padme(p)).toBe(p);
			}),
			{ numRuns: 3000 },
		);
		expect([100, 1000, 4000, 4300, 5000].map(padme)).toEqual([
			104, 1024, 4096, 4352, 5120,
		]);
	});

	it("configs of nearby lengths pad to the same length", () => {
		const lengths = new Set<number>();
		for (let n = 3840; n < 3964; n++) lengths.add(paddedLength(n));
		expect(lengths.size).toBe(1);
		expect(paddedLength(0)).toBe(512);
	});

	it("round-trips, and refuses any padding that is not exactly right (property)", () => {
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 3000 }), (b) => {
				const p = pad(Buffer.from(b));
				expect(p.length).toBe(paddedLength(b.length));
				expect(unpad(p, "r").equals(Buffer.from(b))).toBe(true);
				const longer = Buffer.concat([p, Buffer.alloc(1)]);
				expect(codeOf(() => unpad(longer, "r"))).toBe("FORMAT_INVALID");
				if (p.length > 4 + b.length) {
					const dirty = Buffer.from(p);
					dirty[dirty.length - 1] = 1;
					expect(codeOf(() => unpad(dirty, "r"))).toBe("FORMAT_INVALID");
				}
			}),
			{ numRuns: 500 },
		);
	});

	it("never crashes on arbitrary bytes (property)", () => {
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 700 }), (b) => {
				expect(codeOf(() => unpad(Buffer.from(b), "r"))).toMatch(
					/^(ok|FORMAT_INVALID)$/,
				);
			}),
			{ numRuns: 2000 },
		);
	});
});

describe("sealed records", () => {
	it("are deterministic, padded, and open only as the kind and seal they were sealed for", () => {
		const plain = Buffer.from('{"config":{"Env":["DB_PIN=4711"]}}');
		const a = sealRecord(key, "image-config", sealId, plain);
		expect(sealRecord(key, "image-config", sealId, plain)).toBe(a);
		expect(Buffer.from(a, "base64url").length).toBe(12 + 512 + 16);
		expect(openRecord(key, "image-config", sealId, a).equals(plain)).toBe(true);
		expect(codeOf(() => openRecord(key, "seal-params", sealId, a))).toBe(
			"AUTH_FAILED",
		);
		expect(
			codeOf(() => openRecord(key, "image-config", "cd".repeat(16), a)),
		).toBe("AUTH_FAILED");
		expect(
			codeOf(() => openRecord(Buffer.alloc(32, 1), "image-config", sealId, a)),
		).toBe("AUTH_FAILED");
		// one other seal id: another ciphertext (nothing links two seals of one config)
		expect(sealRecord(key, "image-config", "cd".repeat(16), plain)).not.toBe(a);
	});

	it("the length of the ciphertext does not tell 'DB_PIN=7' from 'DB_PIN=4711000'", () => {
		const len = (v: string) =>
			sealRecord(key, "image-config", sealId, Buffer.from(`{"Env":["${v}"]}`))
				.length;
		expect(len("DB_PIN=7")).toBe(len("DB_PIN=4711000"));
	});

	it("any flipped bit of a record fails (property)", () => {
		const a = Buffer.from(
			sealRecord(key, "seal-params", sealId, Buffer.from("{}")),
			"base64url",
		);
		fc.assert(
			fc.property(fc.integer({ min: 0, max: a.length * 8 - 1 }), (bit) => {
				const b = Buffer.from(a);
				b[bit >> 3] = (b[bit >> 3] as number) ^ (1 << (bit & 7));
				expect(
					codeOf(() =>
						openRecord(key, "seal-params", sealId, b.toString("base64url")),
					),
				).toBe("AUTH_FAILED");
			}),
			{ numRuns: 300 },
		);
	});
});

describe("seal parameters", () => {
	const params: SealParams = {
		fs: {
			uuid: "01234567-89ab-4cde-8f01-23456789abcd",
			timestamp: 1714564800,
			sizeBytes: 41943040,
			inodes: 1088,
		},
		layers: [[`sha256:${"a".repeat(64)}`], [], [`sha256:${"b".repeat(64)}`]],
	};

	it("round-trip, and must list every layer", () => {
		expect(decodeSealParams(encodeSealParams(params), 3)).toEqual(params);
		expect(codeOf(() => decodeSealParams(encodeSealParams(params), 2))).toBe(
			"FORMAT_INVALID",
		);
	});

	it("never crash on arbitrary JSON or bytes (property)", () => {
		fc.assert(
			fc.property(fc.jsonValue(), fc.nat(4), (v, n) => {
				expect(
					codeOf(() =>
						decodeSealParams(Buffer.from(JSON.stringify(v) ?? ""), n),
					),
				).toMatch(/^(ok|FORMAT_INVALID)$/);
			}),
			{ numRuns: 2000 },
		);
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 200 }), (b) => {
				expect(codeOf(() => decodeSealParams(Buffer.from(b), 1))).toMatch(
					/^(ok|FORMAT_INVALID)$/,
				);
			}),
			{ numRuns: 1000 },
		);
	});
});
