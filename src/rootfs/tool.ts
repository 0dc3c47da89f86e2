/**
 * Running the file-system tools (mke2fs, debugfs, mkfs.erofs): output collected, a missing tool
 * named with the package that has it, a failure reported with the tool's last words. Children are
 * tracked so Ctrl-C kills them before the temporary files they write are removed.
 */
import { spawn } from "node:child_process";
import { DadiError } from "../errors.js";
import { trackChild } from "../temp-files.js";

export interface RunOptions {
	env?: NodeJS.ProcessEnv;
	/** Called with each piece of stdout as it arrives (progress). */
	onStdout?: (text: string) => void;
}

export function run(
	cmd: string,
	args: string[],
	o: RunOptions = {},
): Promise<{ stdout: string; stderr: string }> {
	return new Promise((resolve, reject) => {
		const p = spawn(cmd, args, {
			env: { ...process.env, ...o.env },
			stdio: ["ignore", "pipe", "pipe"],
		});
		trackChild(p);
		let stdout = "";
		let stderr = "";
		p.stdout?.setEncoding("utf8");
		p.stdout?.on("data", (d: string) => {
			stdout += d;
			o.onStdout?.(d);
		});
		p.stderr?.on("data", (d) => (stderr += d));
		p.on("error", (e) => {
			const code = (e as NodeJS.ErrnoException).code;
			const pkg = cmd.includes("erofs") ? "erofs-utils" : "e2fsprogs";
			reject(
				code === "ENOENT"
					? new DadiError(
							"IO",
							`${cmd} not found: install ${pkg} (Debian: apt-get install ${pkg})`,
						)
					: new DadiError("IO", `${cmd}: ${(e as Error).message}`),
			);
		});
		p.on("close", (code) => {
			if (code === 0) resolve({ stdout, stderr });
			else
				reject(
					new DadiError(
						"IO",
						`${cmd} failed (exit ${code}): ${stderr.trim().split("\n").slice(-3).join(" / ") || stdout.trim().slice(-300)}`,
					),
				);
		});
	});
}
