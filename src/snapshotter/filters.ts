/**
 * containerd's filter language (its filters package), which List requests carry and containerd's
 * metadata layer uses to find a remote snapshot by its `containerd.io/snapshot.ref` label:
 *
 *   selectors := selector ("," selector)*        every selector must match
 *   selector  := fieldpath [operator value]      no operator: the field is present
 *   fieldpath := field ("." field)*
 *   field     := quoted | [A-Za-z0-9_]+
 *   operator  := "==" | "!=" | "~="              ~= is a regular expression (RE2 syntax, as Go)
 *   value     := quoted | run of graphic characters other than "," and spaces
 *   quoted    := "…" with Go escapes; for ~= values also /…/ and |…|
 *
 * Several filters in one request: a snapshot matches if any filter does; none: everything matches.
 * This is our own scanner and parser written to accept exactly what containerd's accepts (spaces
 * may precede a field, an operator or a value, but not follow a value); a parse error is
 * INPUT_INVALID (gRPC InvalidArgument). Regular expressions run on re2js, linear in time (RE2,
 * like Go), so no filter can stall the server; one that does not compile matches nothing, as in
 * containerd. Pure: no I/O.
 */
import { RE2JS } from "re2js";
import { DadiError } from "../errors.js";

/** Looks up a field path on the object being filtered: its value, or undefined when absent. */
export type FieldLookup = (path: readonly string[]) => string | undefined;

export interface Filter {
	match(lookup: FieldLookup): boolean;
}

const EOF = -1;
const ILLEGAL = -2;
type Tok =
	| "eof"
	| "illegal"
	| "quoted"
	| "value"
	| "field"
	| "sep"
	| "op"
	| "rune";

const MAX_FILTER_LENGTH = 64 * 1024;

function isSpace(c: number): boolean {
	return (
		(c >= 0x09 && c <= 0x0d) ||
		c === 0x20 ||
		c === 0x85 ||
		c === 0xa0 ||
		c === 0x1680 ||
		(c >= 0x2000 && c <= 0x200a) ||
		c === 0x2028 ||
		c === 0x2029 ||
		c === 0x202f ||
		c === 0x205f ||
		c === 0x3000
	);
}
const isAlpha = (c: number) =>
	(c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
const isDigit = (c: number) => c >= 0x30 && c <= 0x39;
const isFieldRune = (c: number) => c === 0x5f || isAlpha(c) || isDigit(c);
const isOperatorRune = (c: number) => c === 0x3d || c === 0x21 || c === 0x7e; // = ! ~
const isQuoteRune = (c: number) => c === 0x2f || c === 0x7c || c === 0x22; // / | "
const isSeparatorRune = (c: number) => c === 0x2c || c === 0x2e; // , .
const GRAPHIC = /^[\p{L}\p{M}\p{N}\p{P}\p{S}]$/u;
function isValueRune(c: number): boolean {
	return (
		c >= 0 && c !== 0x2c && !isSpace(c) && GRAPHIC.test(String.fromCodePoint(c))
	);
}
function digitVal(c: number): number {
	if (isDigit(c)) return c - 0x30;
	if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
	if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
	return 16;
}

class Scanner {
	pos = 0; // start of the rune last read
	ppos = 0; // just after it
	value = false; // the next token is a value (after an operator)
	err = "";

	constructor(readonly input: string) {}

	next(): number {
		if (this.pos >= this.input.length) return EOF;
		this.pos = this.ppos;
		if (this.ppos >= this.input.length) return EOF;
		const c = this.input.codePointAt(this.ppos) as number;
		this.ppos += c > 0xffff ? 2 : 1;
		// Lone surrogates and U+FFFD: what Go's decoder reports as a rune error.
		if (c === 0xfffd || (c >= 0xd800 && c <= 0xdfff)) {
			this.error("rune error");
			return ILLEGAL;
		}
		if (c === 0) {
			this.error("unexpected null");
			return ILLEGAL;
		}
		return c;
	}

	peek(): number {
		const { pos, ppos } = this;
		const c = this.next();
		this.pos = pos;
		this.ppos = ppos;
		return c;
	}

	scan(): { pos: number; tok: Tok; text: string; rune?: number } {
		let c = this.next();
		let pos = this.pos;
		for (;;) {
			if (c === EOF) return { pos: this.pos, tok: "eof", text: "" };
			if (c === ILLEGAL) return { pos: this.pos, tok: "illegal", text: "" };
			if (isQuoteRune(c)) {
				const ok = this.scanQuoted(c);
				return {
					pos,
					tok: ok ? "quoted" : "illegal",
					text: this.input.slice(pos, this.ppos),
				};
			}
			if (isSeparatorRune(c)) {
				this.value = false;
				return { pos, tok: "sep", text: this.input.slice(pos, this.ppos) };
			}
			if (isOperatorRune(c)) {
				while (isOperatorRune(this.peek())) this.next();
				this.value = true;
				return { pos, tok: "op", text: this.input.slice(pos, this.ppos) };
			}
			if (isSpace(c)) {
				c = this.next();
				pos = this.pos;
				continue;
			}
			if (this.value) {
				while (isValueRune(this.peek())) this.next();
				this.value = false;
				return { pos, tok: "value", text: this.input.slice(pos, this.ppos) };
			}
			if (isFieldRune(c)) {
				while (isFieldRune(this.peek())) this.next();
				return { pos, tok: "field", text: this.input.slice(pos, this.ppos) };
			}
			return { pos: this.pos, tok: "rune", text: "", rune: c };
		}
	}

	private scanQuoted(quote: number): boolean {
		let illegal = false;
		let c = this.next();
		while (c !== quote) {
			if (c === 0x0a || c < 0) {
				this.error("quoted literal not terminated");
				return false;
			}
			if (c === 0x5c) {
				const r = this.scanEscape(quote);
				c = r.c;
				if (!r.legal) illegal = true;
			} else c = this.next();
		}
		return !illegal;
	}

	private scanEscape(quote: number): { c: number; legal: boolean } {
		const c = this.next();
		if (
			"abfnrtv\\".includes(String.fromCodePoint(Math.max(c, 0))) ||
			c === quote
		)
			return { c: this.next(), legal: true };
		if (c >= 0x30 && c <= 0x37) return this.scanDigits(c, 8, 3);
		if (c === 0x78) return this.scanDigits(this.next(), 16, 2);
		if (c === 0x75) return this.scanDigits(this.next(), 16, 4);
		if (c === 0x55) return this.scanDigits(this.next(), 16, 8);
		this.error("illegal escape sequence");
		return { c, legal: false };
	}

	private scanDigits(
		first: number,
		base: number,
		count: number,
	): { c: number; legal: boolean } {
		let c = first;
		let n = count;
		while (n > 0 && digitVal(c) < base) {
			c = this.next();
			n--;
		}
		if (n > 0) {
			this.error("illegal numeric escape sequence");
			return { c, legal: false };
		}
		return { c, legal: true };
	}

	private error(msg: string): void {
		if (this.err === "") this.err = msg;
	}
}

/** Go's string unquoting, with / and | as further double-quote characters (bytes in, text out). */
export function unquote(text: string): string | undefined {
	const s = Buffer.from(text, "utf8");
	const n = s.length;
	if (n < 2) return undefined;
	const quote = s[0] as number;
	if (quote !== s[n - 1]) return undefined;
	if (![0x22, 0x27, 0x7c, 0x2f].includes(quote)) return undefined;
	const body = s.subarray(1, n - 1);
	if (body.includes(0x0a)) return undefined;
	const out: number[] = [];
	let i = 0;
	while (i < body.length) {
		const c = body[i] as number;
		if (c === quote) return undefined;
		if (c !== 0x5c) {
			out.push(c);
			i++;
			continue;
		}
		if (i + 1 >= body.length) return undefined;
		const e = body[i + 1] as number;
		i += 2;
		const simple: Record<number, number> = {
			97: 7,
			98: 8,
			102: 12,
			110: 10,
			114: 13,
			116: 9,
			118: 11,
			92: 0x5c,
		};
		if (simple[e] !== undefined) {
			out.push(simple[e] as number);
			continue;
		}
		if (e === 0x78 || e === 0x75 || e === 0x55) {
			const digits = e === 0x78 ? 2 : e === 0x75 ? 4 : 8;
			if (i + digits > body.length) return undefined;
			let v = 0;
			for (let j = 0; j < digits; j++) {
				const d = digitVal(body[i + j] as number);
				if (d >= 16) return undefined;
				v = v * 16 + d;
			}
			i += digits;
			if (e === 0x78) out.push(v);
			else {
				if (v > 0x10ffff) return undefined;
				// Go writes surrogates and other invalid runes as U+FFFD.
				const cp = v >= 0xd800 && v <= 0xdfff ? 0xfffd : v;
				out.push(...Buffer.from(String.fromCodePoint(cp), "utf8"));
			}
			continue;
		}
		if (e >= 0x30 && e <= 0x37) {
			if (i + 2 > body.length) return undefined;
			let v = e - 0x30;
			for (let j = 0; j < 2; j++) {
				const d = (body[i + j] as number) - 0x30;
				if (d < 0 || d > 7) return undefined;
				v = (v << 3) | d;
			}
			i += 2;
			if (v > 255) return undefined;
			out.push(v);
			continue;
		}
		if ((e === 0x27 || e === 0x22 || e === 0x7c || e === 0x2f) && e === quote) {
			out.push(e);
			continue;
		}
		return undefined;
	}
	if (quote === 0x27) {
		// A single-quoted literal is one character.
		const t = Buffer.from(out).toString("utf8");
		if ([...t].length !== 1) return undefined;
	}
	return Buffer.from(out).toString("utf8");
}

type Operator = "present" | "==" | "!=" | "~=";

interface Selector {
	fieldpath: string[];
	operator: Operator;
	value: string;
	re?: RE2JS | null;
}

function matchSelector(s: Selector, lookup: FieldLookup): boolean {
	const v = lookup(s.fieldpath);
	switch (s.operator) {
		case "present":
			return v !== undefined;
		case "==":
			return v !== undefined && v === s.value;
		case "!=":
			return (v ?? "") !== s.value;
		case "~=":
			return s.re ? s.re.matcher(v ?? "").find() : false;
	}
}

class Parser {
	private readonly s: Scanner;

	constructor(private readonly input: string) {
		this.s = new Scanner(input);
	}

	parse(): Selector[] {
		const out = [this.selector()];
		for (;;) {
			const c = this.s.peek();
			if (c === 0x2c) {
				const t = this.s.scan();
				if (t.tok !== "sep") throw this.error(t.pos, "expected a separator");
				out.push(this.selector());
			} else if (c === EOF) return out;
			else
				throw this.error(
					this.s.ppos,
					`unexpected input: ${c >= 0 ? String.fromCodePoint(c) : "illegal character"}`,
				);
		}
	}

	private selector(): Selector {
		const fieldpath = this.fieldpath();
		const c = this.s.peek();
		if (c === 0x2c || c === EOF)
			return { fieldpath, operator: "present", value: "" };
		const operator = this.operator();
		const value = this.value(operator === "~=");
		const sel: Selector = { fieldpath, operator, value };
		if (operator === "~=") {
			try {
				sel.re = RE2JS.compile(value);
			} catch {
				sel.re = null; // as containerd: a pattern that does not compile matches nothing
			}
		}
		return sel;
	}

	private fieldpath(): string[] {
		const fs = [this.field()];
		while (this.s.peek() === 0x2e) {
			const t = this.s.scan();
			if (t.tok !== "sep")
				throw this.error(t.pos, "expected a field separator (`.`)");
			fs.push(this.field());
		}
		return fs;
	}

	private field(): string {
		const t = this.s.scan();
		if (t.tok === "field") return t.text;
		if (t.tok === "quoted") return this.unquote(t.pos, t.text, false);
		if (t.tok === "illegal") throw this.error(t.pos, this.s.err);
		throw this.error(t.pos, "expected field or quoted");
	}

	private operator(): Operator {
		const t = this.s.scan();
		if (t.tok === "op") {
			if (t.text === "==" || t.text === "!=" || t.text === "~=") return t.text;
			throw this.error(t.pos, `unsupported operator ${JSON.stringify(t.text)}`);
		}
		if (t.tok === "illegal") throw this.error(t.pos, this.s.err);
		throw this.error(t.pos, 'expected an operator ("=="|"!="|"~=")');
	}

	private value(allowAltQuotes: boolean): string {
		const t = this.s.scan();
		if (t.tok === "value" || t.tok === "field") return t.text;
		if (t.tok === "quoted") return this.unquote(t.pos, t.text, allowAltQuotes);
		if (t.tok === "illegal") throw this.error(t.pos, this.s.err);
		throw this.error(t.pos, "expected value or quoted");
	}

	private unquote(pos: number, text: string, allowAlts: boolean): string {
		if (!allowAlts && text[0] !== "'" && text[0] !== '"')
			throw this.error(pos, "invalid quote encountered");
		const v = unquote(text);
		if (v === undefined)
			throw this.error(pos, "unquoting failed: quote syntax error");
		return v;
	}

	private error(pos: number, msg: string): DadiError {
		const shown =
			pos < this.input.length
				? `${this.input.slice(0, pos)} >|${this.input.slice(pos, pos + 1)}|< ${this.input.slice(pos + 1)}`
				: this.input;
		return new DadiError(
			"INPUT_INVALID",
			`filters: parse error: [${shown}]: ${msg || "illegal input"}`,
		);
	}
}

/** One filter string (all selectors must match); "" matches everything. */
export function parseFilter(text: string): Filter {
	if (text === "") return { match: () => true };
	if (text.length > MAX_FILTER_LENGTH)
		throw new DadiError(
			"INPUT_INVALID",
			`filters: a filter of ${text.length} characters is longer than ${MAX_FILTER_LENGTH}`,
		);
	const selectors = new Parser(text).parse();
	return { match: (l) => selectors.every((s) => matchSelector(s, l)) };
}

/** Any of several filters; no filters matches everything. */
export function parseFilters(texts: readonly string[]): Filter {
	if (texts.length === 0) return { match: () => true };
	const fs = texts.map(parseFilter);
	return { match: (l) => fs.some((f) => f.match(l)) };
}
