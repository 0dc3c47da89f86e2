/**
 * Checks a directory `serve` is asked to mount on (--mount-at, --fuse) before anything slow or
 * irreversible happens (attestation, fetching): it must exist, be a directory and not be a mount
 * point already. A mount point that a killed dadi-guest left behind is cleaned up instead, with a
 * line in the log, so a restart after SIGKILL just works.
 */
import { realpath, stat } from "node:fs/promises";
import { resolve } from "node:path";
import { DadiError, fromSystemError } from "../errors.js";
import { mountAt, readMounts } from "./mountinfo.js";
import {
	cleanupChain,
	findChains,
	fuseAlive,
	readLoopDevices,
} from "./stale-mounts.js";

export async function prepareMountPoint(
	dir: string,
	flag: string,
	log: (line: string) => void,
): Promise<string> {
	if (process.getuid?.() !== 0)
		throw new DadiError(
			"USAGE",
			`${flag} needs root (mount(2)${flag === "--mount-at" ? " and loop devices" : ""}); without root use --nbd`,
		);
	let real: string;
	try {
		real = await realpath(dir);
	} catch (e) {
		const code = (e as NodeJS.ErrnoException).code;
		if (code === "ENOTCONN") real = resolve(dir);
		else if (code === "ENOENT")
			throw new DadiError(
				"INPUT_NOT_FOUND",
				`${flag} ${dir}: no such directory; create it first (mkdir -p ${dir})`,
			);
		else throw fromSystemError(e, dir, `checking ${flag}`);
	}
	const top = mountAt(readMounts(), real);
	if (top) {
		const chains = findChains(readMounts(), readLoopDevices(), fuseAlive);
		const chain = chains.find(
			(c) => c.fuseDir === real || c.loops.some((l) => l.mounts.includes(real)),
		);
		if (!chain)
			throw new DadiError(
				"INPUT_INVALID",
				`${flag} ${dir}: already a mount point (${top.fsType} from ${top.source}); unmount it or choose another directory`,
			);
		if (chain.alive)
			throw new DadiError(
				"INPUT_INVALID",
				`${flag} ${dir}: a running dadi-guest already serves an image there; stop it first, or choose another directory`,
			);
		const steps = await cleanupChain(chain);
		log(
			`${dir} was left mounted by a dadi-guest that did not stop cleanly; cleaned up: ${steps.map((s) => `${s.what} ${s.target} (${s.result})`).join(", ")}`,
		);
		if (mountAt(readMounts(), real))
			throw new DadiError(
				"IO",
				`${flag} ${dir}: still a mount point after cleaning up what a killed dadi-guest left; see 'dadi-guest cleanup ${dir}'`,
			);
	}
	const st = await stat(real).catch((e: unknown) => {
		throw fromSystemError(e, dir, `checking ${flag}`);
	});
	if (!st.isDirectory())
		throw new DadiError(
			"INPUT_INVALID",
			`${flag} ${dir}: not a directory; give an empty directory to mount on`,
		);
	return real;
}
