/**
 * The private content-addressed cache the single-file dadi-guest extracts its native addons into
 * (src/native/extract.ts): permissions, reuse, repair of a modified copy, refusal of directories
 * another user could write, fallback to the next directory, and a clear error when none works.
 * Loading itself is exercised by test/guest-bundle.test.ts.
 */
import {
	chmodSync,
	mkdirSync,
	readdirSync,
	readFileSync,
	statSync,
	symlinkSync,
	writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
	type BinaryToExtract,
	cacheDirs,
	extractAndLoad,
	extractInto,
	sha256Hex,
} from "../src/native/extract.js";
import { cleanupTempDirs, prng, rejection, tempDir } from "./helpers.js";

const uid = process.geteuid?.() ?? 0;
const content = prng("native-extract", 100_000);
let writes = 0;
const bin: BinaryToExtract = {
	name: "addon",
	version: "1.2.3",
	sha256: sha256Hex(content),
	bytes: () => {
		writes++;
		return content;
	},
};
const fileName = `addon-1.2.3-${sha256Hex(content)}.node`;
let base: string;

beforeAll(async () => {
	base = await tempDir();
});
afterAll(cleanupTempDirs);

describe("extracting an embedded binary", () => {
	it("writes it once into a 0700 directory as a 0500 file named by its hash, then reuses it", () => {
		const dir = join(base, "fresh", "native");
		writes = 0;
		const path = extractInto(bin, dir, uid);
		expect(path).toBe(join(dir, fileName));
		expect(readFileSync(path).equals(content)).toBe(true);
		expect(statSync(dir).mode & 0o777).toBe(0o700);
		expect(statSync(path).mode & 0o777).toBe(0o500);
		const ino = statSync(path).ino;
		expect(extractInto(bin, dir, uid)).toBe(path);
		expect(statSync(path).ino).toBe(ino);
		expect(writes).toBe(1);
		expect(readdirSync(dir)).toEqual([fileName]); // no temporary file left
	});

	it("replaces a cached copy whose bytes were changed", () => {
		const dir = join(base, "tampered");
		const path = extractInto(bin, dir, uid);
		chmodSync(path, 0o600);
		writeFileSync(path, Buffer.from("not the library"));
		chmodSync(path, 0o500);
		writes = 0;
		expect(extractInto(bin, dir, uid)).toBe(path);
		expect(writes).toBe(1);
		expect(readFileSync(path).equals(content)).toBe(true);
	});

	it("replaces a cached copy that others may write, even with the right bytes", () => {
		const dir = join(base, "loose-file");
		const path = extractInto(bin, dir, uid);
		chmodSync(path, 0o522);
		writes = 0;
		extractInto(bin, dir, uid);
		expect(writes).toBe(1);
		expect(statSync(path).mode & 0o777).toBe(0o500);
	});

	it("refuses a directory writable by others, one owned by someone else, and a symbolic link", () => {
		const open = join(base, "open");
		mkdirSync(open, { mode: 0o700 });
		chmodSync(open, 0o777);
		expect(() => extractInto(bin, open, uid)).toThrow(
			/writable by group or others \(mode 0777\)/,
		);
		const mine = join(base, "mine");
		mkdirSync(mine, { mode: 0o700 });
		expect(() => extractInto(bin, mine, uid + 1)).toThrow(
			new RegExp(`owned by uid ${uid}, not ${uid + 1}`),
		);
		const link = join(base, "link");
		symlinkSync(mine, link);
		expect(() => extractInto(bin, link, uid)).toThrow(/not a directory/);
		expect(readdirSync(mine)).toEqual([]);
	});

	it("falls back to the next directory when one cannot be used or its copy does not load", () => {
		const open = join(base, "open2");
		mkdirSync(open, { mode: 0o700 });
		chmodSync(open, 0o777);
		const noexec = join(base, "noexec");
		const good = join(base, "good");
		const r = extractAndLoad(bin, [open, noexec, good], uid, (p) => {
			if (p.startsWith(noexec)) throw new Error("failed to map segment");
			return readFileSync(p).length;
		});
		expect(r).toEqual({ path: join(good, fileName), loaded: content.length });
	});

	it("fails with IO, naming every directory and why, when none works", async () => {
		const open = join(base, "open3");
		mkdirSync(open, { mode: 0o700 });
		chmodSync(open, 0o777);
		const e = await rejection(
			(async () =>
				extractAndLoad(bin, [open, join(base, "x")], uid, () => {
					throw new Error("failed to map segment");
				}))(),
		);
		expect(e.code).toBe("IO");
		expect(e.message).toContain(`${open}: writable by group or others`);
		expect(e.message).toContain("loading failed: failed to map segment");
		expect(e.message).toContain("DADI_NATIVE_CACHE");
	});
});

describe("cache directories", () => {
	const c = { uid: 7, home: "/home/u", tmp: "/tmp" };
	it("prefer $DADI_NATIVE_CACHE alone, else the XDG cache, then a per-user temporary directory", () => {
		expect(cacheDirs({ ...c, env: { DADI_NATIVE_CACHE: "/srv/n" } })).toEqual([
			"/srv/n",
		]);
		expect(cacheDirs({ ...c, env: { XDG_CACHE_HOME: "/var/c" } })).toEqual([
			"/var/c/dadi/native",
			"/tmp/dadi-native-7",
		]);
		// a relative XDG_CACHE_HOME is ignored, as the XDG spec says
		expect(cacheDirs({ ...c, env: { XDG_CACHE_HOME: "rel" } })).toEqual([
			"/home/u/.cache/dadi/native",
			"/tmp/dadi-native-7",
		]);
		expect(cacheDirs({ ...c, home: "", env: {} })).toEqual([
			"/tmp/dadi-native-7",
		]);
	});
});
