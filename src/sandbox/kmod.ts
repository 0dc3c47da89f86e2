/**
 * Kernel modules without modules.dep: read each module's `.modinfo` section (the NUL-separated
 * `key=value` strings modprobe reads) and compute the order to `insmod` a requested set in.
 *
 * Pure. The bytes are Debian's .ko files, but they are parsed as untrusted input: every offset
 * and size is bounds-checked and anything malformed is a FORMAT_INVALID DadiError.
 */
import { DadiError } from "../errors.js";

export interface ModInfo {
	/** The module's name (`name=`), with "-" read as "_" like the kernel does. */
	name: string | undefined;
	depends: string[];
	/** `softdep=pre: a b post: c`: modules modprobe loads before (pre) and after (post) this one. */
	softPre: string[];
	softPost: string[];
	aliases: string[];
}

/** Module names compare with "-" and "_" equal; the canonical form uses "_". */
export function moduleName(name: string): string {
	return name.replaceAll("-", "_");
}

function bad(why: string): DadiError {
	return new DadiError("FORMAT_INVALID", `kernel module: ${why}`);
}

/** The bytes of the ELF64 little-endian section named `.modinfo`. */
export function modinfoSection(ko: Uint8Array): Uint8Array {
	const b = Buffer.from(ko.buffer, ko.byteOffset, ko.length);
	if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46)
		throw bad("not an ELF file");
	if (b[4] !== 2 || b[5] !== 1)
		throw bad("not a 64-bit little-endian ELF file");
	const shoff = b.readBigUInt64LE(0x28);
	const shentsize = b.readUInt16LE(0x3a);
	const shnum = b.readUInt16LE(0x3c);
	const shstrndx = b.readUInt16LE(0x3e);
	if (shentsize < 64) throw bad("section header entries too small");
	if (shstrndx >= shnum) throw bad("section name table index out of range");
	if (shoff > BigInt(b.length) || Number(shoff) + shnum * shentsize > b.length)
		throw bad("section headers outside the file");
	const section = (i: number) => {
		const at = Number(shoff) + i * shentsize;
		const offset = b.readBigUInt64LE(at + 0x18);
		const size = b.readBigUInt64LE(at + 0x20);
		if (offset > BigInt(b.length) || size > BigInt(b.length) - offset)
			throw bad(`section ${i} outside the file`);
		return {
			name: b.readUInt32LE(at),
			type: b.readUInt32LE(at + 4),
			start: Number(offset),
			end: Number(offset + size),
		};
	};
	const names = section(shstrndx);
	for (let i = 0; i < shnum; i++) {
		const s = section(i);
		const nameAt = names.start + s.name;
		if (nameAt >= names.end) continue;
		const nul = b.indexOf(0, nameAt);
		if (nul < 0 || nul >= names.end) continue;
		if (b.toString("latin1", nameAt, nul) === ".modinfo")
			return b.subarray(s.start, s.end);
	}
	throw bad("no .modinfo section");
}

const NAME = /^[A-Za-z0-9_-]{1,64}$/;
/** A soft dependency names a module or an alias ("platform:leds-gpio"). */
const SOFT_NAME = /^[A-Za-z0-9_:.+-]{1,128}$/;

function names(list: string, what: string, pattern = NAME): string[] {
	const out: string[] = [];
	for (const n of list.split(/[\s,]+/)) {
		if (n === "") continue;
		if (!pattern.test(n))
			throw bad(`${what}: ${JSON.stringify(n)} is not a module name`);
		out.push(moduleName(n));
	}
	return out;
}

/** Parses the `.modinfo` strings of a .ko file. */
export function parseModinfo(ko: Uint8Array): ModInfo {
	const section = Buffer.from(modinfoSection(ko));
	const info: ModInfo = {
		name: undefined,
		depends: [],
		softPre: [],
		softPost: [],
		aliases: [],
	};
	for (const raw of section.toString("latin1").split("\0")) {
		const eq = raw.indexOf("=");
		if (eq <= 0) continue;
		const key = raw.slice(0, eq);
		const value = raw.slice(eq + 1);
		if (key === "name") info.name = names(value, "name")[0];
		else if (key === "depends") info.depends.push(...names(value, "depends"));
		else if (key === "alias") info.aliases.push(value);
		else if (key === "softdep") {
			// "pre: a b post: c" (either part optional, in either order)
			let into: string[] | undefined;
			for (const word of value.split(/\s+/)) {
				if (word === "") continue;
				if (word === "pre:") into = info.softPre;
				else if (word === "post:") into = info.softPost;
				// kmod ignores names before any pre:/post: (some modules declare MODULE_SOFTDEP("gcm"))
				else if (into === undefined) continue;
				else into.push(...names(word, "softdep", SOFT_NAME));
			}
		}
	}
	return info;
}

export interface LoadPlan {
	/** Module names, each after everything it depends on. */
	order: string[];
	/** Soft dependencies no module in the index provides (modprobe ignores these too). */
	missingSoftdeps: string[];
}

/**
 * The dependency closure of `requested` in load order (hard `depends=` and `softdep=pre:` before
 * the module, `softdep=post:` after it), stable for a given input.
 *
 * `index` maps module names to their modinfo; `aliases` maps a soft dependency's name (e.g.
 * "crypto-crc32c") to the module chosen to provide it. A missing hard dependency is
 * INPUT_NOT_FOUND; a dependency cycle is FORMAT_INVALID.
 */
export function loadOrder(
	requested: readonly string[],
	index: ReadonlyMap<string, ModInfo>,
	aliases: ReadonlyMap<string, string> = new Map(),
): LoadPlan {
	const order: string[] = [];
	const missingSoftdeps = new Set<string>();
	const state = new Map<string, "visiting" | "done">();
	const alias = new Map(
		[...aliases].map(([k, v]) => [moduleName(k), moduleName(v)]),
	);
	const resolveSoft = (n: string): string | undefined => {
		if (index.has(n)) return n;
		const a = alias.get(moduleName(n));
		if (a !== undefined && index.has(a)) return a;
		missingSoftdeps.add(n);
		return undefined;
	};
	const post: string[] = [];
	const visit = (n: string, path: string[]) => {
		const s = state.get(n);
		if (s === "done") return;
		if (s === "visiting")
			throw new DadiError(
				"FORMAT_INVALID",
				`kernel modules depend on each other in a cycle: ${[...path, n].join(" -> ")}`,
			);
		const info = index.get(n);
		if (info === undefined)
			throw new DadiError(
				"INPUT_NOT_FOUND",
				`kernel module ${n} (${path.length ? `needed by ${path.join(" -> ")}` : "requested"}) is not in the kernel package`,
			);
		state.set(n, "visiting");
		for (const d of [...info.softPre.map(resolveSoft), ...info.depends])
			if (d !== undefined && d !== n) visit(d, [...path, n]);
		state.set(n, "done");
		order.push(n);
		for (const p of info.softPost) {
			const d = resolveSoft(p);
			if (d !== undefined) post.push(d);
		}
	};
	for (const r of requested) visit(moduleName(r), []);
	while (post.length > 0) visit(post.shift() as string, []);
	return { order, missingSoftdeps: [...missingSoftdeps].sort() };
}
