/**
 * Finding a sealed image's run settings from a container's root file system in host mode. The
 * shim mounted the snapshotter's overlay at the bundle's rootfs; one of its lower directories is
 * the sealed image's file system that dadi-snapshotter mounted at
 * `ROOT/dadi/images/ID/mnt`, beside which it wrote the decrypted run settings
 * (`ROOT/dadi/images/ID/run-config.json`, mode 0600). Only that layout under the configured root is
 * trusted; everything else means "not a sealed image".
 */
import { constants } from "node:fs";
import { open } from "node:fs/promises";
import { dirname, join } from "node:path";
import { DadiError } from "../errors.js";
import {
	type MountEntry,
	mountAt,
	procUnescape,
	readMounts,
} from "../guest/mountinfo.js";
import { type RunConfig, runConfigOf } from "./run-config.js";

export const RUN_CONFIG_FILE = "run-config.json";

/** Where dadi-snapshotter keeps the images it serves in host mode. */
export function hostImagesDir(snapshotterRoot: string): string {
	return join(snapshotterRoot, "dadi", "images");
}

/** Splits on `sep` where it is not escaped with a backslash; unescapes `\\x` to `x`. */
function splitEscaped(text: string, sep: string): string[] {
	const out: string[] = [];
	let cur = "";
	for (let i = 0; i < text.length; i++) {
		const c = text[i] as string;
		if (c === "\\" && i + 1 < text.length) {
			cur += text[++i];
			continue;
		}
		if (c === sep) {
			out.push(cur);
			cur = "";
		} else cur += c;
	}
	out.push(cur);
	return out;
}

/**
 * An overlay mount's lower directories (topmost first). In mountinfo the kernel writes a comma,
 * space, tab, newline or backslash inside a value as \ooo, so options split on plain commas; a
 * colon or comma inside one directory name was given to mount(2) escaped with a backslash, which
 * shows as \134 before it.
 */
export function overlayLowerDirs(m: MountEntry): string[] {
	if (m.fsType !== "overlay") return [];
	for (const opt of m.superOptions.split(","))
		if (opt.startsWith("lowerdir="))
			return splitEscaped(
				procUnescape(opt.slice("lowerdir=".length)),
				":",
			).filter(Boolean);
	return [];
}

/** The sealed image's directory (ROOT/dadi/images/ID) among a mount's lower dirs, if any. */
export function sealedImageDir(
	lowerDirs: readonly string[],
	snapshotterRoot: string,
): string | undefined {
	const images = `${hostImagesDir(snapshotterRoot)}/`;
	for (const d of lowerDirs)
		if (
			d.startsWith(images) &&
			/^[A-Za-z0-9_-]{1,128}\/mnt$/.test(d.slice(images.length))
		)
			return dirname(d);
	return undefined;
}

export async function findHostRunConfig(
	rootfs: string,
	snapshotterRoot: string,
): Promise<RunConfig | undefined> {
	const m = mountAt(readMounts(), rootfs);
	if (!m) return undefined;
	const dir = sealedImageDir(overlayLowerDirs(m), snapshotterRoot);
	if (!dir) return undefined;
	const file = join(dir, RUN_CONFIG_FILE);
	const fh = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW).catch(
		(e) => {
			throw new DadiError(
				"INPUT_INVALID",
				`${file}: the sealed image's run settings are missing (${(e as Error).message}); restart dadi-snapshotter`,
			);
		},
	);
	try {
		const st = await fh.stat();
		if (
			!st.isFile() ||
			st.uid !== 0 ||
			(st.mode & 0o022) !== 0 ||
			st.size > 1 << 20
		)
			throw new DadiError(
				"INPUT_INVALID",
				`${file}: not a root-owned regular file of at most 1 MiB that only root can write`,
			);
		return runConfigOf(
			JSON.parse((await fh.readFile()).toString("utf8")),
			file,
		);
	} finally {
		await fh.close();
	}
}
