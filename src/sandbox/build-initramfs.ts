#!/usr/bin/env node
/**
 * `node dist/src/sandbox/build-initramfs.js [--json] [--cache DIR]`: builds (or finds cached)
 * the sandbox guest's kernel and initramfs from Debian's packages (docs/sandbox.md), printing
 * progress to stderr and the result (paths and manifest) to stdout.
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { isDadiError } from "../errors.js";
import { buildGuest } from "./initramfs.js";

const ROOT = fileURLToPath(new URL("../../..", import.meta.url));

async function main(): Promise<void> {
	const args = process.argv.slice(2);
	const json = args.includes("--json");
	const c = args.indexOf("--cache");
	const cache = c >= 0 ? args[c + 1] : undefined;
	const started = performance.now();
	const g = await buildGuest({
		bundle: join(ROOT, "dist/guest/dadi-guest.mjs"),
		cache,
		onProgress: (m) => process.stderr.write(`build-initramfs: ${m}\n`),
	});
	const seconds = (performance.now() - started) / 1000;
	if (json) {
		process.stdout.write(
			`${JSON.stringify({ kernel: g.kernel, initramfs: g.initramfs, cached: g.cached, seconds, manifest: g.manifest }, null, "\t")}\n`,
		);
		return;
	}
	const m = g.manifest;
	process.stdout.write(
		[
			`kernel     ${g.kernel} (${m.kernel.package})`,
			`initramfs  ${g.initramfs}`,
			`           ${(m.initramfs.bytes / 2 ** 20).toFixed(1)} MiB, ${m.initramfs.entries} entries, sha256 ${m.initramfs.sha256}`,
			`node       ${m.node.version} sha256 ${m.node.sha256}`,
			`modules    ${m.modules.map((x) => x.name).join(" ")}`,
			`packages   ${m.packages.map((p) => `${p.name}=${p.version}`).join(" ")}`,
			`${g.cached ? "cached" : "built"} in ${seconds.toFixed(1)} s`,
		]
			.map((l) => `${l}\n`)
			.join(""),
	);
}

main().catch((e) => {
	process.stderr.write(
		`build-initramfs: ${isDadiError(e) ? `${e.code}: ${e.message}` : String(e?.stack ?? e)}\n`,
	);
	process.exit(1);
});
