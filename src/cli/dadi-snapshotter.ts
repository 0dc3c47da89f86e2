#!/usr/bin/env node
/** dadi-snapshotter: a containerd proxy snapshotter (overlayfs semantics, remote-layer plug-in point). */
import { Command } from "commander";
import { installSignalCleanup } from "../temp-files.js";
import { runProgram } from "./common.js";
import { listCommand } from "./snapshotter/list-command.js";
import { pullCommand } from "./snapshotter/pull-command.js";
import { runtimeCommands } from "./snapshotter/runtime-commands.js";
import { serveCommand } from "./snapshotter/serve-command.js";
import { VERSION } from "./version.js";

const program = new Command("dadi-snapshotter")
	.description(
		"containerd proxy snapshotter: serves containerd's snapshots API on a unix socket with the overlayfs snapshotter's semantics; the point where dadi's remote layers plug in. `pull` pulls an image into containerd through it so that claimed layers are never downloaded.",
	)
	.version(VERSION)
	.addHelpText(
		"after",
		"\nExit codes: 0 ok, 1 internal error, 2 usage, 3 input missing/invalid (unknown image or tag, snapshotter unknown to containerd), 4 malformed format (metadata, manifest), 5 integrity failure (a blob or layer not matching its digest), 6 key error, 7 I/O error (root in use, socket taken, containerd failed to apply a layer), 8 remote error (registry or containerd unreachable), 9 denied.\nSee docs/cli.md and docs/snapshotter.md.",
	);
serveCommand(program);
listCommand(program);
pullCommand(program);
runtimeCommands(program);
installSignalCleanup();
await runProgram(program, process.argv);
