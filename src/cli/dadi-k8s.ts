#!/usr/bin/env node
/** dadi-k8s: Kubernetes and containerd configuration for the dadi snapshotter and runtime classes. */
import { Command } from "commander";
import { installSignalCleanup } from "../temp-files.js";
import { runProgram } from "./common.js";
import { containerdConfigCommand } from "./k8s/containerd-config-command.js";
import { podsCommand } from "./k8s/pods-command.js";
import { runscConfigCommand } from "./k8s/runsc-config-command.js";
import { runtimeClassesCommand } from "./k8s/runtimeclasses-command.js";
import { VERSION } from "./version.js";

const program = new Command("dadi-k8s")
	.description(
		"Write what a Kubernetes node and cluster need to run sealed images: RuntimeClass manifests, containerd configuration (the dadi proxy snapshotter and runtimes) for containerd 1.6, 1.7 and 2.x, gVisor's shim options and example pods. Prints to stdout, or --out FILE.",
	)
	.version(VERSION)
	.addHelpText(
		"after",
		"\nExit codes: 0 ok, 1 internal error, 2 usage (a bad option value: class, path, quantity, label, image), 3 input missing/invalid (an --out file exists without --force), 4 malformed format, 5 integrity failure, 6 key error, 7 I/O error (writing --out), 8 remote error, 9 denied.\nSee docs/cli.md and docs/kubernetes.md.",
	);
runtimeClassesCommand(program);
containerdConfigCommand(program);
runscConfigCommand(program);
podsCommand(program);
installSignalCleanup();
await runProgram(program, process.argv);
