/**
 * Variant E of the cold-start bench (issue 18): eStargz through the stargz snapshotter and
 * containerd. Debian ships ctr-remote (package stargz-snapshotter) and the snapshotter's library
 * source (golang-github-containerd-stargz-snapshotter-dev) but not its daemon, so the bench builds
 * one: bench/stargz-grpc/main.go (the library's service package served as a proxy snapshotter)
 * with Debian's Go in GOPATH mode against /usr/share/gocode. The library's service/resolver/cri.go
 * imports the CRI API, which Debian does not package; the build copies the stargz-snapshotter
 * tree into a private GOPATH entry in the bench cache, without that one file, ahead of
 * /usr/share/gocode. The binary is cached by the hash of main.go and the Go version.
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { copyFile, mkdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type Daemon, startDaemonProcess } from "./coldstart-proc.js";

const GOCODE = "/usr/share/gocode/src";
const LIB = "github.com/containerd/stargz-snapshotter";

export function stargzMissing(): string | null {
	for (const [cmd, pkg] of [
		["go", "golang-go"],
		["ctr-remote", "stargz-snapshotter"],
		["containerd", "containerd"],
		["runc", "runc"],
	] as const)
		if (spawnSync("sh", ["-c", `command -v ${cmd}`]).status !== 0)
			return `${cmd} not found (Debian: apt-get install ${pkg})`;
	if (!existsSync(join(GOCODE, LIB, "service/service.go")))
		return `${join(GOCODE, LIB)} not found (Debian: apt-get install golang-github-containerd-stargz-snapshotter-dev)`;
	return null;
}

/** Builds (or finds cached) the snapshotter daemon; returns its path. */
export async function buildStargzGrpc(
	repo: string,
	cacheDir: string,
	log: (line: string) => void,
): Promise<string> {
	const main = readFileSync(join(repo, "bench/stargz-grpc/main.go"));
	const goVersion = spawnSync("go", ["version"], { encoding: "utf8" }).stdout;
	const tag = createHash("sha256")
		.update(main)
		.update(goVersion)
		.digest("hex")
		.slice(0, 12);
	const dir = join(cacheDir, "stargz-grpc");
	const bin = join(dir, `stargz-grpc-${tag}`);
	if (existsSync(bin)) return bin;
	log("building the stargz snapshotter daemon with Debian's Go (cached)...");
	const work = join(dir, `build.${process.pid}.tmp`);
	await rm(work, { recursive: true, force: true });
	try {
		const gopath = join(work, "gopath");
		const libCopy = join(gopath, "src", LIB);
		await mkdir(join(gopath, "src/github.com/containerd"), { recursive: true });
		const cp = spawnSync("cp", ["-a", join(GOCODE, LIB), libCopy]);
		if (cp.status !== 0) throw new Error("cp of the stargz library failed");
		await rm(join(libCopy, "service/resolver/cri.go"));
		const pkg = join(gopath, "src/dadi-bench/stargz-grpc");
		await mkdir(pkg, { recursive: true });
		await writeFile(join(pkg, "main.go"), main);
		const out = join(work, "stargz-grpc");
		const r = spawnSync("go", ["build", "-o", out, "."], {
			cwd: pkg,
			encoding: "utf8",
			env: {
				...process.env,
				GO111MODULE: "off",
				GOPATH: `${gopath}:/usr/share/gocode`,
				GOCACHE: join(dir, "gocache"),
				GOFLAGS: "",
			},
		});
		if (r.status !== 0)
			throw new Error(
				`go build: ${(r.stderr || r.stdout).trim().slice(-1500)}`,
			);
		await mkdir(dir, { recursive: true });
		await copyFile(out, `${bin}.tmp`);
		await rename(`${bin}.tmp`, bin);
		spawnSync("chmod", ["+x", bin]);
		return bin;
	} finally {
		await rm(work, { recursive: true, force: true });
	}
}

/** The snapshotter daemon for one run: its own root, socket and resolver config. */
export async function startStargz(
	bin: string,
	dir: string,
	registryHost: string,
): Promise<Daemon & { socket: string }> {
	await mkdir(dir, { recursive: true });
	const config = join(dir, "stargz.toml");
	await writeFile(
		config,
		[
			`[[resolver.host."${registryHost}".mirrors]]`,
			`host = "${registryHost}"`,
			"insecure = true",
			"",
		].join("\n"),
	);
	const socket = join(dir, "stargz.sock");
	const d = await startDaemonProcess(
		bin,
		["-root", join(dir, "root"), "-address", socket, "-config", config],
		join(dir, "stargz.log"),
		async () => existsSync(socket),
	);
	return { ...d, socket };
}
