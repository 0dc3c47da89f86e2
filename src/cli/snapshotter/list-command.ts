/** `dadi-snapshotter list`: the snapshots a root holds, read from its metadata (safe while serving). */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Command } from "commander";
import { fromSystemError } from "../../errors.js";
import { decodeMetadata } from "../../snapshotter/metadata-codec.js";
import { list } from "../../snapshotter/model.js";
import { printJson, runAction } from "../common.js";

export function listCommand(program: Command): void {
	program
		.command("list")
		.description(
			"list the snapshots under --root (key or name, kind, parent, directory id, labels); read-only, works while serve runs",
		)
		.requiredOption("--root <DIR>", "the snapshotter's state directory")
		.option(
			"--filter <EXPR...>",
			"containerd filter expressions (any may match), e.g. kind==committed",
		)
		.option("--json", "print JSON")
		.action(async (opts: { root: string; filter?: string[]; json?: boolean }) =>
			runAction("dadi-snapshotter list", Boolean(opts.json), async () => {
				const file = join(opts.root, "metadata.json");
				let bytes: Buffer | undefined;
				try {
					bytes = await readFile(file);
				} catch (e) {
					const err = fromSystemError(
						e,
						file,
						"reading the snapshotter metadata",
					);
					if (err.code !== "INPUT_NOT_FOUND") throw err;
				}
				const state = bytes ? decodeMetadata(bytes, file) : undefined;
				const infos = state ? list(state, opts.filter ?? []) : [];
				const rows = infos.map((i) => ({
					...i,
					id: state?.snapshots.get(i.name)?.id,
					remote: state?.snapshots.get(i.name)?.remote !== undefined,
				}));
				if (opts.json) {
					printJson({ ok: true, snapshots: rows });
					return;
				}
				if (rows.length === 0) {
					process.stdout.write("no snapshots\n");
					return;
				}
				process.stdout.write("KIND\tID\tNAME\tPARENT\tLABELS\n");
				for (const r of rows)
					process.stdout.write(
						`${r.kind}${r.remote ? " (remote)" : ""}\t${r.id}\t${r.name}\t${r.parent || "-"}\t${Object.entries(
							r.labels,
						)
							.map(([k, v]) => `${k}=${v}`)
							.join(",")}\n`,
					);
			}),
		);
}
