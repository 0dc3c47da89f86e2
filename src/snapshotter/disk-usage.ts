/**
 * What a directory tree takes, as containerd measures it (continuity's fs.DiskUsage): every distinct
 * inode (by device and inode number, so hard links count once) adds one to `inodes` and its
 * allocated blocks × 512 to `size`. Symbolic links are not followed.
 */
import { lstat, readdir } from "node:fs/promises";
import { join } from "node:path";
import { fromSystemError } from "../errors.js";
import type { Usage } from "./types.js";

export async function diskUsage(root: string): Promise<Usage> {
	const seen = new Set<string>();
	let size = 0n;
	const visit = async (path: string): Promise<void> => {
		const st = await lstat(path, { bigint: true });
		const id = `${st.dev}:${st.ino}`;
		if (!seen.has(id)) {
			seen.add(id);
			size += st.blocks * 512n;
		}
		if (!st.isDirectory()) return;
		for (const name of await readdir(path)) await visit(join(path, name));
	};
	try {
		await visit(root);
	} catch (e) {
		throw fromSystemError(e, root, "measuring disk usage");
	}
	return { size: Number(size), inodes: seen.size };
}
