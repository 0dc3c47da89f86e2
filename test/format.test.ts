import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import {
	EXTENT_COMPRESSED,
	EXTENT_SIZE,
	EXTENT_ZERO,
	HEADER_SIZE,
	INDEX_NONCE_SIZE,
	TAG_SIZE,
	TRAILER_SIZE,
} from "../src/format/constants.js";
import {
	decodeExtents,
	type Extent,
	encodeExtents,
	findExtent,
} from "../src/format/extents.js";
import {
	decodeHeader,
	encodeHeader,
	type LayerHeader,
} from "../src/format/header.js";
import {
	blobSizeOf,
	decodeTrailer,
	encodeTrailer,
} from "../src/format/trailer.js";

const header: LayerHeader = {
	chunkShift: 16,
	suite: 1,
	compression: 1,
	virtualSize: 123_456_789,
	layerId: Buffer.alloc(32, 7),
};

function codeOf(fn: () => unknown): string | undefined {
	try {
		fn();
		return undefined;
	} catch (e) {
		if (!(e instanceof DadiError)) throw e; // anything else is a crash, not a clean refusal
		return e.code;
	}
}

describe("header", () => {
	it("round-trips", () => {
		const b = encodeHeader(header);
		expect(b.length).toBe(HEADER_SIZE);
		expect(decodeHeader(b)).toEqual(header);
	});

	it("refuses bad magic, unknown version, wrong size and non-zero reserved bytes", () => {
		const b = encodeHeader(header);
		const bad = (mutate: (x: Buffer) => void) => {
			const x = Buffer.from(b);
			mutate(x);
			return codeOf(() => decodeHeader(x));
		};
		expect(bad((x) => x.write("X", 0))).toBe("FORMAT_INVALID");
		expect(bad((x) => x.writeUInt16LE(2, 8))).toBe("FORMAT_UNSUPPORTED");
		expect(bad((x) => x.writeUInt16LE(65, 10))).toBe("FORMAT_INVALID");
		expect(bad((x) => x.writeUInt8(1, 15))).toBe("FORMAT_INVALID");
		expect(bad((x) => x.writeUInt8(1, 60))).toBe("FORMAT_INVALID");
		expect(bad((x) => x.writeUInt8(11, 12))).toBe("FORMAT_INVALID"); // 2 KiB chunks
		expect(bad((x) => x.writeUInt8(21, 12))).toBe("FORMAT_INVALID"); // 2 MiB chunks
		expect(bad((x) => x.writeUInt8(9, 13))).toBe("FORMAT_UNSUPPORTED"); // suite
		expect(bad((x) => x.writeUInt8(9, 14))).toBe("FORMAT_UNSUPPORTED"); // codec
		expect(bad((x) => x.writeBigUInt64LE(0n, 16))).toBe("FORMAT_INVALID");
		expect(codeOf(() => decodeHeader(b.subarray(0, 63)))).toBe(
			"FORMAT_INVALID",
		);
	});

	it("never crashes on arbitrary bytes (property)", () => {
		fc.assert(
			fc.property(fc.uint8Array({ minLength: 0, maxLength: 80 }), (bytes) => {
				codeOf(() => decodeHeader(Buffer.from(bytes)));
			}),
			{ numRuns: 2000 },
		);
	});

	it("any single-byte change of a valid header is refused or changes the decoded fields (property)", () => {
		const b = encodeHeader(header);
		fc.assert(
			fc.property(
				fc.integer({ min: 0, max: HEADER_SIZE - 1 }),
				fc.integer({ min: 1, max: 255 }),
				(pos, x) => {
					const m = Buffer.from(b);
					m[pos] = (m[pos] as number) ^ x;
					const code = codeOf(() => decodeHeader(m));
					if (code === undefined) expect(decodeHeader(m)).not.toEqual(header);
				},
			),
			{ numRuns: 1000 },
		);
	});
});

describe("trailer", () => {
	const t = { dataLength: 1_000_000, extentCount: 17 };
	const size = blobSizeOf(t);

	it("round-trips and agrees with the blob size", () => {
		const b = encodeTrailer(t);
		expect(b.length).toBe(TRAILER_SIZE);
		expect(decodeTrailer(b, size)).toEqual(t);
		expect(size).toBe(
			HEADER_SIZE +
				t.dataLength +
				INDEX_NONCE_SIZE +
				t.extentCount * EXTENT_SIZE +
				TAG_SIZE +
				TRAILER_SIZE,
		);
	});

	it("refuses a blob that is truncated or extended", () => {
		const b = encodeTrailer(t);
		expect(codeOf(() => decodeTrailer(b, size - 1))).toBe("FORMAT_INVALID");
		expect(codeOf(() => decodeTrailer(b, size + 1))).toBe("FORMAT_INVALID");
	});

	it("every single-byte change is refused (property)", () => {
		const b = encodeTrailer(t);
		fc.assert(
			fc.property(
				fc.integer({ min: 0, max: TRAILER_SIZE - 1 }),
				fc.integer({ min: 1, max: 255 }),
				(pos, x) => {
					const m = Buffer.from(b);
					m[pos] = (m[pos] as number) ^ x;
					expect(codeOf(() => decodeTrailer(m, size))).toMatch(/^FORMAT_/);
				},
			),
			{ numRuns: 1000 },
		);
	});

	it("never crashes on arbitrary bytes (property)", () => {
		fc.assert(
			fc.property(
				fc.uint8Array({ minLength: 64, maxLength: 64 }),
				fc.nat(),
				(bytes, size) => {
					codeOf(() => decodeTrailer(Buffer.from(bytes), size));
				},
			),
			{ numRuns: 2000 },
		);
	});
});

const CS = 4096;
const FULL = CS + TAG_SIZE;

/** Builds a valid index from a per-chunk plan: 'd' data, 'c' compressed (len), 'z' zero, '.' hole. */
function buildExtents(plan: { kind: "d" | "c" | "z" | "."; len?: number }[]): {
	extents: Extent[];
	dataLength: number;
} {
	const extents: Extent[] = [];
	let offset = HEADER_SIZE;
	plan.forEach((p, chunk) => {
		if (p.kind === ".") return;
		const flags =
			p.kind === "z" ? EXTENT_ZERO : p.kind === "c" ? EXTENT_COMPRESSED : 0;
		const storedLength =
			p.kind === "z" ? 0 : p.kind === "c" ? (p.len as number) : FULL;
		const last = extents[extents.length - 1];
		if (
			last &&
			last.first + last.count === chunk &&
			last.flags === flags &&
			last.storedLength === storedLength
		)
			last.count++;
		else
			extents.push({
				first: chunk,
				count: 1,
				offset: p.kind === "z" ? 0 : offset,
				storedLength,
				flags,
			});
		offset += storedLength;
	});
	return { extents, dataLength: offset - HEADER_SIZE };
}

const planArb = fc.array(
	fc.oneof(
		fc.constant({ kind: "d" as const }),
		fc.record({
			kind: fc.constant("c" as const),
			len: fc.integer({ min: TAG_SIZE + 1, max: FULL - 1 }),
		}),
		fc.constant({ kind: "z" as const }),
		fc.constant({ kind: "." as const }),
	),
	{ minLength: 1, maxLength: 60 },
);

describe("index extents", () => {
	it("valid indexes round-trip and every chunk is found by binary search (property)", () => {
		fc.assert(
			fc.property(planArb, (plan) => {
				const { extents, dataLength } = buildExtents(plan);
				const limits = {
					chunkCount: plan.length,
					chunkSize: CS,
					dataLength,
					compressionAllowed: true,
				};
				const decoded = decodeExtents(encodeExtents(extents), limits);
				expect(decoded).toEqual(extents);
				plan.forEach((p, chunk) => {
					const e = findExtent(decoded, chunk);
					if (p.kind === ".") expect(e).toBeUndefined();
					else
						expect(e?.flags).toBe(
							p.kind === "z"
								? EXTENT_ZERO
								: p.kind === "c"
									? EXTENT_COMPRESSED
									: 0,
						);
				});
			}),
			{ numRuns: 500 },
		);
	});

	it("refuses overlap, disorder, gaps in the data area, impossible lengths and unknown flags", () => {
		const { extents, dataLength } = buildExtents([
			{ kind: "d" },
			{ kind: "z" },
			{ kind: "d" },
			{ kind: "." },
			{ kind: "d" },
		]);
		const limits = {
			chunkCount: 5,
			chunkSize: CS,
			dataLength,
			compressionAllowed: false,
		};
		const bad = (mutate: (e: Extent[]) => void, l = limits) => {
			const copy = extents.map((e) => ({ ...e }));
			mutate(copy);
			return codeOf(() => decodeExtents(encodeExtents(copy), l));
		};
		expect(bad(() => {})).toBeUndefined();
		expect(bad((e) => ((e[1] as Extent).first = 0))).toBe("FORMAT_INVALID"); // overlap
		expect(bad((e) => e.reverse())).toBe("FORMAT_INVALID"); // order
		expect(bad((e) => ((e[0] as Extent).offset += 1))).toBe("FORMAT_INVALID"); // not tiling
		expect(bad((e) => ((e[0] as Extent).storedLength = CS))).toBe(
			"FORMAT_INVALID",
		);
		expect(bad((e) => ((e[0] as Extent).flags = 0x80))).toBe("FORMAT_INVALID");
		expect(bad((e) => ((e[0] as Extent).flags = EXTENT_COMPRESSED))).toBe(
			"FORMAT_INVALID",
		); // no codec
		expect(bad((e) => ((e[1] as Extent).offset = 5))).toBe("FORMAT_INVALID"); // zero extent with offset
		expect(bad((e) => ((e[0] as Extent).count = 0))).toBe("FORMAT_INVALID");
		expect(bad((e) => ((e[2] as Extent).count = 9))).toBe("FORMAT_INVALID"); // past the disk
		expect(bad(() => {}, { ...limits, dataLength: dataLength + 1 })).toBe(
			"FORMAT_INVALID",
		); // stray data
		const raw = encodeExtents(extents);
		raw.writeUInt16LE(1, 22);
		expect(codeOf(() => decodeExtents(raw, limits))).toBe("FORMAT_INVALID"); // reserved
		expect(codeOf(() => decodeExtents(raw.subarray(1), limits))).toBe(
			"FORMAT_INVALID",
		);
	});

	it("never crashes on arbitrary bytes (property)", () => {
		fc.assert(
			fc.property(
				fc.uint8Array({ maxLength: 24 * 8 }),
				fc.integer({ min: 1, max: 100 }),
				fc.nat(2_000_000),
				(bytes, chunkCount, dataLength) => {
					codeOf(() =>
						decodeExtents(Buffer.from(bytes), {
							chunkCount,
							chunkSize: CS,
							dataLength,
							compressionAllowed: true,
						}),
					);
				},
			),
			{ numRuns: 2000 },
		);
	});
});
