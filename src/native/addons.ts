/**
 * Where the two native addons come from: koffi (libc calls: mknod, xattrs, mount(2), poll(2) in the
 * FUSE reader thread) and zstd-napi's low-level binding (chunk compression). Every load goes
 * through here, except zstd-napi's streaming API for zstd-compressed image layers
 * (src/source/layer-stream.ts), which only sealing uses, never the guest.
 *
 * Normally both are packages in node_modules. In the single-file dadi-guest build
 * (src/build/guest-bundle.ts) their binaries are embedded instead (src/native/embedded-binaries.ts):
 * each is extracted on first use into a private content-addressed cache (src/native/extract.ts)
 * and loaded from there. Nothing is loaded before it is needed, so importing this costs nothing.
 */

import { createRequire } from "node:module";
import { homedir, tmpdir } from "node:os";
import { DadiError } from "../errors.js";
import {
	type AddonName,
	EMBEDDED_BINARIES,
	type EmbeddedBinary,
} from "./embedded-binaries.js";
import { cacheDirs, extractAndLoad, sha256Hex } from "./extract.js";

export type Koffi = typeof import("koffi");

/** The part of zstd-napi's low-level binding that src/format/codec.ts uses. */
export interface ZstdBinding {
	CCtx: new () => {
		compress(dst: Uint8Array, src: Uint8Array, level: number): number;
	};
	DCtx: new () => { decompress(dst: Uint8Array, src: Uint8Array): number };
	versionString(): string;
}

const nodeRequire = createRequire(import.meta.url);
const loaded = new Map<AddonName, { path: string; exports: unknown }>();

function embedded(name: AddonName): EmbeddedBinary | undefined {
	return EMBEDDED_BINARIES.find((b) => b.name === name);
}

/**
 * The home directory, or "" when there is none to find: os.homedir() throws when HOME is unset
 * and the user has no passwd entry — as in a minimal guest, or a process started with a
 * container's environment — and the temporary directory then serves (cacheDirs).
 */
function homeOrEmpty(): string {
	try {
		return homedir();
	} catch {
		return "";
	}
}

/** Extracts and loads an embedded addon (once per process). */
function loadEmbedded(b: EmbeddedBinary): { path: string; exports: unknown } {
	const done = loaded.get(b.name);
	if (done) return done;
	const here = `${process.platform}-${process.arch}`;
	if (here !== b.target)
		throw new DadiError(
			"INTERNAL",
			`this single-file dadi-guest carries its ${b.name} native module for ${b.target} (glibc) only, and this is ${here}: install the dadi package instead (docs/operations.md)`,
		);
	const uid = process.geteuid?.() ?? 0;
	const dirs = cacheDirs({
		env: process.env,
		uid,
		home: homeOrEmpty(),
		tmp: tmpdir(),
	});
	const bin = {
		name: b.name,
		version: b.version,
		sha256: b.sha256,
		bytes: () => {
			const bytes = Buffer.from(b.base64, "base64");
			if (sha256Hex(bytes) !== b.sha256)
				throw new DadiError(
					"INTERNAL",
					`the ${b.name} binary embedded in this dadi-guest is corrupt (SHA-256 mismatch): rebuild it`,
				);
			return bytes;
		},
	};
	const { path, loaded: exports } = extractAndLoad(bin, dirs, uid, (p) => {
		let m: unknown;
		try {
			m = nodeRequire(p);
		} catch (e) {
			throw new Error(
				`${(e as Error).message} (the binary is built for ${b.target} with glibc)`,
			);
		}
		const v = (m as { version?: unknown }).version;
		if (b.name === "koffi" && v !== b.version)
			throw new DadiError(
				"INTERNAL",
				`the embedded koffi binary reports version ${String(v)}, expected ${b.version}: rebuild dadi-guest`,
			);
		return m;
	});
	const entry = { path, exports };
	loaded.set(b.name, entry);
	return entry;
}

/** koffi's API. */
export function loadKoffi(): Koffi {
	const b = embedded("koffi");
	return (b ? loadEmbedded(b).exports : nodeRequire("koffi")) as Koffi;
}

/**
 * A path that `require()` in another thread loads koffi from (a worker_thread has its own module
 * instance): koffi's entry point, or the extracted binary.
 */
export function koffiRequirePath(): string {
	const b = embedded("koffi");
	return b ? loadEmbedded(b).path : nodeRequire.resolve("koffi");
}

/** zstd-napi's low-level binding. */
export function loadZstdBinding(): ZstdBinding {
	const b = embedded("zstd-napi");
	return (
		b ? loadEmbedded(b).exports : nodeRequire("zstd-napi/binding")
	) as ZstdBinding;
}
