/**
 * Where dadi-k8s puts what it generated: stdout, or --out FILE written atomically (a temporary file
 * renamed into place). An existing FILE is replaced only with --force: it may be a node's live
 * containerd configuration with the operator's own edits.
 */
import { stat } from "node:fs/promises";
import { DadiError } from "../../errors.js";
import { writeFileAtomic } from "../../oci/layout.js";

export interface OutputFlags {
	out?: string;
	force?: boolean;
	json?: boolean;
}

/** Writes `text` to --out (returns its path), or to stdout unless --json (returns undefined). */
export async function emit(
	text: string,
	f: OutputFlags,
): Promise<string | undefined> {
	if (f.out === undefined) {
		if (!f.json) process.stdout.write(text);
		return undefined;
	}
	if (!f.force) {
		const exists = await stat(f.out).then(
			() => true,
			() => false,
		);
		if (exists)
			throw new DadiError(
				"OUTPUT_EXISTS",
				`${f.out}: already exists; refusing to replace it (it may hold edits of its own); compare first, then use --force`,
			);
	}
	await writeFileAtomic(f.out, text);
	return f.out;
}

export const collect = (v: string, all: string[]): string[] => [...all, v];
