/**
 * Builds the sandbox guest: Debian's kernel and an uncompressed initramfs holding busybox-static,
 * node (this machine's, with the Debian libraries it links), the single-file dadi-guest, the
 * kernel modules it needs and /init (docs/sandbox.md).
 *
 * Output is cached under `<cache>/initramfs/<key>/` where key hashes every input (package names,
 * versions and .deb digests, node's version and digest, the bundle's digest, /init, the module
 * list), with a manifest.json naming them all and the digests of what was built. The archive is
 * deterministic (src/sandbox/cpio.ts), so the same inputs give the same bytes on any machine.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import {
	lstat,
	mkdir,
	open,
	readdir,
	readFile,
	readlink,
	realpath,
	rename,
	rm,
	stat,
	writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { DadiError, fromSystemError } from "../errors.js";
import { type CpioEntry, cpioArchive, withParents } from "./cpio.js";
import {
	candidateVersion,
	type Deb,
	defaultSandboxCache,
	extractDeb,
	fetchDeb,
	installedVersion,
	resolveKernelPackage,
	sha256File,
} from "./debs.js";
import {
	GUEST_MODULES,
	type GuestModule,
	resolveGuestModules,
} from "./guest-modules.js";
import { INIT_SCRIPT, UNPACK_SENTINEL } from "./init-script.js";
import { configHasPvh, extractVmlinux } from "./vmlinux.js";

/** Bumped when the layout changes in a way the other inputs do not capture. */
const LAYOUT_VERSION = 2;
/** The libraries node links (ldd): libc6 (libc, libm, libdl, libpthread, ld-linux), libstdc++6, libgcc-s1. */
const LIBRARY_PACKAGES = ["libc6", "libstdc++6", "libgcc-s1"];

export interface BuildOptions {
	/** The single-file dadi-guest (dist/guest/dadi-guest.mjs). */
	bundle: string;
	cache?: string;
	/** The node binary to put in the guest; default this process's. */
	node?: string;
	modules?: readonly GuestModule[];
	onProgress?: (message: string) => void;
}

export interface Manifest {
	layoutVersion: number;
	key: string;
	packages: { name: string; version: string; sha256: string }[];
	kernel: {
		package: string;
		release: string;
		/** Debian's bzImage, kept as `vmlinuz`. */
		sha256: string;
		bytes: number;
		/** "pvh": QEMU boots `vmlinux` (the bzImage's ELF kernel, uncompressed); "bzimage": `vmlinuz`. */
		boot: "pvh" | "bzimage";
		vmlinux?: { sha256: string; bytes: number };
	};
	node: { version: string; sha256: string; bytes: number };
	bundle: { sha256: string; bytes: number };
	init: { sha256: string };
	modules: { name: string; params: string; file: string }[];
	missingSoftdeps: string[];
	initramfs: { sha256: string; bytes: number; entries: number; files: number };
}

export interface BuiltGuest {
	dir: string;
	/** What to give QEMU's -kernel: vmlinux (PVH) or vmlinuz. */
	kernel: string;
	initramfs: string;
	manifest: Manifest;
	cached: boolean;
}

function sha256(b: Uint8Array | string): string {
	return createHash("sha256").update(b).digest("hex");
}

async function exists(p: string): Promise<boolean> {
	try {
		await stat(p);
		return true;
	} catch {
		return false;
	}
}

/** Files, directories and symlinks under `root/sub`, as archive entries at the same paths. */
async function treeEntries(
	root: string,
	sub: string,
	skip: (rel: string) => boolean,
	out: CpioEntry[],
): Promise<void> {
	const here = join(root, sub);
	if (!(await exists(here))) return;
	const st = await lstat(here);
	if (skip(sub)) return;
	if (st.isSymbolicLink())
		out.push({ type: "symlink", path: sub, target: await readlink(here) });
	else if (st.isDirectory()) {
		out.push({ type: "dir", path: sub, mode: st.mode & 0o7777 });
		for (const name of (await readdir(here)).sort())
			await treeEntries(root, `${sub}/${name}`, skip, out);
	} else if (st.isFile())
		out.push({
			type: "file",
			path: sub,
			mode: st.mode & 0o7777,
			data: await readFile(here),
		});
}

/** Merges entry lists: identical directories once, any other repeated path is an error. */
function merge(lists: CpioEntry[][]): CpioEntry[] {
	const byPath = new Map<string, CpioEntry>();
	for (const list of lists)
		for (const e of list) {
			const had = byPath.get(e.path);
			if (had === undefined) byPath.set(e.path, e);
			else if (had.type !== "dir" || e.type !== "dir")
				throw new DadiError(
					"INPUT_INVALID",
					`the guest image has two entries at ${e.path}`,
				);
		}
	return [...byPath.values()];
}

function busyboxApplets(busybox: string): Promise<string[]> {
	return new Promise((resolve, reject) => {
		execFile(busybox, ["--list-full"], (err, stdout) => {
			if (err)
				reject(
					new DadiError("IO", `${busybox} --list-full: ${err.message}`, {
						cause: err,
					}),
				);
			else
				resolve(
					String(stdout)
						.split("\n")
						.filter((l) => /^[a-z0-9/._[-]+$/.test(l) && l !== "bin/busybox"),
				);
		});
	});
}

async function writeParts(path: string, parts: Buffer[]): Promise<void> {
	const fh = await open(path, "w");
	try {
		for (let i = 0; i < parts.length; i += 512)
			await fh.writev(parts.slice(i, i + 512));
		await fh.sync();
	} finally {
		await fh.close();
	}
}

function kernelFile(dir: string, m: Manifest): string {
	return join(dir, m.kernel.boot === "pvh" ? "vmlinux" : "vmlinuz");
}

/** Builds (or finds in the cache) the guest kernel and initramfs. */
export async function buildGuest(opts: BuildOptions): Promise<BuiltGuest> {
	const cache = opts.cache ?? defaultSandboxCache();
	const say = opts.onProgress ?? (() => {});
	const wanted = opts.modules ?? GUEST_MODULES;

	say("resolving package versions");
	const kernelPackage = await resolveKernelPackage();
	const versions: [string, string][] = [
		[kernelPackage, await candidateVersion(kernelPackage)],
	];
	for (const p of LIBRARY_PACKAGES)
		versions.push([p, await installedVersion(`${p}:amd64`)]);
	versions.push(["busybox-static", await candidateVersion("busybox-static")]);

	const debs: Deb[] = [];
	for (const [name, version] of versions) {
		say(`package ${name} ${version}`);
		debs.push(await fetchDeb(cache, name, version));
	}
	const nodePath = await realpath(opts.node ?? process.execPath);
	const nodeBytes = await readFile(nodePath).catch((e) => {
		throw fromSystemError(e, nodePath, "reading node");
	});
	const bundleBytes = await readFile(opts.bundle).catch((e) => {
		throw new DadiError(
			"INPUT_NOT_FOUND",
			`${opts.bundle}: ${(e as Error).message} (run \`npm run build:guest\` first)`,
		);
	});
	const nodeVersion =
		opts.node === undefined
			? process.version
			: await new Promise<string>((resolve, reject) =>
					execFile(nodePath, ["--version"], (err, out) =>
						err ? reject(err) : resolve(String(out).trim()),
					),
				);
	const trees = new Map<string, string>();
	for (const d of debs) {
		say(`extracting ${d.name}`);
		trees.set(d.name, await extractDeb(cache, d));
	}
	const kernelTree = trees.get(kernelPackage) as string;
	const release = kernelPackage.replace(/^linux-image-/, "");
	const modulesDir = join(kernelTree, "lib/modules", release);
	say("reading kernel module dependencies");
	const { modules, missingSoftdeps } = await resolveGuestModules(
		modulesDir,
		wanted,
	);

	const inputs = {
		layoutVersion: LAYOUT_VERSION,
		packages: debs.map((d) => ({
			name: d.name,
			version: d.version,
			sha256: d.sha256,
		})),
		node: { version: nodeVersion, sha256: sha256(nodeBytes) },
		bundle: { sha256: sha256(bundleBytes) },
		init: { sha256: sha256(INIT_SCRIPT) },
		modules: modules.map((m) => ({
			name: m.name,
			params: m.params,
			file: m.rel,
		})),
		missingSoftdeps,
	};
	const key = sha256(JSON.stringify(inputs)).slice(0, 32);
	const dir = join(cache, "initramfs", key);
	const done = {
		dir,
		initramfs: join(dir, "initramfs.cpio"),
	};
	if (await exists(join(dir, "manifest.json"))) {
		say(`cached: ${dir}`);
		const manifest = JSON.parse(
			await readFile(join(dir, "manifest.json"), "utf8"),
		) as Manifest;
		return {
			...done,
			kernel: kernelFile(dir, manifest),
			manifest,
			cached: true,
		};
	}

	say("assembling the initramfs");
	const base: CpioEntry[] = [
		...[
			"bin",
			"sbin",
			"usr/bin",
			"usr/sbin",
			"dev",
			"proc",
			"sys",
			"run",
			"root",
			"etc/dadi",
			"opt/dadi",
			"lib/modules",
		].map((path): CpioEntry => ({ type: "dir", path })),
		{ type: "dir", path: "tmp", mode: 0o1777 },
		{ type: "chardev", path: "dev/console", major: 5, minor: 1 },
		{ type: "chardev", path: "dev/null", mode: 0o666, major: 1, minor: 3 },
		{ type: "file", path: "init", mode: 0o755, data: Buffer.from(INIT_SCRIPT) },
		{
			type: "file",
			path: "etc/dadi/modules",
			data: Buffer.from(
				modules
					.map((m) => `${m.name}${m.params ? ` ${m.params}` : ""}\n`)
					.join(""),
			),
		},
		{
			type: "file",
			path: "etc/hosts",
			data: Buffer.from("127.0.0.1 localhost\n"),
		},
		{ type: "file", path: UNPACK_SENTINEL, data: Buffer.alloc(0) },
		{ type: "file", path: "usr/bin/node", mode: 0o755, data: nodeBytes },
		{
			type: "file",
			path: "opt/dadi/dadi-guest.mjs",
			mode: 0o755,
			data: bundleBytes,
		},
	];
	for (const m of modules)
		base.push({
			type: "file",
			path: `lib/modules/${m.name}.ko`,
			data: await readFile(m.file),
		});
	const busyboxTree = trees.get("busybox-static") as string;
	const busybox = join(busyboxTree, "bin/busybox");
	base.push({
		type: "file",
		path: "bin/busybox",
		mode: 0o755,
		data: await readFile(busybox),
	});
	const taken = new Set(base.map((e) => e.path));
	for (const a of await busyboxApplets(busybox))
		if (!taken.has(a))
			base.push({ type: "symlink", path: a, target: "/bin/busybox" });

	const libs: CpioEntry[] = [];
	const skip = (rel: string) =>
		rel.startsWith("usr/share") ||
		rel.startsWith("usr/lib/x86_64-linux-gnu/gconv") ||
		rel.startsWith("usr/lib/x86_64-linux-gnu/audit");
	for (const p of LIBRARY_PACKAGES)
		for (const sub of ["lib", "lib64", "usr/lib"])
			await treeEntries(trees.get(p) as string, sub, skip, libs);
	const entries = withParents(merge([base, libs]));
	const archive = cpioArchive(entries);
	const last = entries
		.map((e) => e.path)
		.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
	if (last[last.length - 1] !== UNPACK_SENTINEL)
		throw new DadiError(
			"INTERNAL",
			`${UNPACK_SENTINEL} is not the initramfs's last entry`,
		);

	const tmp = join(cache, "initramfs", `.build-${process.pid}-${key}`);
	await rm(tmp, { recursive: true, force: true });
	await mkdir(tmp, { recursive: true });
	try {
		await writeParts(join(tmp, "initramfs.cpio"), archive.parts);
		const vmlinuz = await readFile(
			join(kernelTree, "boot", `vmlinuz-${release}`),
		);
		await writeFile(join(tmp, "vmlinuz"), vmlinuz);
		const config = await readFile(
			join(kernelTree, "boot", `config-${release}`),
			"utf8",
		);
		let vmlinux: { sha256: string; bytes: number } | undefined;
		if (configHasPvh(config)) {
			say("extracting vmlinux from the bzImage (PVH boot)");
			await extractVmlinux(vmlinuz, join(tmp, "vmlinux"));
			const elf = await readFile(join(tmp, "vmlinux"));
			if (elf.readUInt32BE(0) !== 0x7f454c46)
				throw new DadiError(
					"FORMAT_INVALID",
					"the bzImage's payload is not an ELF kernel",
				);
			vmlinux = { sha256: sha256(elf), bytes: elf.length };
		}
		const h = createHash("sha256");
		for (const p of archive.parts) h.update(p);
		const manifest: Manifest = {
			layoutVersion: LAYOUT_VERSION,
			key,
			packages: inputs.packages,
			kernel: {
				package: kernelPackage,
				release,
				sha256: sha256(vmlinuz),
				bytes: vmlinuz.length,
				boot: vmlinux ? "pvh" : "bzimage",
				...(vmlinux ? { vmlinux } : {}),
			},
			node: { ...inputs.node, bytes: nodeBytes.length },
			bundle: { ...inputs.bundle, bytes: bundleBytes.length },
			init: inputs.init,
			modules: inputs.modules,
			missingSoftdeps,
			initramfs: {
				sha256: h.digest("hex"),
				bytes: archive.size,
				entries: entries.length,
				files: entries.filter((e) => e.type === "file").length,
			},
		};
		await writeFile(
			join(tmp, "manifest.json"),
			`${JSON.stringify(manifest, null, "\t")}\n`,
		);
		try {
			await rename(tmp, dir);
		} catch (e) {
			// another build of the same inputs finished first: its output is the same bytes
			if (!(await exists(join(dir, "manifest.json"))))
				throw fromSystemError(e, dir, "storing the built guest");
		}
		say(`built: ${dir}`);
		return {
			...done,
			kernel: kernelFile(dir, manifest),
			manifest,
			cached: false,
		};
	} finally {
		await rm(tmp, { recursive: true, force: true });
	}
}

/** Checks a built guest's files against its manifest (sha256 of the initramfs). */
export async function verifyGuest(g: BuiltGuest): Promise<boolean> {
	return (await sha256File(g.initramfs)) === g.manifest.initramfs.sha256;
}
