/**
 * Resolving paths inside a root directory the way a container sees them: symlinks are followed,
 * but *within* the root. An absolute target is re-rooted at the root, ".." never climbs above it,
 * and more than MAX_SYMLINKS expansions in one lookup is a loop. This is the rule of Go's
 * securejoin (used by umoci, runc, containerd), done one component at a time with lstat so that no
 * symlink is ever followed by the kernel.
 *
 * Only directories are resolved this way: callers resolve an entry's *parent* and then operate on
 * parent + basename without following the last component (unlink, O_EXCL|O_NOFOLLOW, lchown,
 * lutimes, lsetxattr, link without AT_SYMLINK_FOLLOW). So every path handed to the OS is the real
 * root followed by components that were seen to be real directories, and nothing outside the root
 * is touched.
 *
 * The staging directory belongs to the seal process alone; nothing else renames entries in it while
 * a layer is applied, so checking a component and then using it is safe here. (Without that
 * assumption this would need openat2(RESOLVE_IN_ROOT), which Node has no binding for.)
 */
import { lstatSync, readlinkSync, realpathSync, type Stats } from "node:fs";
import { DadiError } from "../errors.js";
import { errnoCode, ioError } from "./apply-errors.js";

/** Symlink expansions allowed in one lookup before it is called a loop (Linux's own limit). */
export const MAX_SYMLINKS = 40;

export type DirLookup =
	/** `rel` is a real directory (relative to the root, "" for the root itself). */
	| { kind: "dir"; rel: string }
	/** `rel` (already resolved) does not exist, so nothing below it does either. */
	| { kind: "missing"; rel: string }
	/** `rel` (already resolved) exists but is neither a directory nor a symlink. */
	| { kind: "notdir"; rel: string };

export interface LookupOptions {
	/** The entry being applied, for messages. */
	entry: string;
	/**
	 * Create a missing directory `rel` (its parent exists and is a real directory); when absent, a
	 * missing component ends the lookup with kind "missing".
	 */
	mkdir?: (rel: string) => void;
}

/** `parent/name` for relative paths, where "" is the root. */
export function joinRel(parent: string, name: string): string {
	return parent === "" ? name : `${parent}/${name}`;
}

/** The parent of a non-empty relative path ("" for a top-level name). */
export function parentRel(rel: string): string {
	const i = rel.lastIndexOf("/");
	return i < 0 ? "" : rel.slice(0, i);
}

export class RootResolver {
	/**
	 * Resolved paths known to be real directories (not symlinks). Every change to the tree goes
	 * through the applier, which calls forget() when it removes one, so the cache stays true; it
	 * saves an lstat per component per entry.
	 */
	private readonly dirs = new Set<string>();

	private constructor(readonly root: string) {}

	/** Opens `root`, which must be an existing directory (symlinks to it are resolved once, here). */
	static open(root: string): RootResolver {
		let real: string;
		try {
			real = realpathSync(root);
			const st = lstatSync(real);
			if (!st.isDirectory())
				throw new DadiError(
					"USAGE",
					`${root}: the layer root is not a directory`,
				);
		} catch (e) {
			if (e instanceof DadiError) throw e;
			if (errnoCode(e) === "ENOENT")
				throw new DadiError(
					"INPUT_NOT_FOUND",
					`${root}: the layer root does not exist`,
				);
			throw ioError(".", root, "open the layer root", e);
		}
		if (real === "/")
			throw new DadiError(
				"USAGE",
				`${root}: refusing to apply a layer to the host's root directory`,
			);
		return new RootResolver(real);
	}

	/** The absolute host path of a resolved relative path. */
	abs(rel: string): string {
		return rel === "" ? this.root : `${this.root}/${rel}`;
	}

	/** Records that `rel` is now a real directory (the caller just made or found one). */
	noteDir(rel: string): void {
		if (rel !== "") this.dirs.add(rel);
	}

	/** Forgets `rel` and everything below it (the caller removed or replaced it). */
	forget(rel: string): void {
		if (!this.dirs.delete(rel)) return; // nothing below an uncached path is cached
		const prefix = `${rel}/`;
		for (const d of this.dirs) if (d.startsWith(prefix)) this.dirs.delete(d);
	}

	/**
	 * Whether `rel` and each of its ancestors is a real directory (no symlink anywhere): a path
	 * recorded earlier that is still safe to use as it is.
	 */
	isRealDir(rel: string): boolean {
		if (rel === "") return true;
		let prefix = "";
		for (const c of rel.split("/")) {
			prefix = joinRel(prefix, c);
			if (this.dirs.has(prefix)) continue;
			try {
				if (!lstatSync(this.abs(prefix)).isDirectory()) return false;
			} catch (e) {
				const code = errnoCode(e);
				if (code === "ENOENT" || code === "ENOTDIR") return false;
				throw ioError(rel, this.abs(prefix), "look up", e);
			}
			this.dirs.add(prefix);
		}
		return true;
	}

	/**
	 * Resolves `components` (relative to the root; "" and "." are ignored, ".." goes up but never
	 * above the root) as a directory, following symlinks inside the root. Throws INPUT_INVALID on a
	 * symlink loop, IO on an OS failure.
	 */
	lookupDir(components: readonly string[], opts: LookupOptions): DirLookup {
		// Components still to walk, last one first (so pop() takes the next).
		const todo = [...components].reverse();
		const cur: string[] = [];
		let links = 0;
		while (todo.length > 0) {
			const c = todo.pop() as string;
			if (c === "" || c === ".") continue;
			if (c === "..") {
				cur.pop(); // at the root, ".." is the root
				continue;
			}
			const rel = joinRel(cur.join("/"), c);
			if (this.dirs.has(rel)) {
				cur.push(c);
				continue;
			}
			const abs = this.abs(rel);
			let st: Stats | undefined;
			try {
				st = lstatSync(abs, { throwIfNoEntry: false });
			} catch (e) {
				throw ioError(opts.entry, abs, "look up", e);
			}
			if (st === undefined) {
				if (!opts.mkdir) return { kind: "missing", rel };
				opts.mkdir(rel);
				this.dirs.add(rel);
				cur.push(c);
				continue;
			}
			if (st.isSymbolicLink()) {
				if (++links > MAX_SYMLINKS)
					throw new DadiError(
						"INPUT_INVALID",
						`layer entry ${JSON.stringify(opts.entry)}: too many levels of symbolic links (more than ${MAX_SYMLINKS}) resolving ${JSON.stringify(components.join("/"))}: a symlink loop`,
					);
				let target: string;
				try {
					target = readlinkSync(abs);
				} catch (e) {
					throw ioError(opts.entry, abs, "read the symlink", e);
				}
				if (target.startsWith("/")) cur.length = 0; // re-rooted at the root
				const parts = target.split("/");
				for (let i = parts.length - 1; i >= 0; i--)
					todo.push(parts[i] as string);
				continue;
			}
			if (st.isDirectory()) {
				this.dirs.add(rel);
				cur.push(c);
				continue;
			}
			return { kind: "notdir", rel };
		}
		return { kind: "dir", rel: cur.join("/") };
	}
}
