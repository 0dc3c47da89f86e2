/** Writes test/vectors/v2.json. Run with `npm run vectors` only for a deliberate format change. */
import { writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { buildVectors } from "./build.js";

const out = fileURLToPath(
	new URL("../../../test/vectors/v2.json", import.meta.url),
);
const v = await buildVectors();
await writeFile(out, `${JSON.stringify(v, null, 2)}\n`);
process.stdout.write(
	`wrote ${out}: ${v.layers.length} layer vectors, image manifest ${v.image.manifestDigest}\n`,
);
