/** Lazily unmounts everything mounted under a test's directory (deepest first): afterAll safety. */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { promisify } from "node:util";

const sh = promisify(execFile);

export async function unmountUnder(dir: string): Promise<void> {
	const mounts = readFileSync("/proc/self/mountinfo", "utf8")
		.split("\n")
		.map((l) => l.split(" ")[4])
		.filter((m): m is string => Boolean(m?.startsWith(`${dir}/`)))
		.reverse();
	for (const m of mounts) await sh("umount", ["-l", m]).catch(() => {});
}
