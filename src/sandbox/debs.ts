/**
 * Debian packages for the sandbox guest, cached: `apt-get download NAME=VERSION` into
 * `<cache>/debs`, then `dpkg-deb -x` into `<cache>/pkgs/NAME_VERSION`, each reused when present.
 *
 * The I/O edge of the initramfs builder. Extraction goes to a temporary name renamed into place
 * when complete, so a killed build never leaves a half-extracted directory that looks finished;
 * downloads likewise land in a private temporary directory first.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, readdir, rename, rm, stat } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { DadiError } from "../errors.js";

export interface Deb {
	name: string;
	version: string;
	/** The .deb in the cache. */
	file: string;
	sha256: string;
}

/** `$DADI_CACHE/sandbox`, else `~/.cache/dadi/sandbox`. */
export function defaultSandboxCache(): string {
	const base = process.env.DADI_CACHE;
	return base ? join(base, "sandbox") : join(homedir(), ".cache/dadi/sandbox");
}

/** Runs a tool and returns its stdout; failure is an IO DadiError quoting its stderr. */
export function tool(
	cmd: string,
	args: string[],
	cwd?: string,
): Promise<string> {
	return new Promise((resolve, reject) => {
		execFile(
			cmd,
			args,
			{ cwd, maxBuffer: 64 << 20, env: { ...process.env, LC_ALL: "C" } },
			(err, stdout, stderr) => {
				if (err)
					reject(
						new DadiError(
							(err as NodeJS.ErrnoException).code === "ENOENT"
								? "INPUT_NOT_FOUND"
								: "IO",
							`${cmd} ${args.join(" ")}: ${String(stderr).trim() || err.message}`,
							{ cause: err },
						),
					);
				else resolve(String(stdout));
			},
		);
	});
}

/** The concrete package a metapackage depends on first whose name starts with `prefix`. */
export function parseAptDepends(
	output: string,
	prefix: string,
): string | undefined {
	for (const line of output.split("\n")) {
		const m = /^\s*(?:\|)?Depends:\s*(\S+)/.exec(line);
		if (m?.[1]?.startsWith(prefix) && !m[1].startsWith("<")) return m[1];
	}
	return undefined;
}

/** The Candidate: version in `apt-cache policy` output. */
export function parseAptCandidate(output: string): string | undefined {
	const m = /^\s*Candidate:\s*(\S+)/m.exec(output);
	return m?.[1] && m[1] !== "(none)" ? m[1] : undefined;
}

/** `linux-image-amd64` → e.g. `linux-image-6.1.0-57-amd64` (apt-cache depends). */
export async function resolveKernelPackage(
	meta = "linux-image-amd64",
): Promise<string> {
	const name = parseAptDepends(
		await tool("apt-cache", ["depends", meta]),
		"linux-image-",
	);
	if (!name)
		throw new DadiError(
			"INPUT_NOT_FOUND",
			`apt-cache depends ${meta} names no linux-image-* package (run apt-get update?)`,
		);
	return name;
}

/** dpkg-query's format for the version field (a literal "${Version}", not a template). */
const VERSION_FORMAT = ["$", "{Version}"].join("");

/** The version dpkg has installed (`name` may carry an architecture, `libc6:amd64`). */
export async function installedVersion(name: string): Promise<string> {
	const v = (
		await tool("dpkg-query", ["-W", "-f", VERSION_FORMAT, name])
	).trim();
	if (!v)
		throw new DadiError("INPUT_NOT_FOUND", `package ${name} is not installed`);
	return v;
}

/** The version apt would install. */
export async function candidateVersion(name: string): Promise<string> {
	const v = parseAptCandidate(await tool("apt-cache", ["policy", name]));
	if (!v)
		throw new DadiError(
			"INPUT_NOT_FOUND",
			`apt-cache policy ${name}: no candidate version (run apt-get update?)`,
		);
	return v;
}

export async function sha256File(path: string): Promise<string> {
	const h = createHash("sha256");
	for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
	return h.digest("hex");
}

async function exists(path: string): Promise<boolean> {
	try {
		await stat(path);
		return true;
	} catch {
		return false;
	}
}

const safe = (s: string) => s.replaceAll(":", "%3a");

/** Downloads NAME=VERSION into `<cache>/debs` unless it is there, and checks what it got. */
export async function fetchDeb(
	cache: string,
	name: string,
	version: string,
): Promise<Deb> {
	const dir = join(cache, "debs");
	const file = join(dir, `${name}_${safe(version)}_amd64.deb`);
	if (!(await exists(file))) {
		const tmp = join(dir, `.download-${process.pid}-${name}`);
		await rm(tmp, { recursive: true, force: true });
		await mkdir(tmp, { recursive: true });
		try {
			// As root apt warns that it downloads "unsandboxed" (the _apt user cannot write here): harmless.
			await tool("apt-get", ["download", `${name}=${version}`], tmp);
			const got = (await readdir(tmp)).filter((f) => f.endsWith(".deb"));
			if (got.length !== 1 || !got[0])
				throw new DadiError(
					"IO",
					`apt-get download ${name}=${version} gave ${got.length} .deb files`,
				);
			await rename(join(tmp, got[0]), file);
		} finally {
			await rm(tmp, { recursive: true, force: true });
		}
	}
	const fields = (
		await tool("dpkg-deb", ["-f", file, "Package", "Version"])
	).trim();
	if (fields !== `Package: ${name}\nVersion: ${version}`)
		throw new DadiError(
			"INPUT_INVALID",
			`${file} is not ${name} ${version}: ${fields.replaceAll("\n", ", ")}`,
		);
	return { name, version, file, sha256: await sha256File(file) };
}

/** `dpkg-deb -x` of `deb` into `<cache>/pkgs/NAME_VERSION` (reused when present). */
export async function extractDeb(cache: string, deb: Deb): Promise<string> {
	const dir = join(cache, "pkgs");
	const out = join(dir, `${deb.name}_${safe(deb.version)}`);
	if (await exists(out)) return out;
	await mkdir(dir, { recursive: true });
	const tmp = join(dir, `.extract-${process.pid}-${deb.name}`);
	await rm(tmp, { recursive: true, force: true });
	try {
		await tool("dpkg-deb", ["-x", deb.file, tmp]);
		try {
			await rename(tmp, out);
		} catch (e) {
			// another build extracted the same package first
			if (!(await exists(out))) throw e;
		}
	} finally {
		await rm(tmp, { recursive: true, force: true });
	}
	return out;
}
