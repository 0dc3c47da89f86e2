/**
 * The cold-start bench's image (issue 18), built once and cached under the bench cache: a real
 * two-layer Debian image. Layer 1 is Debian bookworm minbase made by mmdebstrap from Debian's
 * packages (the host's mirror); layer 2 is `apt-get install python3 python3-numpy` on top of it,
 * the difference computed by umoci (unpack, replace the root with the installed tree, repack).
 * The packages and their versions, and each layer's compressed and unpacked size, are recorded.
 */
import { spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import {
	lutimes,
	mkdir,
	readdir,
	readFile,
	rename,
	rm,
	stat,
	writeFile,
} from "node:fs/promises";
import { join } from "node:path";

/** Bump when the recipe changes: older cached images are not reused. */
const RECIPE = 2;
export const TAG = "py";
const MIRROR = "http://deb.debian.org/debian";
const SUITE = "bookworm";
const EXTRA = ["python3", "python3-numpy"];

export interface ColdImage {
	/** OCI layout directory; the image is `${dir}:${TAG}`. */
	dir: string;
	tag: string;
	cached: boolean;
	recipe: number;
	description: string;
	layers: {
		what: string;
		digest: string;
		gzipBytes: number;
		unpackedBytes: number;
		files: number;
	}[];
	/** name → version of every package in the final image. */
	packages: Record<string, string>;
	/** Versions of the packages layer 2 added. */
	added: Record<string, string>;
}

/** What the image build needs that is missing; null when it can run. */
export function coldImageMissing(): string | null {
	for (const [cmd, pkg] of [
		["mmdebstrap", "mmdebstrap"],
		["umoci", "umoci"],
		["rsync", "rsync"],
	] as const)
		if (spawnSync("sh", ["-c", `command -v ${cmd}`]).status !== 0)
			return `${cmd} not found (Debian: apt-get install ${pkg})`;
	return null;
}

function sh(cmd: string, args: string[]): string {
	const r = spawnSync(cmd, args, {
		encoding: "utf8",
		maxBuffer: 256 << 20,
		env: { ...process.env, LC_ALL: "C" },
	});
	if (r.error !== undefined) throw r.error;
	if (r.status !== 0)
		throw new Error(
			`${cmd} ${args.join(" ")}: ${(r.stderr || r.stdout).trim().slice(-3000)}`,
		);
	return r.stdout;
}

function packagesOf(root: string): Record<string, string> {
	const out: Record<string, string> = {};
	for (const line of sh("dpkg-query", [
		"--admindir",
		join(root, "var/lib/dpkg"),
		"-W",
		"-f",
		// biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's format, not a template
		"${Package} ${Version}\n",
	]).split("\n")) {
		const [n, v] = line.split(" ");
		if (n && v) out[n] = v;
	}
	return out;
}

function duBytes(dir: string): { bytes: number; files: number } {
	const bytes = Number(sh("du", ["-sb", dir]).split("\t")[0]);
	const files = Number(
		sh("sh", ["-c", `find "$1" -xdev | wc -l`, "sh", dir]).trim(),
	);
	return { bytes, files };
}

export async function prepareColdImage(o: {
	cacheDir: string;
	workDir: string;
	log: (line: string) => void;
}): Promise<ColdImage> {
	const dir = join(o.cacheDir, `coldstart-debian-py-r${RECIPE}`);
	const metaPath = `${dir}.json`;
	try {
		const meta = JSON.parse(await readFile(metaPath, "utf8")) as ColdImage;
		if (meta.recipe === RECIPE) {
			for (const l of meta.layers)
				await stat(join(dir, "blobs/sha256", l.digest.slice(7)));
			return { ...meta, dir, cached: true };
		}
	} catch {
		// not cached: build it
	}
	const missing = coldImageMissing();
	if (missing !== null) throw new Error(missing);
	o.log(
		`building the cold-start image (Debian ${SUITE} minbase + ${EXTRA.join(" ")}; cached in ${o.cacheDir})...`,
	);
	await mkdir(o.cacheDir, { recursive: true });
	// Images of earlier recipes are not used any more.
	for (const name of await readdir(o.cacheDir))
		if (/^coldstart-debian-py-r\d+(\.json)?$/.test(name))
			await rm(join(o.cacheDir, name), { recursive: true, force: true });
	const tmp = `${dir}.${process.pid}.tmp`;
	const scratch = join(o.workDir, "coldstart-image");
	const drop = () => {
		rmSync(tmp, { recursive: true, force: true });
		rmSync(scratch, { recursive: true, force: true });
	};
	process.on("exit", drop);
	try {
		await rm(scratch, { recursive: true, force: true });
		await mkdir(scratch, { recursive: true });
		const baseTar = join(scratch, "base.tar");
		const full = join(scratch, "full");
		// One mmdebstrap: minbase; a hook saves that tree (without apt's lists and caches, as
		// mmdebstrap's own cleanup would leave it); then python3 + numpy installed by apt in the chroot.
		sh("mmdebstrap", [
			"--variant=minbase",
			"--mode=root",
			"--quiet",
			"--aptopt=Acquire::Retries 3",
			`--customize-hook=tar -C "$1" --numeric-owner --exclude=./var/lib/apt/lists/* --exclude=./var/cache/apt/* --exclude=./var/cache/ldconfig/aux-cache --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* --exclude=./tmp/* -cf ${baseTar} .`,
			`--customize-hook=chroot "$1" apt-get install -y --no-install-recommends ${EXTRA.join(" ")}`,
			SUITE,
			full,
			MIRROR,
		]);
		const baseRoot = join(scratch, "base");
		await mkdir(baseRoot);
		sh("tar", ["-C", baseRoot, "--numeric-owner", "-xpf", baseTar]);
		const basePkgs = packagesOf(baseRoot);
		const packages = packagesOf(full);
		const added = Object.fromEntries(
			Object.entries(packages).filter(([n]) => !(n in basePkgs)),
		);
		const baseSize = duBytes(baseRoot);
		const fullSize = duBytes(full);

		await rm(tmp, { recursive: true, force: true });
		sh("umoci", ["init", "--layout", tmp]);
		sh("umoci", ["new", "--image", `${tmp}:${TAG}`]);
		const bundle = join(scratch, "bundle");
		sh("umoci", ["unpack", "--image", `${tmp}:${TAG}`, bundle]);
		const rsync = (from: string) =>
			sh("rsync", [
				"-aHAX",
				"--delete",
				"--itemize-changes",
				"--exclude=/dev/*",
				"--exclude=/proc/*",
				"--exclude=/sys/*",
				"--exclude=/tmp/*",
				`${from}/`,
				`${bundle}/rootfs/`,
			]);
		rsync(baseRoot);
		sh("umoci", [
			"repack",
			"--refresh-bundle",
			"--image",
			`${tmp}:${TAG}`,
			bundle,
		]);
		// Layer 2 carries the parent directories of what it changes, as Docker's diff layers do
		// (umoci leaves out directories whose own metadata did not change; ctr-remote optimize then
		// fails to place a prioritised file's parent: 'failed to sort tar entries: file: "usr"').
		const changed = rsync(full)
			.split("\n")
			.filter((l) => l.length > 12 && !l.startsWith("*deleting"))
			.map((l) =>
				(l.slice(12).split(/ (?:->|=>) /)[0] as string).replace(/\/$/, ""),
			);
		const parents = new Set<string>();
		for (const f of changed)
			for (let d = f; d.includes("/"); ) {
				d = d.slice(0, d.lastIndexOf("/"));
				parents.add(d);
			}
		const now = new Date();
		for (const d of parents) await lutimes(join(bundle, "rootfs", d), now, now);
		sh("umoci", ["repack", "--image", `${tmp}:${TAG}`, bundle]);
		sh("umoci", [
			"config",
			"--image",
			`${tmp}:${TAG}`,
			"--tag",
			TAG,
			"--config.cmd",
			"/usr/bin/python3",
			"--config.env",
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		]);
		sh("umoci", ["gc", "--layout", tmp]);
		const index = JSON.parse(await readFile(join(tmp, "index.json"), "utf8"));
		const mdesc = index.manifests.find(
			(m: { annotations?: Record<string, string> }) =>
				m.annotations?.["org.opencontainers.image.ref.name"] === TAG,
		);
		const manifest = JSON.parse(
			await readFile(join(tmp, "blobs/sha256", mdesc.digest.slice(7)), "utf8"),
		) as { layers: { digest: string; size: number }[] };
		if (manifest.layers.length !== 2)
			throw new Error(`expected 2 layers, got ${manifest.layers.length}`);
		const l2 = {
			bytes: fullSize.bytes - baseSize.bytes,
			files: fullSize.files - baseSize.files,
		};
		const meta: Omit<ColdImage, "dir" | "cached"> = {
			tag: TAG,
			recipe: RECIPE,
			description: `Debian ${SUITE} minbase (${Object.keys(basePkgs).length} packages) + ${EXTRA.join(" ")} (python3 ${added.python3 ?? packages.python3}, numpy ${added["python3-numpy"] ?? "?"}; ${Object.keys(added).length} packages added)`,
			layers: [
				{
					what: `Debian ${SUITE} minbase (mmdebstrap)`,
					digest: manifest.layers[0]?.digest as string,
					gzipBytes: manifest.layers[0]?.size as number,
					unpackedBytes: baseSize.bytes,
					files: baseSize.files,
				},
				{
					what: `apt-get install ${EXTRA.join(" ")} (diff)`,
					digest: manifest.layers[1]?.digest as string,
					gzipBytes: manifest.layers[1]?.size as number,
					unpackedBytes: l2.bytes,
					files: l2.files,
				},
			],
			packages,
			added,
		};
		await rm(dir, { recursive: true, force: true });
		await rename(tmp, dir);
		await writeFile(metaPath, `${JSON.stringify(meta, null, "\t")}\n`);
		return { ...meta, dir, cached: false };
	} finally {
		process.off("exit", drop);
		drop();
	}
}
