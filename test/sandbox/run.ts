/**
 * `npm run sandbox [-- --memory MIB] [--keep] [--help]` (test/sandbox/main.ts): prints the
 * container's output, then one JSON line. Exit 0 every check holds, 1 a check failed, 2 a
 * prerequisite is missing.
 */
import { missingPrerequisites, runSandbox } from "./main.js";

const HELP = `usage: npm run sandbox [-- --memory MIB] [--keep]

Boots a QEMU micro-VM in which dadi-guest attests to a key broker on this host, reads a sealed
image lazily from a local registry, attaches it to the guest kernel's nbd driver, mounts it and
runs the image's own command. Then proves that the host side (registry storage, logs, broker
state, a capture of all the VM's traffic) holds no plaintext marker and no byte of the image key —
with a control run that does find the markers — and that a guest whose evidence the policy refuses
fails cleanly with nothing mounted. Prints the command's output and a last JSON line.

  --memory MIB   guest memory (default 1024)
  --keep         keep the working directory (printed on stderr)

Exit: 0 every check holds, 1 a check failed (the JSON's "failures" say which), 2 a prerequisite
is missing (qemu-system-x86, docker-registry, umoci, skopeo, busybox-static, apt).
`;

async function main(): Promise<number> {
	const args = process.argv.slice(2);
	if (args.includes("--help") || args.includes("-h")) {
		process.stdout.write(HELP);
		return 0;
	}
	const at = args.indexOf("--memory");
	const memoryMiB = at >= 0 ? Number(args[at + 1]) : 1024;
	if (!Number.isInteger(memoryMiB) || memoryMiB < 256 || memoryMiB > 16384) {
		process.stderr.write(
			"sandbox: --memory MIB: an integer from 256 to 16384\n",
		);
		return 2;
	}
	const missing = missingPrerequisites();
	if (missing.length > 0) {
		process.stderr.write(`sandbox: missing: ${missing.join("; ")}\n`);
		return 2;
	}
	const log = (l: string) => process.stderr.write(`${l}\n`);
	const r = await runSandbox({ memoryMiB, log, keep: args.includes("--keep") });
	process.stdout.write(`${r.output}\n`);
	if (!r.ok) log(`sandbox: FAILED: ${r.failures.join("; ")}`);
	process.stdout.write(`${JSON.stringify(r)}\n`);
	return r.ok ? 0 : 1;
}

process.exitCode = await main().catch((e) => {
	process.stderr.write(`sandbox: error: ${(e as Error).stack ?? e}\n`);
	return 1;
});
