/**
 * `npm run build:guest`: writes the single-file dadi-guest (src/build/guest-bundle.ts) to
 * dist/guest/dadi-guest.mjs, or to the path given as the only argument, and says what it holds.
 * `npm run build` runs it with --quiet: the bundle is what dadi-snapshotter starts for host-mode
 * images, because one file loads in about half the time of the ~300 modules of dist/.
 */
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { buildGuestBundle } from "./guest-bundle.js";

const root = fileURLToPath(new URL("../../../", import.meta.url));
const args = process.argv.slice(2);
const quiet = args[0] === "--quiet";
const outfile = resolve(
	(quiet ? args[1] : args[0]) ?? `${root}/dist/guest/dadi-guest.mjs`,
);
try {
	const b = await buildGuestBundle(root, outfile);
	if (!quiet) {
		const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
		console.log(`wrote ${b.outfile} (${mib(b.bytes)})`);
		for (const n of b.natives)
			console.log(
				`  embedded ${n.name}@${n.version} (${mib(n.size)}, sha256 ${n.sha256})`,
			);
		console.log(`  bundled ${b.packages.join(", ")}`);
	}
} catch (e) {
	console.error(`build:guest: error: ${(e as Error).message}`);
	process.exitCode = 1;
}
