/**
 * The OCI runtime wrapper (`dadi-runc`, `dadi-runsc`) that containerd's runc v2 shim runs as its
 * BinaryName in host mode: a POSIX shell script that, only for `create` and `run`, has the bundle
 * patched with the sealed image's own run settings (bundle.ts), then execs the real runtime with
 * the very same arguments — so file descriptors, signals and exit codes are the runtime's own, and
 * every other runtime call (start, state, kill, delete, …) costs one exec. Paths are absolute,
 * fixed when the script is written (the shim's PATH is not ours to rely on).
 */
import { DadiError } from "../errors.js";

export interface WrapperOptions {
	/** The real runtime: /usr/sbin/runc, /usr/bin/runsc … */
	runtime: string;
	/** The node binary that runs the patcher. */
	node: string;
	/** The patcher program (dist/src/cli/dadi-snapshotter.js). */
	program: string;
	/** dadi-snapshotter's --root: only run settings under it are trusted. */
	snapshotterRoot: string;
	/** Global options put before every call's own arguments (runsc: --network=none, --platform=…). */
	runtimeArgs?: readonly string[];
}

/** A path safe to put in single quotes in a shell script. */
function quoted(p: string, what: string): string {
	if (!p.startsWith("/") || /['\n\0]/.test(p))
		throw new DadiError(
			"USAGE",
			`${what} "${p}": needs an absolute path without quotes or newlines`,
		);
	return `'${p}'`;
}

export function wrapperScript(o: WrapperOptions): string {
	const runtime = quoted(o.runtime, "the runtime");
	const node = quoted(o.node, "node");
	const program = quoted(o.program, "the patch program");
	const root = quoted(o.snapshotterRoot, "the snapshotter root");
	const extra = (o.runtimeArgs ?? [])
		.map((arg) => {
			if (!/^-[A-Za-z0-9_=.,:/+-]+$/.test(arg))
				throw new DadiError(
					"USAGE",
					`runtime option "${arg}": expected an option such as --network=none (letters, digits, and = . , : / + - _)`,
				);
			return ` ${arg}`;
		})
		.join("");
	return `#!/bin/sh
# dadi OCI runtime wrapper, written by 'dadi-snapshotter install-runtime'. Before 'create' and
# 'run' it fills a sealed image's own entrypoint, env, workdir and user into the bundle (host mode),
# then hands every call to the real runtime unchanged.
runtime=${runtime}
bundle=.
command=
expect=
for arg in "$@"; do
	if [ -z "$command" ]; then
		# Global options come first (some take values); the command is the first known name.
		case $arg in
		checkpoint | create | delete | events | exec | features | kill | list | pause | ps | \
			restore | resume | run | spec | start | state | update) command=$arg ;;
		esac
		continue
	fi
	if [ -n "$expect" ]; then
		bundle=$arg
		expect=
		continue
	fi
	case $arg in
	--bundle | -b) expect=1 ;;
	--bundle=*) bundle=\${arg#--bundle=} ;;
	-b=*) bundle=\${arg#-b=} ;;
	esac
done
if [ "$command" = create ] || [ "$command" = run ]; then
	${node} ${program} patch-bundle --root ${root} -- "$bundle" >&2 || exit $?
fi
exec "$runtime"${extra} "$@"
`;
}
