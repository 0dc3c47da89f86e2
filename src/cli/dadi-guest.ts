#!/usr/bin/env node
/** dadi-guest: the in-sandbox side. Reads sealed images from OCI layouts and, lazily, registries. */
import { Command } from "commander";
import { EXEC_IN_ROOT, execInRootMain } from "../guest/exec-in-root.js";
import { installSignalCleanup } from "../temp-files.js";
import { attestCommand } from "./attest-command.js";
import { cleanupCommand } from "./cleanup-command.js";
import { runProgram } from "./common.js";
import { configCommand } from "./config-command.js";
import { exportCommand } from "./export-command.js";
import { readCommand } from "./read-command.js";
import { runCommand } from "./run-command.js";
import { serveCommand } from "./serve-command.js";
import { VERSION } from "./version.js";

const program = new Command("dadi-guest")
	.description(
		"Read sealed images inside the sandbox: authenticate, decrypt and expose the disk.\nExport, read, serve (NBD, FUSE, loop mount) or run a container from an OCI image layout or, lazily (only the chunks needed), from a registry, with the image key from a file or released by a key broker after attestation (--broker).",
	)
	.version(VERSION)
	.addHelpText(
		"after",
		"\nExit codes: 0 ok, 1 internal error, 2 usage, 3 input missing/invalid, 4 malformed format, 5 integrity failure, 6 key error, 7 I/O error, 8 remote error (registry or broker unreachable, refused or misbehaving), 9 denied by the key broker (attestation or policy).\nSee docs/cli.md and docs/guest.md.",
	);
exportCommand(program, "dadi-guest");
readCommand(program, "dadi-guest");
configCommand(program, "dadi-guest");
serveCommand(program, "dadi-guest");
runCommand(program, "dadi-guest");
attestCommand(program);
cleanupCommand(program, "dadi-guest");
// `run` starts the container's process through this same program (src/guest/exec-in-root.ts).
if (process.argv[2] === EXEC_IN_ROOT) execInRootMain();
else {
	installSignalCleanup();
	await runProgram(program, process.argv);
}
