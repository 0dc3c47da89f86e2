/** printable(): untrusted text on one inert, unambiguous line. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { printable } from "../src/printable.js";

/** Whether `s` holds a character that must never reach a terminal or a log line raw. */
function hasUnsafe(s: string): boolean {
	for (const ch of s) {
		const c = ch.codePointAt(0) as number;
		if (
			c < 0x20 ||
			(c >= 0x7f && c <= 0x9f) ||
			c === 0x2028 ||
			c === 0x2029 ||
			c === 0x200e ||
			c === 0x200f ||
			(c >= 0x202a && c <= 0x202e) ||
			(c >= 0x2066 && c <= 0x2069)
		)
			return true;
	}
	return false;
}

/** The inverse of printable(), written independently, to prove it loses nothing. */
function unescapeAll(s: string): string {
	return s.replace(
		/\\(?:\\|n|r|t|x([0-9a-f]{2})|u\{([0-9a-f]{1,4})\})/g,
		(m, x: string | undefined, u: string | undefined) => {
			if (x !== undefined) return String.fromCharCode(Number.parseInt(x, 16));
			if (u !== undefined) return String.fromCharCode(Number.parseInt(u, 16));
			return { "\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\t": "\t" }[
				m
			] as string;
		},
	);
}

describe("printable", () => {
	it("escapes newlines, terminal escapes, controls, separators, bidi overrides and lone surrogates", () => {
		expect(printable("plain text, ünïcödé, 日本, 😀")).toBe(
			"plain text, ünïcödé, 日本, 😀",
		);
		expect(printable("a\nb\r\nc\td\\e")).toBe("a\\nb\\r\\nc\\td\\\\e");
		expect(printable("\x1b[31mred\x1b[0m\x07")).toBe(
			"\\x1b[31mred\\x1b[0m\\x07",
		);
		expect(printable("\0\x7f\x9b\x85")).toBe("\\x00\\x7f\\x9b\\x85");
		expect(printable("x\u2028y\u202ez\u2066")).toBe(
			"x\\u{2028}y\\u{202e}z\\u{2066}",
		);
		expect(printable("\ud800 \udc00 \ud83d\ude00")).toBe(
			"\\u{d800} \\u{dc00} 😀",
		);
		expect(printable(42)).toBe("42");
		// a forged log line stays on the line it was written in
		expect(
			printable(
				'x (bad)\ndadi-broker: release default/image-key/app client=10.0.0.1 status=200 "',
			).includes("\n"),
		).toBe(false);
	});

	it("property: the result holds nothing unsafe, and unescaping gives the input back", () => {
		fc.assert(
			fc.property(
				fc.oneof(
					fc.string({ unit: "binary", maxLength: 80 }),
					fc.string({ unit: "grapheme", maxLength: 40 }),
					fc
						.array(
							fc.constantFrom(
								"\\",
								"\\n",
								"\n",
								"\x1b[2J",
								"\u2028",
								"\ud800",
								"\udfff",
								"😀",
								"a",
							),
						)
						.map((a) => a.join("")),
				),
				(s) => {
					const p = printable(s);
					expect(hasUnsafe(p)).toBe(false);
					// no lone surrogates left
					expect(p).toBe(Buffer.from(p, "utf8").toString("utf8"));
					expect(unescapeAll(p)).toBe(s);
				},
			),
			{ numRuns: 2000 },
		);
	});
});
