/**
 * Chain IDs (OCI image spec, "Layer ChainID"): the name of the file system a stack of layers
 * makes. ChainID(L1) = DiffID(L1); ChainID(L1…Ln) = sha256(ChainID(L1…Ln-1) + " " + DiffID(Ln)),
 * hashed over the two digests as text. containerd names a committed layer snapshot by its chain ID
 * and finds an unpacked image by the chain ID of its top layer.
 */
import { createHash } from "node:crypto";
import { DadiError } from "../errors.js";
import { DIGEST_RE } from "../oci/digest.js";

/** The chain ID of every prefix of `diffIds`: result[i] names layers 0..i. */
export function chainIds(diffIds: readonly string[]): string[] {
	const out: string[] = [];
	for (const [i, d] of diffIds.entries()) {
		if (!DIGEST_RE.test(d))
			throw new DadiError(
				"INPUT_INVALID",
				`diff_ids[${i}] "${d.slice(0, 80)}" is not a sha256 digest`,
			);
		const below = out[i - 1];
		out.push(
			below === undefined
				? d
				: `sha256:${createHash("sha256").update(`${below} ${d}`).digest("hex")}`,
		);
	}
	return out;
}
