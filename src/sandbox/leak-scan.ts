/**
 * Looking for secrets in bytes (pure): plaintext markers planted in an image and an image key in
 * every encoding it could be written in. Compression would hide a marker from a plain byte search,
 * so every gzip member found anywhere in the bytes (an OCI layer in registry storage, a layer
 * blob crossing the network) is inflated — up to a bound — and searched too, recursively once.
 */
import { inflateRawSync, constants as zc } from "node:zlib";

export interface Needle {
	/** What it is, for the report ("marker 2", "image key (base64url)"). */
	name: string;
	bytes: Buffer;
}

export interface Hit {
	needle: string;
	/** Where: "raw" or "gzip@OFFSET" (inside the member starting there). */
	where: string;
}

/** The encodings an image key could appear in: raw bytes, hex (both cases), base64, base64url. */
export function keyNeedles(key: Buffer, what = "image key"): Needle[] {
	const hex = key.toString("hex");
	return [
		{ name: `${what} (raw)`, bytes: key },
		{ name: `${what} (hex)`, bytes: Buffer.from(hex) },
		{ name: `${what} (HEX)`, bytes: Buffer.from(hex.toUpperCase()) },
		// Without padding: a key inside a longer base64 text keeps its inner characters only when
		// it starts on a 3-byte boundary; the trimmed forms below catch the other two alignments.
		...base64Forms(key).map((b, i) => ({
			name: `${what} (base64 form ${i})`,
			bytes: Buffer.from(b),
		})),
	];
}

/**
 * base64 and base64url texts that any encoding of `key` must contain, at each of the three
 * alignments it can have inside a longer encoded text (the edges depend on neighbouring bytes).
 */
function base64Forms(key: Buffer): string[] {
	const out = new Set<string>();
	for (let shift = 0; shift < 3; shift++) {
		const padded = Buffer.concat([Buffer.alloc(shift), key]);
		const b64 = padded.toString("base64").replace(/=+$/, "");
		// Characters fully determined by key bytes only: skip those touching the zero prefix and
		// the last (partial) group.
		const start = Math.ceil((shift * 8) / 6);
		const end = Math.floor(((shift + key.length) * 8) / 6);
		const inner = b64.slice(start, end);
		out.add(inner);
		out.add(inner.replace(/\+/g, "-").replace(/\//g, "_"));
	}
	return [...out];
}

const GZIP_MAGIC = Buffer.from([0x1f, 0x8b, 0x08]);

export interface ScanOptions {
	/** Inflated bytes allowed per gzip member (default 1 GiB). */
	maxInflate?: number;
	/** Nesting of gzip inside gzip (default 2). */
	depth?: number;
}

export function scanBytes(
	bytes: Buffer,
	needles: readonly Needle[],
	o: ScanOptions = {},
	where = "raw",
): Hit[] {
	const hits: Hit[] = [];
	for (const n of needles)
		if (n.bytes.length > 0 && bytes.includes(n.bytes))
			hits.push({ needle: n.name, where });
	const depth = o.depth ?? 2;
	if (depth <= 0) return hits;
	let at = bytes.indexOf(GZIP_MAGIC);
	while (at >= 0) {
		const inflated = inflateFrom(bytes, at, o.maxInflate ?? 1 << 30);
		if (inflated && inflated.length > 0)
			hits.push(
				...scanBytes(
					inflated,
					needles,
					{ ...o, depth: depth - 1 },
					`${where === "raw" ? "" : `${where}/`}gzip@${at}`,
				),
			);
		at = bytes.indexOf(GZIP_MAGIC, at + 1);
	}
	return dedupe(hits);
}

/**
 * What a gzip member starting at `at` inflates to (as far as it goes), or undefined. The header
 * (RFC 1952: optional extra field, name, comment, header CRC) is skipped here and the deflate
 * stream inflated raw, which stops at the stream's end whatever follows it, and, with SYNC_FLUSH,
 * yields what a member cut short (a capture that ended) still holds.
 */
function inflateFrom(
	bytes: Buffer,
	at: number,
	max: number,
): Buffer | undefined {
	const flags = bytes[at + 3];
	if (flags === undefined || (flags & 0xe0) !== 0) return undefined;
	let p = at + 10;
	if (flags & 0x04) {
		if (p + 2 > bytes.length) return undefined;
		p += 2 + bytes.readUInt16LE(p);
	}
	for (const bit of [0x08, 0x10])
		if (flags & bit) {
			const end = bytes.indexOf(0, p);
			if (end < 0) return undefined;
			p = end + 1;
		}
	if (flags & 0x02) p += 2;
	if (p >= bytes.length) return undefined;
	try {
		return inflateRawSync(bytes.subarray(p), {
			finishFlush: zc.Z_SYNC_FLUSH,
			maxOutputLength: max,
		});
	} catch {
		return undefined;
	}
}

function dedupe(hits: Hit[]): Hit[] {
	const seen = new Set<string>();
	return hits.filter((h) => {
		const k = `${h.needle}\0${h.where}`;
		if (seen.has(k)) return false;
		seen.add(k);
		return true;
	});
}
