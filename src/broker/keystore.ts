/**
 * The broker's encrypted key store: resource values (image keys, ...) under
 * `<stateDir>/resources/REPO/TYPE/TAG.res` and the broker's own secrets (its token signing key, ...)
 * under `<stateDir>/internal/NAME.sec`. Each file is a small JSON envelope
 *
 *   {"v":1,"iv":b64u,"ct":b64u,"tag":b64u,"size":n,"updated":ISO}
 *
 * holding the value sealed with AES-256-GCM under HKDF-SHA256(master key, info "dadi-broker keystore
 * v1"). The AAD is "dadi-broker resource v1\0" + path (or "dadi-broker internal v1\0" + name), so a
 * file copied or renamed to another path fails to authenticate instead of serving the wrong key.
 * Nonces: a fresh random 96-bit IV per write under the one subkey; the store sees a few writes per
 * resource over its lifetime, far below the 2^32 random-nonce limit for GCM. `size` and `updated`
 * are plaintext bookkeeping for `list` (no decryption needed) and are not authenticated; `get`
 * checks `size` against the decrypted value anyway.
 *
 * One process owns a state directory (state-dir.ts takes a lock), so decrypted values are cached in
 * memory and a hot-path `get` does no file I/O; every mutation goes through this object and keeps
 * the cache right. Writes are atomic and durable: temporary file (0600) in the same directory,
 * write, fsync, rename, fsync the directory; new directories are 0700 and their parents fsynced.
 */

import {
	createCipheriv,
	createDecipheriv,
	hkdfSync,
	randomBytes,
} from "node:crypto";
import {
	type FileHandle,
	mkdir,
	open,
	readdir,
	rename,
	rm,
	rmdir,
	unlink,
} from "node:fs/promises";
import { join } from "node:path";
import { fsyncDir, writeViaTemp } from "../durable-file.js";
import { authFailed, DadiError, fromSystemError } from "../errors.js";
import {
	isResourceSegment,
	parseResourcePath as parseKbsPath,
} from "../policy/resource-pattern.js";
import { MASTER_KEY_BYTES } from "./master-key.js";

export { fsyncDir, writeViaTemp };

export const MAX_VALUE_BYTES = 64 * 1024;
const INTERNAL_NAME = /^[a-z0-9-]{1,64}$/;
const KEYSTORE_INFO = "dadi-broker keystore v1";
const RESOURCE_AAD = "dadi-broker resource v1\0";
const INTERNAL_AAD = "dadi-broker internal v1\0";
const IV_BYTES = 12;
const TAG_BYTES = 16;
/** A 64 KiB value is about 87 KiB of base64url; anything far larger is not one of our envelopes. */
const MAX_ENVELOPE_BYTES = 256 * 1024;
/** Names of our temporary files: `<final name>.<12 hex>.tmp`; never a valid `.res`/`.sec` name. */
const TEMP_NAME = /\.(res|sec)\.[0-9a-f]{12}\.tmp$/;

// --- crypto helpers (also used by state-dir.ts) ----------------------------------------------

/** HKDF-SHA256 of the master key with an empty salt and the given info label, 32 bytes. */
export function deriveSubkey(master: Buffer, info: string): Buffer {
	if (master.length !== MASTER_KEY_BYTES)
		throw new DadiError(
			"KEY_INVALID",
			`the broker master key must be ${MASTER_KEY_BYTES} bytes`,
		);
	return Buffer.from(
		hkdfSync("sha256", master, Buffer.alloc(0), Buffer.from(info, "utf8"), 32),
	);
}

export interface SealedBox {
	iv: string;
	ct: string;
	tag: string;
}

/** AES-256-GCM with a fresh random 96-bit IV; fields base64url. */
export function sealBox(
	key: Buffer,
	plaintext: Buffer,
	aad: Buffer,
): SealedBox {
	const iv = randomBytes(IV_BYTES);
	const c = createCipheriv("aes-256-gcm", key, iv, {
		authTagLength: TAG_BYTES,
	});
	c.setAAD(aad);
	const ct = Buffer.concat([c.update(plaintext), c.final()]);
	return {
		iv: iv.toString("base64url"),
		ct: ct.toString("base64url"),
		tag: c.getAuthTag().toString("base64url"),
	};
}

/** The plaintext of a box, or undefined when it is malformed or does not authenticate. */
export function openBox(
	key: Buffer,
	box: { iv?: unknown; ct?: unknown; tag?: unknown },
	aad: Buffer,
): Buffer | undefined {
	const iv = decodeB64u(box.iv);
	const ct = decodeB64u(box.ct);
	const tag = decodeB64u(box.tag);
	if (iv?.length !== IV_BYTES || tag?.length !== TAG_BYTES || !ct)
		return undefined;
	try {
		const d = createDecipheriv("aes-256-gcm", key, iv, {
			authTagLength: TAG_BYTES,
		});
		d.setAAD(aad);
		d.setAuthTag(tag);
		return Buffer.concat([d.update(ct), d.final()]);
	} catch {
		return undefined;
	}
}

/** Strict base64url: only the alphabet, no padding, canonical (unused trailing bits zero). */
export function decodeB64u(s: unknown): Buffer | undefined {
	if (typeof s !== "string" || !/^[A-Za-z0-9_-]*$/.test(s)) return undefined;
	const b = Buffer.from(s, "base64url");
	return b.toString("base64url") === s ? b : undefined;
}

// --- names -----------------------------------------------------------------------------------

export interface ResourcePath {
	repo: string;
	type: string;
	tag: string;
}

function shown(s: string): string {
	return JSON.stringify(s.length > 200 ? `${s.slice(0, 200)}…` : s);
}

/** Splits "REPO/TYPE/TAG" (the rules of src/policy/resource-pattern.ts); INPUT_INVALID otherwise. */
export function parseResourcePath(path: string): ResourcePath {
	const r = parseKbsPath(path, "the resource path", "INPUT_INVALID");
	return { repo: r.repository, type: r.type, tag: r.tag };
}

function checkInternalName(name: string): void {
	if (typeof name !== "string" || !INTERNAL_NAME.test(name))
		throw new DadiError(
			"INPUT_INVALID",
			`invalid internal secret name ${typeof name === "string" ? shown(name) : typeof name}: expected 1-64 characters of a-z 0-9 -`,
		);
}

function checkValue(value: Buffer): void {
	if (!(value instanceof Uint8Array))
		throw new DadiError("INPUT_INVALID", "a stored value must be bytes");
	if (value.length < 1 || value.length > MAX_VALUE_BYTES)
		throw new DadiError(
			"INPUT_INVALID",
			`a stored value must be 1 to ${MAX_VALUE_BYTES} bytes, not ${value.length}`,
		);
}

// --- files -----------------------------------------------------------------------------------

/** Creates each directory in order (0700) if missing, fsyncing the parent of each one created. */
async function ensureDirs(parent: string, dirs: string[]): Promise<void> {
	let up = parent;
	for (const d of dirs) {
		try {
			await mkdir(d, { mode: 0o700 });
			await fsyncDir(up);
		} catch (e) {
			if ((e as NodeJS.ErrnoException).code !== "EEXIST")
				throw fromSystemError(e, d, "creating a key store directory");
		}
		up = d;
	}
}

/** Atomic, durable replacement of `file` (in directory `dir`) with `data`, mode 0600. */
export function writeFileDurable(
	file: string,
	dir: string,
	data: Buffer,
): Promise<void> {
	return writeViaTemp(file, data, async (tmp) => {
		await rename(tmp, file);
		await fsyncDir(dir);
	}).catch((e) => {
		throw fromSystemError(e, file, "writing the key store");
	});
}

/** The bytes of a file, undefined if it does not exist, null if it is too large to be ours. */
async function readBounded(file: string): Promise<Buffer | undefined | null> {
	let fh: FileHandle | undefined;
	try {
		fh = await open(file, "r");
		const st = await fh.stat();
		if (!st.isFile() || st.size > MAX_ENVELOPE_BYTES) return null;
		const buf = Buffer.alloc(st.size + 1);
		let n = 0;
		for (;;) {
			const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
			if (bytesRead === 0) break;
			n += bytesRead;
			if (n === buf.length) return null; // grew while we read it
		}
		return buf.subarray(0, n);
	} catch (e) {
		if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
		throw fromSystemError(e, file, "reading the key store");
	} finally {
		await fh?.close().catch(() => {});
	}
}

async function entries(dir: string) {
	try {
		return await readdir(dir, { withFileTypes: true });
	} catch (e) {
		throw fromSystemError(e, dir, "listing the key store");
	}
}

interface Envelope {
	iv: string;
	ct: string;
	tag: string;
	size: number;
	updated: string;
}

const ENVELOPE_KEYS = ["ct", "iv", "size", "tag", "updated", "v"];

function parseEnvelope(bytes: Buffer): Envelope | undefined {
	let o: unknown;
	try {
		o = JSON.parse(bytes.toString("utf8"));
	} catch {
		return undefined;
	}
	if (typeof o !== "object" || o === null || Array.isArray(o)) return undefined;
	const r = o as Record<string, unknown>;
	if (Object.keys(r).sort().join() !== ENVELOPE_KEYS.join()) return undefined;
	const { v, iv, ct, tag, size, updated } = r;
	if (
		v !== 1 ||
		typeof iv !== "string" ||
		typeof ct !== "string" ||
		typeof tag !== "string" ||
		typeof size !== "number" ||
		!Number.isSafeInteger(size) ||
		size < 1 ||
		size > MAX_VALUE_BYTES ||
		typeof updated !== "string" ||
		updated.length > 64
	)
		return undefined;
	return { iv, ct, tag, size, updated };
}

/** Where one stored value lives and what binds it to its name. */
interface Slot {
	cache: Map<string, Buffer | null>;
	id: string;
	file: string;
	/** directories from the state dir down to the file's directory */
	dirs: string[];
	aad: Buffer;
	what: string;
}

export interface ResourceInfo {
	path: string;
	size: number;
	updated: string;
}

export class KeyStore {
	readonly #stateDir: string;
	readonly #resourcesDir: string;
	readonly #internalDir: string;
	#key: Buffer;
	/** Every stored name → its decrypted value, or null until first read. Absent = not stored. */
	readonly #resources = new Map<string, Buffer | null>();
	readonly #internal = new Map<string, Buffer | null>();
	/** Bumped by every mutation: a read started before one must not fill the cache. */
	#generation = 0;
	#queue: Promise<unknown> = Promise.resolve();
	#closed = false;
	#now: () => Date;

	private constructor(stateDir: string, key: Buffer, now: () => Date) {
		this.#stateDir = stateDir;
		this.#resourcesDir = join(stateDir, "resources");
		this.#internalDir = join(stateDir, "internal");
		this.#key = key;
		this.#now = now;
	}

	/**
	 * Opens (creating `resources/` and `internal/` if missing) the store of a state directory that
	 * must exist; indexes the stored names and removes temporary files a crash left behind.
	 */
	static async open(
		stateDir: string,
		masterKey: Buffer,
		o: { now?: () => Date } = {},
	): Promise<KeyStore> {
		const ks = new KeyStore(
			stateDir,
			deriveSubkey(masterKey, KEYSTORE_INFO),
			o.now ?? (() => new Date()),
		);
		await ensureDirs(stateDir, [ks.#resourcesDir]);
		await ensureDirs(stateDir, [ks.#internalDir]);
		await ks.#index();
		return ks;
	}

	async #index(): Promise<void> {
		for (const r of await entries(this.#resourcesDir)) {
			if (!r.isDirectory() || !isResourceSegment(r.name)) continue;
			const repoDir = join(this.#resourcesDir, r.name);
			for (const t of await entries(repoDir)) {
				if (!t.isDirectory() || !isResourceSegment(t.name)) continue;
				const typeDir = join(repoDir, t.name);
				for (const f of await entries(typeDir)) {
					if (!f.isFile()) continue;
					if (TEMP_NAME.test(f.name))
						await this.#removeTemp(join(typeDir, f.name));
					else if (f.name.endsWith(".res")) {
						const tag = f.name.slice(0, -4);
						if (isResourceSegment(tag))
							this.#resources.set(`${r.name}/${t.name}/${tag}`, null);
					}
				}
			}
		}
		for (const f of await entries(this.#internalDir)) {
			if (!f.isFile()) continue;
			if (TEMP_NAME.test(f.name))
				await this.#removeTemp(join(this.#internalDir, f.name));
			else if (f.name.endsWith(".sec")) {
				const name = f.name.slice(0, -4);
				if (INTERNAL_NAME.test(name)) this.#internal.set(name, null);
			}
		}
	}

	async #removeTemp(file: string): Promise<void> {
		try {
			await rm(file, { force: true });
		} catch (e) {
			throw fromSystemError(e, file, "removing a leftover temporary file");
		}
	}

	#resourceSlot(path: string): Slot {
		const { repo, type, tag } = parseResourcePath(path);
		const repoDir = join(this.#resourcesDir, repo);
		const typeDir = join(repoDir, type);
		return {
			cache: this.#resources,
			id: path,
			file: join(typeDir, `${tag}.res`),
			dirs: [this.#resourcesDir, repoDir, typeDir],
			aad: Buffer.from(RESOURCE_AAD + path, "utf8"),
			what: `resource ${path}`,
		};
	}

	#internalSlot(name: string): Slot {
		checkInternalName(name);
		return {
			cache: this.#internal,
			id: name,
			file: join(this.#internalDir, `${name}.sec`),
			dirs: [this.#internalDir],
			aad: Buffer.from(INTERNAL_AAD + name, "utf8"),
			what: `broker secret ${name}`,
		};
	}

	#checkOpen(): void {
		if (this.#closed)
			throw new DadiError("INTERNAL", "the key store is closed");
	}

	/** Runs mutations one at a time, in call order. */
	#serial<T>(fn: () => Promise<T>): Promise<T> {
		const run = this.#queue.then(fn, fn);
		this.#queue = run.catch(() => {});
		return run;
	}

	/** Stores `value` (1 byte to 64 KiB) at REPO/TYPE/TAG; `created` is false when it replaced one. */
	async put(path: string, value: Buffer): Promise<{ created: boolean }> {
		this.#checkOpen();
		const slot = this.#resourceSlot(path);
		checkValue(value);
		return this.#put(slot, Buffer.from(value));
	}

	/** The value at REPO/TYPE/TAG, undefined if none; AUTH_FAILED if its file was tampered with. */
	async get(path: string): Promise<Buffer | undefined> {
		this.#checkOpen();
		// Hot path: only valid paths are ever cached, so a hit needs no validation or file I/O.
		const cached = this.#resources.get(path);
		if (cached) return Buffer.from(cached);
		return this.#get(this.#resourceSlot(path));
	}

	/** Removes the value at REPO/TYPE/TAG; false if there was none. */
	async delete(path: string): Promise<boolean> {
		this.#checkOpen();
		return this.#delete(this.#resourceSlot(path), true);
	}

	/** Every stored resource, sorted by path; read from the envelopes without decrypting. */
	async list(): Promise<ResourceInfo[]> {
		this.#checkOpen();
		const out: ResourceInfo[] = [];
		for (const path of [...this.#resources.keys()].sort()) {
			const slot = this.#resourceSlot(path);
			const bytes = await readBounded(slot.file);
			if (bytes === undefined) continue;
			const env = bytes === null ? undefined : parseEnvelope(bytes);
			if (!env) throw authFailed(slot.what);
			out.push({ path, size: env.size, updated: env.updated });
		}
		return out;
	}

	/** Stores one of the broker's own secrets (name [a-z0-9-]{1,64}). */
	async putInternal(
		name: string,
		value: Buffer,
	): Promise<{ created: boolean }> {
		this.#checkOpen();
		const slot = this.#internalSlot(name);
		checkValue(value);
		return this.#put(slot, Buffer.from(value));
	}

	async getInternal(name: string): Promise<Buffer | undefined> {
		this.#checkOpen();
		return this.#get(this.#internalSlot(name));
	}

	async deleteInternal(name: string): Promise<boolean> {
		this.#checkOpen();
		return this.#delete(this.#internalSlot(name), false);
	}

	/** Waits for pending writes, then forgets the cached values and the subkey. */
	async close(): Promise<void> {
		if (this.#closed) return;
		this.#closed = true;
		await this.#queue;
		for (const m of [this.#resources, this.#internal]) {
			for (const v of m.values()) v?.fill(0);
			m.clear();
		}
		this.#key.fill(0);
	}

	#forget(slot: Slot): void {
		slot.cache.get(slot.id)?.fill(0);
		slot.cache.delete(slot.id);
	}

	#put(slot: Slot, value: Buffer): Promise<{ created: boolean }> {
		return this.#serial(async () => {
			this.#checkOpen();
			const created = !slot.cache.has(slot.id);
			const box = sealBox(this.#key, value, slot.aad);
			const envelope = {
				v: 1,
				iv: box.iv,
				ct: box.ct,
				tag: box.tag,
				size: value.length,
				updated: this.#now().toISOString(),
			};
			this.#generation++;
			try {
				await ensureDirs(this.#stateDir, slot.dirs);
				await writeFileDurable(
					slot.file,
					slot.dirs[slot.dirs.length - 1] as string,
					Buffer.from(`${JSON.stringify(envelope)}\n`),
				);
			} catch (e) {
				// The file may or may not have been replaced: read it again next time.
				this.#generation++;
				this.#forget(slot);
				slot.cache.set(slot.id, null);
				value.fill(0);
				throw e;
			}
			this.#generation++;
			this.#forget(slot);
			slot.cache.set(slot.id, value);
			return { created };
		});
	}

	async #get(slot: Slot): Promise<Buffer | undefined> {
		const cached = slot.cache.get(slot.id);
		if (cached === undefined) return undefined; // not stored
		if (cached !== null) return Buffer.from(cached);
		const generation = this.#generation;
		const bytes = await readBounded(slot.file);
		if (bytes === undefined) {
			if (generation === this.#generation) slot.cache.delete(slot.id);
			return undefined;
		}
		const env = bytes === null ? undefined : parseEnvelope(bytes);
		const value = env ? openBox(this.#key, env, slot.aad) : undefined;
		if (!value || value.length !== env?.size) {
			value?.fill(0);
			throw authFailed(slot.what);
		}
		if (generation === this.#generation && !this.#closed)
			slot.cache.set(slot.id, Buffer.from(value));
		return value;
	}

	#delete(slot: Slot, pruneDirs: boolean): Promise<boolean> {
		return this.#serial(async () => {
			this.#checkOpen();
			const dir = slot.dirs[slot.dirs.length - 1] as string;
			this.#generation++;
			let existed = true;
			try {
				await unlink(slot.file);
			} catch (e) {
				if ((e as NodeJS.ErrnoException).code !== "ENOENT")
					throw fromSystemError(e, slot.file, "deleting from the key store");
				existed = false;
			}
			this.#generation++;
			this.#forget(slot);
			if (!existed) return false;
			try {
				await fsyncDir(dir);
				// Drop REPO/TYPE directories left empty (mutations are serial, so no put races this).
				if (pruneDirs)
					for (let i = slot.dirs.length - 1; i >= 1; i--) {
						const d = slot.dirs[i] as string;
						try {
							await rmdir(d);
						} catch {
							break; // not empty (or already gone)
						}
						await fsyncDir(slot.dirs[i - 1] as string);
					}
			} catch (e) {
				throw fromSystemError(e, dir, "deleting from the key store");
			}
			return true;
		});
	}
}
