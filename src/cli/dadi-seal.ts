#!/usr/bin/env node
/** dadi-seal: seal disk images into encrypted, lazily readable OCI images, and check them. */
import { Command } from "commander";
import { installSignalCleanup } from "../temp-files.js";
import { runProgram } from "./common.js";
import { exportCommand } from "./export-command.js";
import { copyCommand } from "./seal/copy.js";
import { inspectCommand } from "./seal/inspect.js";
import { keygenCommand } from "./seal/keygen.js";
import { sealCommand } from "./seal/seal.js";
import { traceCommand } from "./seal/trace.js";
import { verifyCommand } from "./seal/verify.js";
import { VERSION } from "./version.js";

const program = new Command("dadi-seal")
	.description(
		"Seal disk images into per-chunk encrypted, authenticated OCI images, and inspect, verify and export them.",
	)
	.version(VERSION)
	.addHelpText(
		"after",
		"\nExit codes: 0 ok, 1 internal error, 2 usage, 3 input missing/invalid, 4 malformed format, 5 integrity failure, 6 key error, 7 I/O error, 8 remote error (registry or broker unreachable, refused or misbehaving), 9 denied by the key broker.\nSee docs/cli.md.",
	);
keygenCommand(program);
sealCommand(program);
copyCommand(program);
inspectCommand(program);
verifyCommand(program);
traceCommand(program);
exportCommand(program, "dadi-seal");
installSignalCleanup();
await runProgram(program, process.argv);
