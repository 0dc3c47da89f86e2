/**
 * Canonical base64url (RFC 4648 §5, no padding). Node's decoder is lenient: it skips characters
 * outside the alphabet, accepts `=` and ignores the unused low bits of the last character, so one
 * value has several spellings (a 32-byte MAC has four). Every base64url field dadi reads must be the
 * one spelling the encoder writes: decoding and re-encoding must give the text back, else the field
 * is refused. Otherwise anyone could re-spell an authentic config into another authentic document
 * with another digest.
 */

const ALPHABET = /^[A-Za-z0-9_-]*$/;

/**
 * The bytes of `text` when it is canonical base64url, else undefined. `length`, when given, is the
 * exact number of bytes required.
 */
export function decodeCanonicalBase64url(
	text: unknown,
	length?: number,
): Buffer | undefined {
	if (typeof text !== "string" || !ALPHABET.test(text)) return undefined;
	if (text.length % 4 === 1) return undefined; // no byte count encodes to this
	const bytes = Buffer.from(text, "base64url");
	if (bytes.toString("base64url") !== text) return undefined;
	if (length !== undefined && bytes.length !== length) return undefined;
	return bytes;
}

export function isCanonicalBase64url(text: unknown, length?: number): boolean {
	return decodeCanonicalBase64url(text, length) !== undefined;
}
