/**
 * Patching an OCI bundle before the runtime creates the container: when its process was built from
 * a sealed image's public config (the sentinel entrypoint), the image's own run settings — from
 * its decrypted config, found by `findRunConfig` — are merged in (process-merge.ts) and config.json
 * is rewritten atomically. Bundles of ordinary images are left untouched. The image's /etc/passwd
 * and /etc/group are read inside the container's root: symlinks are followed only within it.
 */
import { constants } from "node:fs";
import { open } from "node:fs/promises";
import { join, resolve } from "node:path";
import { DadiError, fromSystemError } from "../errors.js";
import { writeFileAtomic } from "../oci/layout.js";
import { RootResolver } from "../rootfs/resolve.js";
import {
	type Accounts,
	isSealedProcess,
	mergeProcess,
	type OciProcess,
} from "./process-merge.js";
import type { RunConfig } from "./run-config.js";

const MAX_SPEC = 4 << 20;
const MAX_ACCOUNTS = 1 << 20;

export type PatchResult =
	| { patched: false; why: string }
	| { patched: true; args: string[] };

/** Reads a regular file of at most `max` bytes without following a final symlink. */
async function readSmall(path: string, max: number): Promise<Buffer> {
	const fh = await open(
		path,
		constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK,
	);
	try {
		const st = await fh.stat();
		if (!st.isFile())
			throw new DadiError("INPUT_INVALID", `${path}: not a regular file`);
		if (st.size > max)
			throw new DadiError(
				"INPUT_INVALID",
				`${path}: ${st.size} bytes, more than the ${max} allowed`,
			);
		const b = Buffer.alloc(st.size);
		const { bytesRead } = await fh.read(b, 0, st.size, 0);
		return b.subarray(0, bytesRead);
	} finally {
		await fh.close();
	}
}

/** /etc/passwd and /etc/group of the root file system, resolved inside it; absent ones are "". */
export async function readAccounts(rootfs: string): Promise<Accounts> {
	const r = RootResolver.open(rootfs);
	const etc = r.lookupDir(["etc"], { entry: "/etc/passwd" });
	if (etc.kind !== "dir") return {};
	const read = async (name: string) => {
		try {
			return (
				await readSmall(join(r.abs(etc.rel), name), MAX_ACCOUNTS)
			).toString("utf8");
		} catch (e) {
			if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
			throw fromSystemError(e, `/etc/${name} of the image`, "reading");
		}
	};
	return { passwd: await read("passwd"), group: await read("group") };
}

export async function patchBundle(
	bundle: string,
	findRunConfig: (rootfs: string) => Promise<RunConfig | undefined>,
): Promise<PatchResult> {
	const file = join(bundle, "config.json");
	let spec: Record<string, unknown>;
	try {
		spec = JSON.parse((await readSmall(file, MAX_SPEC)).toString("utf8"));
	} catch (e) {
		if (e instanceof SyntaxError)
			throw new DadiError("INPUT_INVALID", `${file}: not JSON (${e.message})`);
		throw fromSystemError(e, file, "reading the OCI runtime spec");
	}
	const process = spec.process as OciProcess | undefined;
	if (!process || typeof process !== "object" || !process.user)
		return {
			patched: false,
			why: "not a sealed image's process: the spec has none",
		};
	const root = spec.root as { path?: unknown } | undefined;
	if (typeof root?.path !== "string")
		throw new DadiError("INPUT_INVALID", `${file}: no root.path`);
	const rootfs = resolve(bundle, root.path);
	// A sealed image's rootfs is recognised by where it is mounted from, so its env, workdir and
	// user apply even when the container was given a command of its own.
	const run = await findRunConfig(rootfs);
	if (!run && !isSealedProcess(process))
		return { patched: false, why: "not a sealed image's root file system" };
	if (!run)
		throw new DadiError(
			"INPUT_INVALID",
			`${rootfs}: the container runs a sealed image, but its root file system was not served by dadi-snapshotter in host mode, so the image's own config (entrypoint, env, …) is not available here`,
		);
	const merged = mergeProcess(process, run, await readAccounts(rootfs));
	spec.process = merged;
	await writeFileAtomic(file, `${JSON.stringify(spec)}\n`, 0o644);
	return { patched: true, args: merged.args ?? [] };
}
