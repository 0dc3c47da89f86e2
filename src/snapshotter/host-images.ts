/**
 * Host mode's serving side: one `dadi-guest serve --mount-at` process per sealed image (up to a
 * given layer) that containers on this host use. Each runs detached, in a directory of its own:
 *
 *   ROOT/dadi/images/ID/mnt               the image's file system, mounted read-only (overlay lower)
 *   ROOT/dadi/images/ID/run-config.json   the image's own run settings (0600; for dadi-runc)
 *   ROOT/dadi/images/ID/state.json        pid, image, layers, start time
 *   ROOT/dadi/images/ID/ready.json        the serve's ready document (its stdout)
 *   ROOT/dadi/images/ID/serve.log         its log (stderr)
 *
 * The processes outlive the snapshotter (their containers keep running across its restarts); a new
 * snapshotter adopts live ones and cleans up after dead ones. The snapshotter itself never holds
 * an image key: the serve process gets it (key directory or key broker) and decrypts.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, openSync } from "node:fs";
import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { DadiError } from "../errors.js";
import { mountAt, readMounts } from "../guest/mountinfo.js";
import {
	cleanupChain,
	findChains,
	fuseAlive,
	readLoopDevices,
} from "../guest/stale-mounts.js";
import { writeFileAtomic } from "../oci/layout.js";
import { hostImagesDir, RUN_CONFIG_FILE } from "../runtime/host-rootfs.js";

export interface HostImagesOptions {
	/** The snapshotter's root. */
	root: string;
	/** The dadi-guest program (dist/src/cli/dadi-guest.js). */
	guestProgram: string;
	/**
	 * Key and registry flags for every serve (--key-dir/--broker…, --insecure, --ca-file…);
	 * undefined when the snapshotter was given no key source (sealed images then cannot start).
	 */
	serveArgs: readonly string[] | undefined;
	/** A base directory for persistent chunk caches: one subdirectory per instance. */
	cacheDir?: string;
	/** How long a serve may take to attest, fetch the index and mount (default 120 s). */
	readyTimeoutMs?: number;
	log: (line: string) => void;
}

interface State {
	pid: number;
	image: string;
	layers: number;
	startedAt: string;
}

export class HostImages {
	readonly #starting = new Map<string, Promise<string>>();
	readonly #dir: string;

	constructor(private readonly o: HostImagesOptions) {
		this.#dir = hostImagesDir(o.root);
	}

	/** The instance id of an image served up to `layers` layers. */
	static idOf(image: string, layers: number): string {
		return createHash("sha256")
			.update(`${image}\n${layers}`)
			.digest("hex")
			.slice(0, 32);
	}

	/** The mounted file system of the image up to `layers`, serving it first if needed. */
	ensure(image: string, layers: number): Promise<string> {
		if (!this.o.serveArgs)
			return Promise.reject(
				new DadiError(
					"USAGE",
					`${image} is sealed, and this dadi-snapshotter has no key source: start it with --key-dir DIR or --broker URL (host mode), or use a runtime class whose snapshotter runs with --mode guest`,
				),
			);
		const id = HostImages.idOf(image, layers);
		let p = this.#starting.get(id);
		if (!p) {
			p = this.#ensure(id, image, layers).finally(() =>
				this.#starting.delete(id),
			);
			this.#starting.set(id, p);
		}
		return p;
	}

	async #ensure(id: string, image: string, layers: number): Promise<string> {
		const dir = join(this.#dir, id);
		const mnt = join(dir, "mnt");
		const state = await readState(dir);
		if (state && (await this.#alive(state, mnt))) return mnt;
		if (state) {
			this.o.log(
				`host image ${id}: its serve (pid ${state.pid}) is gone; starting it again`,
			);
			await this.stopId(id);
		}
		await mkdir(mnt, { recursive: true, mode: 0o700 });
		const out = openSync(join(dir, "ready.json"), "w", 0o600);
		const err = openSync(join(dir, "serve.log"), "a", 0o600);
		let pid: number | undefined;
		try {
			const child = spawn(
				process.execPath,
				[
					this.o.guestProgram,
					"serve",
					image,
					"--mount-at",
					mnt,
					"--layers",
					String(layers),
					"--run-config",
					join(dir, RUN_CONFIG_FILE),
					"--json",
					...(this.o.cacheDir
						? ["--cache-dir", join(this.o.cacheDir, id)]
						: []),
					...(this.o.serveArgs ?? []),
				],
				{ detached: true, stdio: ["ignore", out, err] },
			);
			child.unref();
			pid = child.pid;
			if (pid === undefined)
				throw new DadiError("IO", `cannot start dadi-guest serve for ${image}`);
			const exited = new Promise<number | null>((r) => child.once("exit", r));
			await writeFileAtomic(
				join(dir, "state.json"),
				`${JSON.stringify({ pid, image, layers, startedAt: new Date().toISOString() } satisfies State)}\n`,
				0o600,
			);
			await this.#waitReady(dir, image, exited);
			this.o.log(
				`host image ${id}: serving ${image} (${layers} layers) at ${mnt}, pid ${pid}`,
			);
			return mnt;
		} catch (e) {
			if (pid !== undefined) await this.stopId(id).catch(() => {});
			throw e;
		} finally {
			closeSync(out);
			closeSync(err);
		}
	}

	async #waitReady(
		dir: string,
		image: string,
		exited: Promise<number | null>,
	): Promise<void> {
		let code: number | null | undefined;
		void exited.then((c) => {
			code = c;
		});
		const deadline = performance.now() + (this.o.readyTimeoutMs ?? 120_000);
		for (;;) {
			const text = await readFile(join(dir, "ready.json"), "utf8").catch(
				() => "",
			);
			try {
				if ((JSON.parse(text) as { ok?: unknown }).ok === true) return;
			} catch {
				// not written yet
			}
			if (code !== undefined || performance.now() > deadline) {
				const log = await readFile(join(dir, "serve.log"), "utf8").catch(
					() => "",
				);
				const last = log.trim().split("\n").slice(-3).join(" | ");
				throw new DadiError(
					code !== undefined ? "IO" : "NETWORK",
					`serving ${image} ${code !== undefined ? `failed (exit ${code})` : "did not become ready in time"}: ${last.slice(0, 600) || "no output"}`,
				);
			}
			await new Promise((r) => setTimeout(r, 50));
		}
	}

	/** Whether the recorded serve still runs and still has the image mounted. */
	async #alive(s: State, mnt: string): Promise<boolean> {
		try {
			process.kill(s.pid, 0);
		} catch {
			return false;
		}
		const cmdline = await readFile(`/proc/${s.pid}/cmdline`, "utf8").catch(
			() => "",
		);
		if (!cmdline.includes("serve") || !cmdline.includes(mnt)) return false;
		return mountAt(readMounts(), mnt) !== undefined;
	}

	/** Stops the serve of an image (up to `layers`) and removes its directory. */
	async stop(image: string, layers: number): Promise<void> {
		await this.stopId(HostImages.idOf(image, layers));
	}

	/** Stops the serve of one instance (by id) and removes its directory; idempotent. */
	async stopId(id: string): Promise<void> {
		const dir = join(this.#dir, id);
		const mnt = join(dir, "mnt");
		const s = await readState(dir);
		if (s && (await this.#alive(s, mnt))) {
			process.kill(s.pid, "SIGTERM");
			for (let i = 0; i < 150 && isRunning(s.pid); i++)
				await new Promise((r) => setTimeout(r, 100));
			if (isRunning(s.pid)) {
				this.o.log(
					`host image ${id}: serve pid ${s.pid} ignored SIGTERM; killing it`,
				);
				process.kill(s.pid, "SIGKILL");
			}
		}
		// Whatever a killed serve left mounted (file system, loop device, FUSE) goes too.
		const chains = findChains(
			readMounts(),
			readLoopDevices(),
			fuseAlive,
		).filter((c) => !c.alive && c.loops.some((l) => l.mounts.includes(mnt)));
		for (const c of chains) await cleanupChain(c);
		if (mountAt(readMounts(), mnt))
			throw new DadiError(
				"IO",
				`${mnt}: still mounted after stopping its serve`,
			);
		await rm(dir, { recursive: true, force: true });
	}

	/** At start: keeps live serves, removes what dead ones left; returns the live instance ids. */
	async adopt(): Promise<string[]> {
		const ids = await readdir(this.#dir).catch(() => [] as string[]);
		const live: string[] = [];
		for (const id of ids) {
			if (!/^[0-9a-f]{32}$/.test(id)) continue;
			const dir = join(this.#dir, id);
			const s = await readState(dir);
			if (s && (await this.#alive(s, join(dir, "mnt")))) live.push(id);
			else await this.stopId(id);
		}
		return live;
	}
}

function isRunning(pid: number): boolean {
	try {
		process.kill(pid, 0);
		return true;
	} catch {
		return false;
	}
}

async function readState(dir: string): Promise<State | undefined> {
	try {
		const s = JSON.parse(
			await readFile(join(dir, "state.json"), "utf8"),
		) as State;
		return Number.isSafeInteger(s.pid) && s.pid > 1 ? s : undefined;
	} catch {
		return undefined;
	}
}
