#!/usr/bin/env node
/** dadi-broker: the KBS-protocol key broker releasing image keys to attested sandboxes. */
import { Command } from "commander";
import { installSignalCleanup } from "../temp-files.js";
import { evidenceCommand } from "./broker/evidence-command.js";
import { initCommand } from "./broker/init-command.js";
import { policyCommand } from "./broker/policy-command.js";
import { auditCommand, resourceCommand } from "./broker/resource-command.js";
import { serveCommand } from "./broker/serve-command.js";
import { runProgram } from "./common.js";
import { VERSION } from "./version.js";

const program = new Command("dadi-broker")
	.description(
		"Key broker (Trustee KBS protocol v0) releasing image keys to sandboxes whose fresh TEE attestation satisfies a policy.",
	)
	.version(VERSION)
	.addHelpText(
		"after",
		"\nExit codes: 0 ok, 1 internal error, 2 usage, 3 input missing/invalid, 4 malformed format, 5 integrity failure, 6 key error, 7 I/O error, 8 remote error, 9 denied (attestation or policy).\nSee docs/cli.md and docs/broker.md.",
	);
initCommand(program);
serveCommand(program);
resourceCommand(program);
policyCommand(program);
auditCommand(program);
evidenceCommand(program);
installSignalCleanup();
await runProgram(program, process.argv);
