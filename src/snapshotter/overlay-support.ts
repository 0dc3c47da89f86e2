/**
 * The overlay mount options this machine calls for, decided as containerd's overlay snapshotter
 * decides them: `index=off` when the kernel's overlay module has an `index` parameter, and
 * `userxattr` when running inside a user namespace (rootless), where trusted.* xattrs are not ours.
 */
import { existsSync, readFileSync } from "node:fs";
import type { OverlayOptions } from "./mounts.js";

export function detectOverlayOptions(): OverlayOptions {
	let userns = false;
	try {
		const map = readFileSync("/proc/self/uid_map", "utf8").trim().split(/\s+/);
		userns = !(map[0] === "0" && map[1] === "0" && map[2] === "4294967295");
	} catch {
		userns = false;
	}
	return {
		indexOff: existsSync("/sys/module/overlay/parameters/index"),
		userxattr: userns,
	};
}
