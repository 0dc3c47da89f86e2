/**
 * Untrusted text made safe to print on one line of a log, a terminal or a tab-separated table.
 * Anything a reader could mistake for structure or that a terminal would act on becomes a visible
 * escape: backslash → `\\`; newline, carriage return and tab → `\n`, `\r`, `\t`; every other C0
 * control, DEL and C1 control (ESC, and so every ANSI/VT escape sequence, included) → `\xHH`; line
 * and paragraph separators, bidirectional overrides and isolates, and lone surrogates → `\u{H}`.
 * Everything else, non-ASCII letters included, is kept. Because the backslash is escaped too, the
 * result is unambiguous: two different inputs never print the same.
 */

const NAMED = new Map<number, string>([
	[0x5c, "\\\\"],
	[0x0a, "\\n"],
	[0x0d, "\\r"],
	[0x09, "\\t"],
]);

/** The escape for one unsafe UTF-16 code unit, or undefined when it is safe. */
function escapeOf(c: number): string | undefined {
	const named = NAMED.get(c);
	if (named !== undefined) return named;
	if (c < 0x20 || (c >= 0x7f && c <= 0x9f))
		return `\\x${c.toString(16).padStart(2, "0")}`;
	if (
		c === 0x2028 ||
		c === 0x2029 ||
		c === 0x200e ||
		c === 0x200f ||
		(c >= 0x202a && c <= 0x202e) ||
		(c >= 0x2066 && c <= 0x2069)
	)
		return `\\u{${c.toString(16)}}`;
	return undefined;
}

const isHigh = (c: number) => c >= 0xd800 && c <= 0xdbff;
const isLow = (c: number) => c >= 0xdc00 && c <= 0xdfff;

/** `text` with every unsafe character replaced by a visible escape (see above). */
export function printable(text: unknown): string {
	const s = typeof text === "string" ? text : String(text);
	let out = "";
	let from = 0;
	for (let i = 0; i < s.length; i++) {
		const c = s.charCodeAt(i);
		let esc: string | undefined;
		if (isHigh(c)) {
			if (isLow(s.charCodeAt(i + 1))) {
				i++; // a whole surrogate pair: an ordinary character
				continue;
			}
			esc = `\\u{${c.toString(16)}}`;
		} else if (isLow(c)) esc = `\\u{${c.toString(16)}}`;
		else esc = escapeOf(c);
		if (esc === undefined) continue;
		out += s.slice(from, i) + esc;
		from = i + 1;
	}
	return from === 0 ? s : out + s.slice(from);
}
