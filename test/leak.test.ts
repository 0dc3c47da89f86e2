/**
 * Issue 14: nothing an observer without the key can read should let it test guesses about the
 * image. A review recovered `DB_PIN=4711` from a v1 sealed config after 4,712 guesses: `fs.uuid`
 * was SHA-256 of the (encrypted) image config. This test replays that attack — and every other
 * unkeyed computation over the guessed config we could think of — against everything a host or
 * registry sees of a v2 image (manifest, public config, layer headers and trailers, sizes), and
 * checks that the attack machinery does work against a v1-style public field. Needs root (sealing
 * a container image), like test/seal-image.test.ts.
 */
import { createHash } from "node:crypto";
import { open, readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HEADER_SIZE, TRAILER_SIZE } from "../src/format/constants.js";
import { BIN, cleanupTempDirs, runCli, tempDir } from "./helpers.js";
import { run } from "./image-fixtures.js";

/** A JSON document edited by hand (a forger's view: anything goes). */
// biome-ignore lint/suspicious/noExplicitAny: hand-edited JSON documents
type Doc = any;

const CREATED = "2023-03-14T15:09:26Z";
const CREATED_EPOCH = Math.floor(Date.parse(CREATED) / 1000);

let dir: string;
let src: string;
let keyPath: string;
/** The source image's config, exactly as stored, and the facts an attacker might know. */
let sourceConfig: Buffer;
let sourceDigests: string[];

/** What anyone without the key can read of a sealed layout: texts and binary parts. */
interface Observed {
	texts: string[];
	binaries: Buffer[];
	numbers: Set<number>;
}

async function observe(layout: string, tag: string): Promise<Observed> {
	const index = JSON.parse(await readFile(join(layout, "index.json"), "utf8"));
	const desc = index.manifests.find(
		(m: { annotations?: Record<string, string> }) =>
			m.annotations?.["org.opencontainers.image.ref.name"] === tag,
	);
	const blob = (d: string) => join(layout, "blobs/sha256", d.slice(7));
	const manifest = await readFile(blob(desc.digest), "utf8");
	const m = JSON.parse(manifest);
	const config = await readFile(blob(m.config.digest), "utf8");
	const binaries: Buffer[] = [];
	const numbers = new Set<number>();
	for (const l of m.layers) {
		const fh = await open(blob(l.digest), "r");
		try {
			const { size } = await fh.stat();
			const head = Buffer.alloc(HEADER_SIZE);
			const tail = Buffer.alloc(TRAILER_SIZE);
			await fh.read(head, 0, HEADER_SIZE, 0);
			await fh.read(tail, 0, TRAILER_SIZE, size - TRAILER_SIZE);
			binaries.push(head, tail);
			numbers.add(size);
		} finally {
			await fh.close();
		}
	}
	const collect = (v: unknown): void => {
		if (typeof v === "number") numbers.add(v);
		else if (Array.isArray(v)) v.forEach(collect);
		else if (v && typeof v === "object") Object.values(v).forEach(collect);
	};
	collect(JSON.parse(config));
	collect(m);
	return {
		texts: [manifest, config, JSON.stringify(index)],
		binaries,
		numbers,
	};
}

/** Every unkeyed derivation of a guessed config we try; each is a string to look for. */
function derivations(config: Buffer): string[] {
	const sha = (prefix: string) =>
		createHash("sha256").update(prefix).update(config).digest("hex");
	const asUuid = (h: string) =>
		`${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-${((Number.parseInt(h.slice(16, 17), 16) & 3) | 8).toString(16)}${h.slice(17, 20)}-${h.slice(20, 32)}`;
	const out: string[] = [];
	for (const prefix of [
		"",
		"dadi/v1/fs-identity\0",
		"dadi/v2/fs-identity\0",
		"dadi/v1/image-config\0",
	]) {
		const h = sha(prefix);
		out.push(h, asUuid(h), Buffer.from(h, "hex").toString("base64url"));
	}
	return out;
}

/** The review's attack: which of the 10,000 PINs does some public value confirm? */
function attack(seen: Observed): string[] {
	const template = sourceConfig.toString("utf8");
	expect(template).toContain("DB_PIN=4711");
	const haystack = [
		...seen.texts,
		...seen.binaries.map((b) => b.toString("hex")),
	].join("\n");
	const confirmed: string[] = [];
	for (let pin = 0; pin < 10_000; pin++) {
		const guess = String(pin).padStart(4, "0");
		const candidate = Buffer.from(
			template.replace("DB_PIN=4711", `DB_PIN=${guess}`),
		);
		if (derivations(candidate).some((d) => haystack.includes(d)))
			confirmed.push(guess);
	}
	return confirmed;
}

async function seal(tag: string, extra: string[] = []): Promise<string> {
	const layout = join(dir, `sealed-${tag}`);
	const r = await runCli(BIN.seal, [
		"seal",
		`oci:${src}:v1`,
		`oci:${layout}:${tag}`,
		"--key",
		keyPath,
		"--quiet",
		...extra,
	]);
	expect(r.code, r.stderr).toBe(0);
	return layout;
}

beforeAll(async () => {
	expect(process.getuid?.()).toBe(0);
	dir = await tempDir();
	src = join(dir, "src-oci");
	await run("umoci", ["init", "--layout", src]);
	await run("umoci", ["new", "--image", `${src}:v1`]);
	const bundle = join(dir, "bundle");
	await run("umoci", ["unpack", "--image", `${src}:v1`, bundle]);
	await run("mkdir", ["-p", join(bundle, "rootfs/etc")]);
	for (let i = 0; i < 40; i++)
		await run("cp", ["/etc/hostname", join(bundle, `rootfs/etc/f${i}`)]);
	await run("umoci", ["repack", "--image", `${src}:v1`, bundle]);
	await run("umoci", [
		"config",
		"--image",
		`${src}:v1`,
		"--config.env",
		"DB_PIN=4711",
		"--config.label",
		"com.example.team=payments",
		"--author",
		"alice@example.com",
		"--created",
		CREATED,
		"--history.created_by",
		"set DB_PIN",
		"--tag",
		"v1",
	]);
	const index = JSON.parse(await readFile(join(src, "index.json"), "utf8"));
	const md = index.manifests.find(
		(m: { annotations?: Record<string, string> }) =>
			m.annotations?.["org.opencontainers.image.ref.name"] === "v1",
	).digest;
	const blob = (d: string) => join(src, "blobs/sha256", d.slice(7));
	const manifest = JSON.parse(await readFile(blob(md), "utf8"));
	sourceConfig = await readFile(blob(manifest.config.digest));
	const cfg = JSON.parse(sourceConfig.toString("utf8"));
	sourceDigests = [
		md,
		manifest.config.digest,
		...manifest.layers.map((l: { digest: string }) => l.digest),
		...cfg.rootfs.diff_ids,
	];
	keyPath = join(dir, "k.jwk");
	expect((await runCli(BIN.seal, ["keygen", "--out", keyPath])).code).toBe(0);
});
afterAll(cleanupTempDirs);

describe("guessing a secret from what a sealed image shows", () => {
	it("the review's attack recovers DB_PIN when the public fields hold a v1-style fs.uuid (the attack works)", async () => {
		const seen = await observe(await seal("control"), "control");
		const h = createHash("sha256")
			.update("dadi/v1/fs-identity\0")
			.update(sourceConfig)
			.digest("hex");
		// what v1 published as fs.uuid
		seen.texts.push(
			`"uuid": "${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-${((Number.parseInt(h.slice(16, 17), 16) & 3) | 8).toString(16)}${h.slice(17, 20)}-${h.slice(20, 32)}"`,
		);
		expect(attack(seen)).toEqual(["4711"]);
	});

	it("against a v2 image (normal and reproducible seals) no guess is confirmed", async () => {
		for (const [tag, extra] of [
			["normal", []],
			["repro", ["--seal-id", "0123456789abcdef0123456789abcdef"]],
		] as const) {
			const seen = await observe(await seal(tag, [...extra]), tag);
			expect(attack(seen), tag).toEqual([]);
		}
	});

	it("no env value, label, author, history, creation time or source digest appears in clear", async () => {
		const seen = await observe(await seal("plain"), "plain");
		const text = seen.texts.join("\n");
		for (const s of [
			"DB_PIN",
			"4711",
			"payments",
			"com.example.team",
			"alice@example.com",
			"set DB_PIN",
			CREATED,
			"sourceDiffIds",
			'"fs"',
			'"created"',
			'"history"',
			...sourceDigests,
			...sourceDigests.map((d) => d.slice(7)),
		])
			expect(text, s).not.toContain(s);
		expect(seen.numbers.has(CREATED_EPOCH)).toBe(false);
		const epoch = Buffer.alloc(4);
		epoch.writeUInt32LE(CREATED_EPOCH);
		for (const b of seen.binaries) expect(b.includes(epoch)).toBe(false);
		// v1 published the inode count, 1.25 × entries + 1024: no public number is near it
		const entries = 40 + 3; // f0..f39, etc/, and the directories umoci writes
		for (const n of seen.numbers)
			expect(n >= 1024 + entries && n <= 1024 + 2 * entries, String(n)).toBe(
				false,
			);
	});

	it("two images that differ only in the secret look alike apart from keyed and encrypted values", async () => {
		const a = JSON.parse(
			(
				await observe(
					await seal("repro-a", ["--seal-id", "11".repeat(16)]),
					"repro-a",
				)
			).texts[1] as string,
		);
		// the same image with another PIN, same key and seal id
		const other = join(dir, "src-other");
		await run("cp", ["-a", src, other]);
		await run("umoci", [
			"config",
			"--image",
			`${other}:v1`,
			"--config.env",
			"DB_PIN=4712",
			"--created",
			CREATED,
			"--no-history",
			"--tag",
			"v1",
		]);
		const layout = join(dir, "sealed-repro-b");
		const r = await runCli(BIN.seal, [
			"seal",
			`oci:${other}:v1`,
			`oci:${layout}:b`,
			"--key",
			keyPath,
			"--seal-id",
			"11".repeat(16),
			"--quiet",
		]);
		expect(r.code, r.stderr).toBe(0);
		const b = JSON.parse((await observe(layout, "b")).texts[1] as string);
		const mask = (c: Doc) => {
			const s = c["io.dadi.sealed"];
			for (const k of ["imageConfig", "sealParams", "mac"]) s[k] = "…";
			for (const l of s.layers)
				for (const k of ["digest", "layerId", "wrappedKey", "size"]) l[k] = "…";
			c.rootfs.diff_ids = c.rootfs.diff_ids.map(() => "…");
			return c;
		};
		expect(mask(b)).toEqual(mask(a));
	});

	it("--public-labels publishes the labels, and only them", async () => {
		const seen = await observe(
			await seal("labels", ["--public-labels"]),
			"labels",
		);
		const config = JSON.parse(seen.texts[1] as string);
		expect(config.config.Labels).toEqual({
			"com.example.team": "payments",
		});
		expect(seen.texts.join("\n")).not.toContain("DB_PIN");
		expect(attack(seen)).toEqual([]);
	});
});
