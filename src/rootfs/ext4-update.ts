/**
 * Allocation stability: instead of rebuilding the ext4 image of every layer from the whole tree
 * (which moves every file after the first change), the previous layer's image is updated in place
 * with debugfs: what the layer removed is removed, what it added or changed is written from the
 * staging directory, everything else keeps its blocks. Only then does an upper layer store just
 * the chunks that changed.
 *
 * The plan is computed from the tree before the layer (a snapshot), the paths the layer's entries
 * named, and the staging tree after it. Anything the plan cannot express safely (names
 * debugfs cannot quote, entries reached through a symlinked directory) makes `updateExt4InPlace`
 * return the reason, and the caller rebuilds the image from the staging tree instead.
 */
import { randomBytes } from "node:crypto";
import { lstatSync, readdirSync, readlinkSync, type Stats } from "node:fs";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { OnProgress } from "../progress.js";
import { runDebugfs } from "./debugfs.js";
import { quotable } from "./mkfs.js";
import { lgetxattr, llistxattr, splitDev } from "./native.js";

export type NodeKind = "dir" | "file" | "other";

/** A tree before a layer: path ("a/b") → kind, and the names of each regular file by inode (for hard links). */
export interface TreeSnapshot {
	kinds: Map<string, NodeKind>;
	linked: Map<number, string[]>;
}

export function snapshotTree(root: string): TreeSnapshot {
	const kinds = new Map<string, NodeKind>();
	const linked = new Map<number, string[]>();
	const walk = (rel: string): void => {
		for (const name of readdirSync(join(root, rel))) {
			const p = rel ? `${rel}/${name}` : name;
			const st = lstatSync(join(root, p));
			kinds.set(p, st.isDirectory() ? "dir" : st.isFile() ? "file" : "other");
			if (st.isFile()) linked.set(st.ino, [...(linked.get(st.ino) ?? []), p]);
			if (st.isDirectory()) walk(p);
		}
	};
	walk("");
	return { kinds, linked };
}

const WH = ".wh.";
const OPQ = ".wh..wh..opq";

function parentOf(p: string): string {
	const i = p.lastIndexOf("/");
	return i < 0 ? "" : p.slice(0, i);
}

function depth(p: string): number {
	return p === "" ? 0 : p.split("/").length;
}

function q(p: string): string {
	return `"/${p}"`;
}

/** All paths of `old` at or under `p`. */
function subtree(old: TreeSnapshot, p: string): string[] {
	return [...old.kinds.keys()].filter((k) => k === p || k.startsWith(`${p}/`));
}

/** debugfs's mknod takes a name in the current directory, not a path: change into the parent. */
function mknod(p: string, spec: string): string[] {
	const parent = parentOf(p);
	return [
		`cd ${parent === "" ? '"/"' : q(parent)}`,
		`mknod "${p.slice(p.lastIndexOf("/") + 1)}" ${spec}`,
		`cd "/"`,
	];
}

export interface UpdatePlan {
	script: string[];
	/** xattr values to write to files the script reads (`ea_set -f`). */
	values: { file: string; value: Buffer }[];
}

/** The debugfs commands that turn the old image into the staging tree, or null when not safe. */
export function planExt4Update(
	staging: string,
	old: TreeSnapshot,
	touched: readonly string[],
	timestamp: number,
	valueDir: string,
): UpdatePlan | string {
	const stat = (p: string): Stats | undefined => {
		try {
			return lstatSync(join(staging, p));
		} catch {
			return undefined;
		}
	};
	// Entries reached through a symlinked directory land elsewhere than their names say.
	const viaSymlink = (p: string): boolean => {
		for (let a = parentOf(p); a !== ""; a = parentOf(a))
			if (stat(a)?.isSymbolicLink()) return true;
		return false;
	};
	const remove = new Set<string>();
	const wanted = new Set<string>();
	for (const t of touched) {
		if (t === "." || t === "") continue;
		if (!quotable(t)) return `"${t}": a name debugfs cannot quote`;
		if (viaSymlink(t)) return `"${t}": reached through a symlinked directory`;
		const base = t.slice(t.lastIndexOf("/") + 1);
		const dir = parentOf(t);
		if (base === OPQ) {
			for (const k of subtree(old, dir)) if (k !== dir) remove.add(k);
			continue;
		}
		if (base.startsWith(WH)) {
			const target = dir
				? `${dir}/${base.slice(WH.length)}`
				: base.slice(WH.length);
			for (const k of subtree(old, target)) remove.add(k);
			continue;
		}
		wanted.add(t);
	}
	// What is replaced goes first: anything but a directory that stays a directory.
	for (const p of wanted) {
		const was = old.kinds.get(p);
		const now = stat(p);
		if (was !== undefined && !(was === "dir" && now?.isDirectory()))
			for (const k of subtree(old, p)) remove.add(k);
	}
	// Parents the applier created on the way (and parents of removed entries, for their times).
	const create = new Set<string>();
	for (const p of wanted)
		for (let a = p; a !== ""; a = parentOf(a)) create.add(a);
	const script: string[] = [];
	for (const p of [...remove].sort(
		(a, b) => depth(b) - depth(a) || (a < b ? -1 : 1),
	)) {
		if (!quotable(p)) return `"${p}": a name debugfs cannot quote`;
		script.push(old.kinds.get(p) === "dir" ? `rmdir ${q(p)}` : `rm ${q(p)}`);
	}
	const values: UpdatePlan["values"] = [];
	const at = `@${timestamp}`;
	const touchedDirs = new Set<string>();
	const made = new Map<number, string>(); // staging inode → the name written for it
	const relink = new Map<number, { name: string; nlink: number }>();
	for (const p of [...create].sort(
		(a, b) => depth(a) - depth(b) || (a < b ? -1 : 1),
	)) {
		const st = stat(p);
		if (!st) continue; // gone again by the end of the layer
		const present = old.kinds.has(p) && !remove.has(p);
		if (!present) {
			if (st.isDirectory()) script.push(`mkdir ${q(p)}`);
			else if (st.isFile()) {
				// Hard links: the first name of an inode is written (or found among the names the
				// image already has), the others are linked to it; link counts are set at the end.
				const rep =
					st.nlink > 1
						? (made.get(st.ino) ??
							(old.linked.get(st.ino) ?? []).find(
								(n) => !remove.has(n) && stat(n)?.ino === st.ino,
							))
						: undefined;
				if (rep !== undefined) {
					if (!quotable(rep)) return `"${rep}": a name debugfs cannot quote`;
					script.push(`ln ${q(rep)} ${q(p)}`);
					relink.set(st.ino, { name: rep, nlink: st.nlink });
				} else {
					if (!quotable(join(staging, p)))
						return `"${p}": a staging path debugfs cannot quote`;
					script.push(`write "${join(staging, p)}" ${q(p)}`);
					if (st.nlink > 1) made.set(st.ino, p);
				}
			} else if (st.isSymbolicLink()) {
				const target = readlinkSync(join(staging, p));
				if (!quotable(target))
					return `"${p}": a symlink target debugfs cannot quote`;
				script.push(`symlink ${q(p)} "${target}"`);
			} else if (st.isFIFO()) script.push(...mknod(p, "p"));
			else if (st.isCharacterDevice() || st.isBlockDevice()) {
				const { major, minor } = splitDev(st.rdev);
				script.push(
					...mknod(
						p,
						`${st.isCharacterDevice() ? "c" : "b"} ${major} ${minor}`,
					),
				);
			} else return `"${p}": an entry of unknown type`;
		} else if (!st.isDirectory()) continue; // unchanged non-directory (an ancestor we only walked through)
		if (st.isDirectory()) touchedDirs.add(p);
		script.push(
			`sif ${q(p)} mode 0${(st.mode & 0o177777).toString(8)}`,
			`sif ${q(p)} uid ${st.uid}`,
			`sif ${q(p)} gid ${st.gid}`,
			`sif ${q(p)} mtime @${Math.floor(st.mtimeMs / 1000)}`,
			`sif ${q(p)} ctime ${at}`,
			`sif ${q(p)} atime ${at}`,
		);
		if (!present || st.isDirectory()) {
			for (const name of llistxattr(join(staging, p))) {
				if (!quotable(name) || name.includes(" "))
					return `"${p}": an xattr name debugfs cannot quote`;
				const value = lgetxattr(join(staging, p), name) ?? Buffer.alloc(0);
				const file = join(valueDir, `v${values.length}`);
				values.push({ file, value });
				script.push(`ea_set -f "${file}" ${q(p)} ${name}`);
			}
		}
	}
	for (const { name, nlink } of relink.values())
		script.push(`sif ${q(name)} links_count ${nlink}`);
	// Directories whose entries changed: their times as the staging tree has them.
	const parents = new Set<string>();
	for (const p of [...remove, ...create]) parents.add(parentOf(p));
	for (const d of parents) {
		if (touchedDirs.has(d)) continue;
		const st = stat(d);
		if (!st?.isDirectory()) continue;
		const target = d === "" ? '"/"' : q(d);
		script.push(
			`sif ${target} mtime @${Math.floor(st.mtimeMs / 1000)}`,
			`sif ${target} ctime ${at}`,
			`sif ${target} atime ${at}`,
		);
	}
	return { script, values };
}

/**
 * Applies the plan to `image`. Returns null when done, or why it could not be done (then the image
 * must be rebuilt from the staging tree: it may be half updated).
 */
export async function updateExt4InPlace(
	image: string,
	staging: string,
	old: TreeSnapshot,
	touched: readonly string[],
	timestamp: number,
	/** "updating ext4 in place", in debugfs commands done. */
	onProgress?: OnProgress,
): Promise<string | null> {
	const valueDir = `${image}.${randomBytes(4).toString("hex")}.xattrs`;
	const plan = planExt4Update(staging, old, touched, timestamp, valueDir);
	if (typeof plan === "string") return plan;
	try {
		if (plan.values.length > 0) {
			await mkdir(valueDir);
			for (const v of plan.values) await writeFile(v.file, v.value);
		}
		const { errors } = await runDebugfs(image, plan.script, {
			writable: true,
			fakeTime: timestamp,
			onProgress:
				onProgress &&
				((done, total) =>
					onProgress({
						phase: "updating ext4 in place",
						done,
						total,
						unit: "commands",
					})),
		});
		if (errors.length > 0) return `debugfs: ${errors.slice(0, 3).join(" / ")}`;
		return null;
	} finally {
		await rm(valueDir, { recursive: true, force: true });
	}
}
