#!/usr/bin/env node
/** dadi-broker: the KBS-protocol key broker. Not built yet; this entry point says so plainly. */
import { Command } from "commander";
import { runProgram } from "./common.js";
import { VERSION } from "./version.js";

const program = new Command("dadi-broker")
	.description(
		"Key broker (Trustee KBS protocol) releasing image keys to attested sandboxes.\nThis build has no broker commands yet (docs/roadmap.md); it exits 2 for any command.",
	)
	.version(VERSION)
	.addHelpText("after", "\nExit codes: as dadi-seal (docs/cli.md).");
if (process.argv.length <= 2) {
	// Nothing to run: show what exists and fail, so no script mistakes this for a working broker.
	process.stderr.write(program.helpInformation());
	process.exitCode = 2;
} else {
	await runProgram(program, process.argv);
	if (process.exitCode === undefined) process.exitCode = 2;
}
