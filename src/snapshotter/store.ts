/**
 * The snapshotter's root directory (docs/snapshotter.md):
 *
 *   ROOT/lock              pid lock: one snapshotter process per root
 *   ROOT/metadata.json     every snapshot's record (metadata-codec.ts), replaced atomically
 *   ROOT/snapshots/ID/fs   a snapshot's files (the overlay upper dir, or the bind mount source)
 *   ROOT/snapshots/ID/work the overlay work dir (active snapshots)
 *
 * Crash safety: metadata.json is the only commit point. It is written to a temporary file, fsynced,
 * renamed over the old one and the directory fsynced (durable-file.ts), so after a crash at any
 * instant it holds the state before or after an operation, whole. Directories are made before the
 * record that owns them is written (a new snapshot: made under a temporary name, renamed to its id,
 * the parent directory fsynced) and removed after the record is gone, so a crash can only leave a
 * directory no record owns — an orphan, removed at the next start and by Cleanup. Never the other
 * way round: a record always has its directory.
 */
import {
	chown,
	lstat,
	mkdir,
	mkdtemp,
	readdir,
	readFile,
	realpath,
	rename,
	rm,
	stat,
} from "node:fs/promises";
import { join, resolve } from "node:path";
import { fsyncDir, writeFileDurable } from "../durable-file.js";
import { DadiError, fromSystemError } from "../errors.js";
import { readMounts } from "../guest/mountinfo.js";
import { acquirePidLock, releasePidLock } from "../pid-lock.js";
import { MNT_DETACH, umount2 } from "../rootfs/native.js";
import { decodeMetadata, encodeMetadata } from "./metadata-codec.js";
import { emptyState, type State } from "./model.js";
import type { Kind } from "./types.js";

const MAX_METADATA_BYTES = 256 * 1024 * 1024;

export class Store {
	private constructor(
		readonly root: string,
		private readonly lock: string,
		public state: State,
	) {}

	get snapshotsDir(): string {
		return join(this.root, "snapshots");
	}
	get metadataFile(): string {
		return join(this.root, "metadata.json");
	}
	dir(id: string): string {
		return join(this.snapshotsDir, id);
	}
	upper(id: string): string {
		return join(this.snapshotsDir, id, "fs");
	}
	work(id: string): string {
		return join(this.snapshotsDir, id, "work");
	}

	/** Creates the root if needed, locks it, loads the metadata and removes orphan directories. */
	static async open(
		rootDir: string,
		log: (line: string) => void,
	): Promise<Store> {
		let root = resolve(rootDir);
		// Overlay options separate directories with ":" and options with ",".
		if (/[:,\n]/.test(root))
			throw new DadiError(
				"USAGE",
				`--root ${rootDir}: the path may not contain ":", "," or a newline (they separate overlay mount options)`,
			);
		try {
			await mkdir(root, { recursive: true, mode: 0o700 });
			// The real path: mount points below it are recognised in /proc/self/mountinfo.
			root = await realpath(root);
		} catch (e) {
			throw fromSystemError(e, root, "creating the snapshotter root");
		}
		if (/[:,\n]/.test(root))
			throw new DadiError(
				"USAGE",
				`--root ${rootDir}: its real path ${root} contains ":", "," or a newline (they separate overlay mount options)`,
			);
		const lock = await acquirePidLock(
			join(root, "lock"),
			`snapshotter root ${root}`,
		);
		try {
			const file = join(root, "metadata.json");
			let state = emptyState();
			let bytes: Buffer | undefined;
			try {
				const st = await stat(file);
				if (st.size > MAX_METADATA_BYTES)
					throw new DadiError(
						"FORMAT_INVALID",
						`${file}: larger than ${MAX_METADATA_BYTES} bytes`,
					);
				bytes = await readFile(file);
			} catch (e) {
				if ((e as NodeJS.ErrnoException).code !== "ENOENT")
					throw fromSystemError(e, file, "reading the snapshotter metadata");
			}
			if (bytes) state = decodeMetadata(bytes, file);
			try {
				await mkdir(join(root, "snapshots"), { mode: 0o700 });
				await fsyncDir(root);
			} catch (e) {
				if ((e as NodeJS.ErrnoException).code !== "EEXIST")
					throw fromSystemError(e, root, "creating the snapshots directory");
			}
			const store = new Store(root, lock, state);
			// Temporary metadata files a crash left behind.
			for (const n of await readdir(root))
				if (/^metadata\.json\.[0-9a-f]+\.tmp$/.test(n))
					await rm(join(root, n), { force: true });
			const removed = await store.removeOrphans(log);
			if (removed.length > 0)
				log(
					`removed ${removed.length} directories no snapshot owns (left by an interrupted operation): ${removed.join(", ")}`,
				);
			for (const [key, r] of state.snapshots)
				if (!(await exists(store.upper(r.id))))
					log(
						`warning: snapshot ${JSON.stringify(key)} has no directory ${store.upper(r.id)} (removed by hand?)`,
					);
			return store;
		} catch (e) {
			await releasePidLock(lock);
			throw e;
		}
	}

	/** Persists `next` as the new state (the commit point of every operation), then adopts it. */
	async save(next: State): Promise<void> {
		await writeFileDurable(
			this.metadataFile,
			encodeMetadata(next),
			"writing the snapshotter metadata",
		);
		this.state = next;
	}

	/**
	 * Makes snapshots/ID with fs (0755; owned like `ownerOf` when given, as containerd does for a
	 * child of a parent) and, for active snapshots, work (0711): built under a temporary name and
	 * renamed into place, then made durable.
	 */
	async createDir(id: string, kind: Kind, ownerOf?: string): Promise<void> {
		const final = this.dir(id);
		let tmp: string | undefined;
		try {
			tmp = await mkdtemp(join(this.snapshotsDir, "new-"));
			await mkdir(join(tmp, "fs"), { mode: 0o755 });
			if (kind === "active") await mkdir(join(tmp, "work"), { mode: 0o711 });
			if (ownerOf) {
				const st = await stat(ownerOf);
				await chown(join(tmp, "fs"), st.uid, st.gid);
			}
			// An id at or above nextId is never owned: whatever is there is an orphan of a crash.
			await this.removeDir(id);
			await rename(tmp, final);
			tmp = undefined;
			await fsyncDir(this.snapshotsDir);
		} catch (e) {
			if (tmp) await rm(tmp, { recursive: true, force: true }).catch(() => {});
			throw fromSystemError(e, final, "creating a snapshot directory");
		}
	}

	/**
	 * Removes snapshots/ID. Anything mounted below it (a remote layer's mount, a leftover overlay)
	 * is detached first, so the removal can never reach into another file system.
	 */
	async removeDir(id: string): Promise<void> {
		const dir = this.dir(id);
		const inside = readMounts()
			.map((m) => m.mountPoint)
			.filter((p) => p === dir || p.startsWith(`${dir}/`))
			.sort((a, b) => b.length - a.length);
		for (const p of inside) {
			try {
				umount2(p, MNT_DETACH);
			} catch (e) {
				throw new DadiError(
					"IO",
					`${p} is mounted inside snapshot directory ${dir} and could not be unmounted (${(e as Error).message}); not removing it`,
				);
			}
		}
		try {
			await rm(dir, { recursive: true, force: true });
		} catch (e) {
			throw fromSystemError(e, dir, "removing a snapshot directory");
		}
	}

	/** Removes every entry of snapshots/ that no record owns; returns their names. */
	async removeOrphans(log: (line: string) => void): Promise<string[]> {
		const owned = new Set([...this.state.snapshots.values()].map((r) => r.id));
		let names: string[];
		try {
			names = await readdir(this.snapshotsDir);
		} catch (e) {
			throw fromSystemError(
				e,
				this.snapshotsDir,
				"listing snapshot directories",
			);
		}
		const removed: string[] = [];
		for (const n of names) {
			if (owned.has(n)) continue;
			try {
				await this.removeDir(n);
				removed.push(n);
			} catch (e) {
				log(`warning: cannot remove ${this.dir(n)}: ${(e as Error).message}`);
			}
		}
		if (removed.length > 0) await fsyncDir(this.snapshotsDir).catch(() => {});
		return removed;
	}

	async close(): Promise<void> {
		await releasePidLock(this.lock);
	}
}

async function exists(path: string): Promise<boolean> {
	try {
		await lstat(path);
		return true;
	} catch {
		return false;
	}
}
