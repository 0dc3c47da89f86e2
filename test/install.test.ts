/**
 * The README's install path from a packed tarball: `npm pack`, then `npm install -g` of the
 * tarball (into a temporary prefix, never the real one) with the documented
 * `--allow-scripts=koffi,zstd-napi,protobufjs`. Checks that the tarball holds the programs and no tests,
 * build scripts or secrets; that the install says nothing about unreviewed install scripts yet
 * builds the native modules; and that the installed programs run outside the repository: help,
 * keygen, and a zstd-compressed seal read back by the installed dadi-guest.
 *
 * Uses the npm registry for the runtime dependencies (cached ones are not fetched again).
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, realpath, stat } from "node:fs/promises";
import { join, relative } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
	type CliResult,
	cleanupTempDirs,
	listFiles,
	must,
	ROOT,
	tempDir,
	texty,
	writeDisk,
} from "./helpers.js";

const exec = promisify(execFile);
let work: string;
let prefix: string;
let tarball: string;
let files: string[];
let installLog: string;

/** The environment without what `npm test` adds (npm_* variables) or Node options. */
function cleanEnv(): NodeJS.ProcessEnv {
	const env: NodeJS.ProcessEnv = {};
	for (const [k, v] of Object.entries(process.env))
		if (!/^npm_/i.test(k) && k !== "NODE_OPTIONS") env[k] = v;
	return env;
}

async function npm(args: string[], cwd: string) {
	return exec("npm", args, { cwd, env: cleanEnv(), maxBuffer: 16 << 20 });
}

/** Runs an installed program by its bin link, as a user's shell would. */
function installed(program: string, args: string[]): Promise<CliResult> {
	return new Promise((resolve) =>
		execFile(
			join(prefix, "bin", program),
			args,
			{ cwd: work, env: cleanEnv() },
			(err, stdout, stderr) =>
				resolve({
					code: err ? (typeof err.code === "number" ? err.code : 1) : 0,
					stdout,
					stderr,
				}),
		),
	);
}

beforeAll(async () => {
	if (!existsSync(join(ROOT, "dist/src/cli/dadi-seal.js")))
		throw new Error("dist/ is missing: run `npm run build` (npm test does)");
	work = await tempDir();
	prefix = join(work, "prefix");
	// --ignore-scripts: `npm test` has just built dist/; the prepack build would rewrite it under
	// the tests running in parallel.
	const packed = JSON.parse(
		(
			await npm(
				["pack", "--json", "--ignore-scripts", "--pack-destination", work],
				ROOT,
			)
		).stdout,
	);
	tarball = join(work, packed[0].filename);
	expect(packed[0].filename).toBe("dadi-0.1.0.tgz");
	await mkdir(join(work, "unpacked"));
	await exec("tar", ["xzf", tarball, "-C", join(work, "unpacked")]);
	files = await listFiles(join(work, "unpacked", "package"));
	const r = await npm(
		[
			"install",
			"-g",
			"--prefix",
			prefix,
			"--allow-scripts=koffi,zstd-napi,protobufjs",
			// metadata already in npm's cache is not asked for again: faster, same result
			"--prefer-offline",
			"--no-audit",
			"--no-fund",
			tarball,
		],
		work,
	);
	installLog = r.stdout + r.stderr;
}, 600_000);
afterAll(cleanupTempDirs);

describe("the packed tarball", () => {
	it("holds the compiled programs, their sources, docs and policies, and nothing else", () => {
		for (const f of [
			"package.json",
			"README.md",
			"dist/src/cli/dadi-seal.js",
			"dist/src/cli/dadi-guest.js",
			"dist/src/cli/dadi-broker.js",
			"src/cli/dadi-seal.ts",
			"policies/snp-production.json",
			"docs/operations.md",
		])
			expect(files).toContain(f);
		const allowed =
			/^(package\.json|README\.md|dist\/src\/.+|src\/.+|policies\/.+|docs\/.+)$/;
		expect(files.filter((f) => !allowed.test(f))).toEqual([]);
		// no tests, benchmarks, build scripts, the guest bundle or trust-anchor notes
		expect(
			files.filter((f) =>
				/(^|\/)(test|bench|scripts|keys|guest\/dadi-guest\.mjs)(\/|$)/.test(f),
			),
		).toEqual([]);
	});

	it("carries no private keys or key files", async () => {
		expect(
			files.filter((f) => /\.(jwk|pem|key|p12|env)$|\.npmrc$/.test(f)),
		).toEqual([]);
		for (const f of files) {
			const text = await readFile(
				join(work, "unpacked", "package", f),
				"latin1",
			);
			expect(text, f).not.toMatch(/-----BEGIN [A-Z ]*PRIVATE KEY-----/);
			expect(text, f).not.toMatch(/"(k|d)"\s*:\s*"[A-Za-z0-9_-]{40,}"/);
		}
	});

	it("does not run a build at install (no prepare or install scripts of its own)", async () => {
		const pkg = JSON.parse(
			await readFile(join(work, "unpacked", "package", "package.json"), "utf8"),
		);
		for (const s of ["preinstall", "install", "postinstall", "prepare"])
			expect(pkg.scripts?.[s], s).toBeUndefined();
		expect(pkg.private).toBe(true);
		// Every program the repository declares, each shipped compiled.
		expect(Object.keys(pkg.bin).sort()).toEqual(await declaredPrograms());
		for (const file of Object.values(pkg.bin) as string[])
			expect(files).toContain(file);
	});
});

describe("npm install -g of the tarball", () => {
	it("is silent about install scripts and builds the native modules", async () => {
		expect(installLog).not.toMatch(/install-scripts|allowScripts/);
		const dadi = join(prefix, "lib/node_modules/dadi");
		const built = join(
			dadi,
			"node_modules/zstd-napi/build/Release/binding.node",
		);
		expect((await stat(built)).size).toBeGreaterThan(100_000);
		// a copy, not a link into the repository
		expect(relative(prefix, await realpath(dadi))).toBe(
			"lib/node_modules/dadi",
		);
		expect((await readdir(join(prefix, "bin"))).sort()).toEqual(
			await declaredPrograms(),
		);
	});

	it("installs programs that run outside the repository", async () => {
		expect((await must(installed("dadi-seal", ["--help"]))).stdout).toMatch(
			/^Usage: dadi-seal /m,
		);
		expect((await must(installed("dadi-guest", ["--help"]))).stdout).toMatch(
			/^Usage: dadi-guest /m,
		);
		expect(
			(await must(installed("dadi-broker", ["--version"]))).stdout.trim(),
		).toBe("0.1.0");
		const k = JSON.parse(
			(
				await must(
					installed("dadi-seal", ["keygen", "--out", "k.jwk", "--json"]),
				)
			).stdout,
		);
		expect(k.ok).toBe(true);
		expect((await stat(join(work, "k.jwk"))).mode & 0o777).toBe(0o600);
	});

	it("seals with zstd and reads back through the installed native modules", async () => {
		const disk = await writeDisk(join(work, "disk.img"), 1_000_000, [
			{ at: 0, bytes: texty("install", 800_000) },
		]);
		await must(
			installed("dadi-seal", [
				"seal",
				"raw:disk.img",
				"oci:./img:v1",
				"--key",
				"k.jwk",
				"--compress",
				"zstd",
				"--quiet",
			]),
		);
		await must(
			installed("dadi-guest", [
				"export",
				"oci:./img:v1",
				"--key",
				"k.jwk",
				"--out",
				"out.img",
				"--quiet",
			]),
		);
		expect((await readFile(join(work, "out.img"))).equals(disk)).toBe(true);
	});
});

/** The programs package.json declares (bin), sorted. */
async function declaredPrograms(): Promise<string[]> {
	const pkg = JSON.parse(await readFile(join(ROOT, "package.json"), "utf8"));
	const names = Object.keys(pkg.bin).sort();
	expect(names).toEqual(
		expect.arrayContaining(["dadi-broker", "dadi-guest", "dadi-seal"]),
	);
	return names;
}
