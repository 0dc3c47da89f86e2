/**
 * /proc/self/mountinfo, parsed (a pure function of its text) and read. Each line:
 * `id parent major:minor root mount-point options [optional fields...] - fstype source super-options`,
 * with space, tab, newline and backslash in paths written as \ooo octal escapes.
 */
import { readFileSync } from "node:fs";

export interface MountEntry {
	id: number;
	parent: number;
	/** "major:minor" of the mounted file system. */
	device: string;
	mountPoint: string;
	fsType: string;
	/** What was mounted ("/dev/loop3", "dadi", "overlay", ...). */
	source: string;
	/** The file system's own options (overlay: lowerdir=…,upperdir=…), as written: \ooo escapes kept. */
	superOptions: string;
}

/** A path as mountinfo writes it. */
export function procEscape(path: string): string {
	return path.replace(
		/[ \t\n\\]/g,
		(c) => `\\${c.charCodeAt(0).toString(8).padStart(3, "0")}`,
	);
}

export function procUnescape(text: string): string {
	return text.replace(/\\([0-7]{3})/g, (_, o: string) =>
		String.fromCharCode(Number.parseInt(o, 8)),
	);
}

/** Every well-formed line, in order (a later entry on one mount point is on top). */
export function parseMountInfo(text: string): MountEntry[] {
	const out: MountEntry[] = [];
	for (const line of text.split("\n")) {
		const f = line.split(" ");
		const dash = f.indexOf("-", 6);
		if (dash < 0 || f.length < dash + 3) continue;
		const id = Number(f[0]);
		const parent = Number(f[1]);
		if (!Number.isInteger(id) || !Number.isInteger(parent)) continue;
		out.push({
			id,
			parent,
			device: f[2] as string,
			mountPoint: procUnescape(f[4] as string),
			fsType: f[dash + 1] as string,
			source: procUnescape(f[dash + 2] as string),
			superOptions: f.slice(dash + 3).join(" "),
		});
	}
	return out;
}

/** This process's mounts; empty when /proc is not there. */
export function readMounts(): MountEntry[] {
	try {
		return parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8"));
	} catch {
		return [];
	}
}

/** The topmost mount on `dir` (an absolute, resolved path), if any. */
export function mountAt(
	mounts: readonly MountEntry[],
	dir: string,
): MountEntry | undefined {
	let found: MountEntry | undefined;
	for (const m of mounts) if (m.mountPoint === dir) found = m;
	return found;
}
