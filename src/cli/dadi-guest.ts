#!/usr/bin/env node
/** dadi-guest: the in-sandbox side. This build reads sealed images from OCI layouts. */
import { Command } from "commander";
import { installSignalCleanup } from "../temp-files.js";
import { runProgram } from "./common.js";
import { exportCommand } from "./export-command.js";
import { VERSION } from "./version.js";

const program = new Command("dadi-guest")
	.description(
		"Read sealed images inside the sandbox: authenticate, decrypt and expose the disk.\nThis build: export from an OCI image layout. Registry reads, NBD/FUSE serving and broker keys come later (docs/roadmap.md).",
	)
	.version(VERSION)
	.addHelpText("after", "\nExit codes: as dadi-seal (docs/cli.md).");
exportCommand(program, "dadi-guest");
installSignalCleanup();
await runProgram(program, process.argv);
