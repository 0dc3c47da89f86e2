/** Shared test helpers: temporary directories, disk images, sealing, running the CLI. */
import { execFile } from "node:child_process";
import { createCipheriv, createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, open, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import {
	generateImageKey,
	type ImageKey,
	toJwk,
} from "../src/crypto/image-key.js";
import { DadiError } from "../src/errors.js";
import type { CompressionName } from "../src/format/constants.js";
import { sealDisk } from "../src/seal/seal-disk.js";

/** The repository: test/.. from the sources, dist/test/../.. when compiled (bench, npm run sandbox). */
export const ROOT = ((here: string) =>
	existsSync(join(here, "package.json")) ? here : join(here, ".."))(
	fileURLToPath(new URL("..", import.meta.url)),
);
export const BIN = {
	seal: join(ROOT, "dist/src/cli/dadi-seal.js"),
	guest: join(ROOT, "dist/src/cli/dadi-guest.js"),
	broker: join(ROOT, "dist/src/cli/dadi-broker.js"),
	k8s: join(ROOT, "dist/src/cli/dadi-k8s.js"),
	snapshotter: join(ROOT, "dist/src/cli/dadi-snapshotter.js"),
};

const dirs: string[] = [];
export async function tempDir(): Promise<string> {
	const d = await mkdtemp(join(tmpdir(), "dadi-test-"));
	dirs.push(d);
	return d;
}
export async function cleanupTempDirs(): Promise<void> {
	await Promise.all(
		dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })),
	);
}

/** Deterministic pseudo-random bytes (AES-CTR keystream of a seed). */
export function prng(seed: string, n: number): Buffer {
	const key = createHash("sha256").update(seed).digest();
	return createCipheriv("aes-256-ctr", key, Buffer.alloc(16)).update(
		Buffer.alloc(n),
	);
}

/** Compressible text-like bytes. */
export function texty(seed: string, n: number): Buffer {
	const words = [
		"alpha ",
		"beta ",
		"gamma ",
		"delta\n",
		"lib/",
		"usr/",
		"0123 ",
		"x86_64 ",
	];
	const r = prng(seed, n);
	const out = Buffer.alloc(n);
	let o = 0;
	let i = 0;
	while (o < n) {
		const w = words[(r[i++ % n] as number) % words.length] as string;
		o += out.write(w, o);
	}
	return out;
}

export interface Region {
	at: number;
	bytes: Buffer;
}

/** Writes a sparse disk image of `size` bytes with the given regions (the rest are holes). */
export async function writeDisk(
	path: string,
	size: number,
	regions: Region[],
): Promise<Buffer> {
	const fh = await open(path, "w");
	await fh.truncate(size);
	const image = Buffer.alloc(size);
	for (const r of regions) {
		await fh.write(r.bytes, 0, r.bytes.length, r.at);
		r.bytes.copy(image, r.at);
	}
	await fh.close();
	return image;
}

export async function writeKey(
	dir: string,
	name = "image.jwk",
): Promise<{ key: ImageKey; path: string }> {
	const key = generateImageKey();
	const path = join(dir, name);
	await writeFile(path, JSON.stringify(toJwk(key)), { mode: 0o600 });
	return { key, path };
}

export async function sealInto(
	disk: string,
	dir: string,
	tag: string,
	key: ImageKey,
	o: {
		chunkSize?: number;
		compression?: CompressionName;
		base?: string;
		baseKey?: ImageKey;
		sealId?: Buffer;
		imageConfig?: Buffer;
		keyRef?: string;
	} = {},
) {
	return sealDisk({
		disk,
		dest: { transport: "oci", dir, tag },
		key,
		chunkSize: o.chunkSize,
		compression: o.compression,
		sealId: o.sealId,
		imageConfig: o.imageConfig,
		keyRef: o.keyRef,
		base: o.base
			? { ref: { transport: "oci", dir, tag: o.base }, key: o.baseKey ?? key }
			: undefined,
	});
}

export interface CliResult {
	code: number;
	stdout: string;
	stderr: string;
}

export function runCli(
	bin: string,
	args: string[],
	cwd?: string,
	env?: NodeJS.ProcessEnv,
): Promise<CliResult> {
	return new Promise((resolve) => {
		execFile(
			process.execPath,
			[bin, ...args],
			{ cwd, maxBuffer: 64 << 20, env: env ?? process.env },
			(err, stdout, stderr) => {
				const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
				resolve({ code, stdout, stderr });
			},
		);
	});
}

/** A CLI run that must succeed: its result, or an error carrying its exit code and stderr. */
export async function must(p: Promise<CliResult>): Promise<CliResult> {
	const r = await p;
	if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.stderr}`);
	return r;
}

/** Files of a directory tree (relative paths), for "nothing left behind" checks. */
export async function listFiles(dir: string): Promise<string[]> {
	const out: string[] = [];
	for (const e of await readdir(dir, { withFileTypes: true, recursive: true }))
		if (e.isFile()) out.push(relative(dir, join(e.parentPath, e.name)));
	return out.sort();
}

/** The DadiError `fn` throws; anything else thrown (a crash) or nothing thrown fails the test. */
export function thrown(fn: () => unknown): DadiError {
	try {
		fn();
	} catch (e) {
		if (e instanceof DadiError) return e;
		throw e;
	}
	throw new Error("expected an error");
}

/** The DadiError `p` rejects with; as `thrown`. */
export async function rejection(p: Promise<unknown>): Promise<DadiError> {
	try {
		await p;
	} catch (e) {
		if (e instanceof DadiError) return e;
		throw e;
	}
	throw new Error("expected a rejection");
}

/**
 * A disk file holding fio's verifiable pattern (a crc32c header in every 4 KiB block), for reads
 * checked with `fio --verify=crc32c --verify_interval=4096 --readonly`.
 */
export async function writeFioPattern(
	path: string,
	size: number,
): Promise<void> {
	await new Promise<void>((resolve, reject) =>
		execFile(
			"fio",
			[
				"--name=write",
				`--filename=${path}`,
				`--size=${size}`,
				"--rw=write",
				"--bs=4k",
				"--ioengine=psync",
				"--verify=crc32c",
				"--do_verify=0",
				"--verify_state_save=0",
				"--output=/dev/null",
			],
			(err, _out, stderr) =>
				err ? reject(new Error(`fio: ${stderr}`)) : resolve(),
		),
	);
}

/**
 * A raw disk written from `regions`, sealed with a new key and pushed to a registry as
 * `docker://HOST/NAME` by the real `dadi-seal` program (plain HTTP).
 */
export async function sealDiskToRegistry(
	registryHost: string,
	name: string,
	size: number,
	regions: Region[],
): Promise<{ key: ImageKey; keyPath: string; disk: Buffer }> {
	const dir = await tempDir();
	const { key, path: keyPath } = await writeKey(dir);
	const disk = await writeDisk(join(dir, "d.img"), size, regions);
	await must(
		runCli(BIN.seal, [
			"seal",
			`raw:${join(dir, "d.img")}`,
			`docker://${registryHost}/${name}`,
			"--key",
			keyPath,
			"--insecure",
			"--quiet",
		]),
	);
	return { key, keyPath, disk };
}
