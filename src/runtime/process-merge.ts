/**
 * Filling a sealed image's own run settings into an OCI runtime spec's `process`, as containerd
 * and Kubernetes would have from an ordinary image config (pure: spec, settings and the image's
 * /etc/passwd and /etc/group text in, a new process out).
 *
 * The runtime spec was built from the sealed image's *public* config, whose entrypoint is the
 * sentinel SEALED_ENTRYPOINT and which has no Cmd, Env, WorkingDir or User. So:
 * - args: `[SENTINEL]` (no command or args given) → Entrypoint + Cmd; `[SENTINEL, ...a]` (args
 *   given, no command: Kubernetes `args`) → Entrypoint + a; anything else (a command was given)
 *   is left alone.
 * - env: the image's Env goes under what the spec has (the pod's values win), except that the
 *   runtime's default PATH gives way to the image's PATH, as containerd does for any image.
 * - cwd: the image's WorkingDir when the spec has the default "/".
 * - user: the image's User when the spec runs as 0:0 with no extra groups, resolved in the image's
 *   own /etc/passwd and /etc/group like containerd's WithUser.
 */
import { DadiError } from "../errors.js";
import { type RunConfig, SEALED_ENTRYPOINT } from "./run-config.js";

/** The PATH containerd's default spec sets (oci.DefaultEnv). */
export const DEFAULT_PATH =
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

export interface OciUser {
	uid: number;
	gid: number;
	additionalGids?: number[];
	umask?: number;
	username?: string;
}

export interface OciProcess {
	args?: string[];
	env?: string[];
	cwd: string;
	user: OciUser;
	[k: string]: unknown;
}

export interface Accounts {
	/** /etc/passwd of the image, if it has one. */
	passwd?: string;
	/** /etc/group of the image, if it has one. */
	group?: string;
}

/** Whether the spec's process was built from a sealed image's public config. */
export function isSealedProcess(p: OciProcess): boolean {
	return p.args?.[0] === SEALED_ENTRYPOINT;
}

export function mergeProcess(
	p: OciProcess,
	run: RunConfig,
	accounts: Accounts,
): OciProcess {
	const out: OciProcess = { ...p, user: { ...p.user } };
	const args = p.args ?? [];
	if (args[0] === SEALED_ENTRYPOINT) {
		const rest = args.slice(1);
		const merged = [...run.entrypoint, ...(rest.length ? rest : run.cmd)];
		if (merged.length === 0)
			throw new DadiError(
				"INPUT_INVALID",
				"the sealed image's config names no Entrypoint or Cmd, and the container gives no command",
			);
		out.args = merged;
	}
	out.env = mergeEnv(p.env ?? [], run.env);
	if ((p.cwd === "/" || p.cwd === "") && run.workingDir)
		out.cwd = run.workingDir;
	const u = p.user;
	if (
		run.user &&
		u.uid === 0 &&
		u.gid === 0 &&
		!(u.additionalGids ?? []).some((g) => g !== 0)
	)
		out.user = { ...u, ...resolveUser(run.user, accounts) };
	return out;
}

/** Image env under the spec's env; the spec's default PATH gives way to the image's PATH. */
export function mergeEnv(spec: string[], image: string[]): string[] {
	const key = (e: string) => e.slice(0, Math.max(0, e.indexOf("=")));
	const specKeys = new Set(
		spec.filter((e) => e !== DEFAULT_PATH).map((e) => key(e)),
	);
	const imagePath = image.some((e) => key(e) === "PATH");
	const fromImage = image.filter((e) => !specKeys.has(key(e)));
	const kept = spec.filter((e) => !(e === DEFAULT_PATH && imagePath));
	// The image's values first, as containerd orders them, then the container's.
	return [...fromImage, ...kept];
}

interface Entry {
	name: string;
	id: number;
	gid?: number;
	members?: string[];
}

function parseDb(text: string | undefined, kind: "passwd" | "group"): Entry[] {
	const out: Entry[] = [];
	for (const line of (text ?? "").split("\n")) {
		if (!line || line.startsWith("#")) continue;
		const f = line.split(":");
		const id = Number(f[2]);
		if (!f[0] || !Number.isSafeInteger(id) || id < 0) continue;
		if (kind === "passwd") {
			const gid = Number(f[3]);
			if (!Number.isSafeInteger(gid) || gid < 0) continue;
			out.push({ name: f[0], id, gid });
		} else
			out.push({
				name: f[0],
				id,
				members: (f[3] ?? "").split(",").filter(Boolean),
			});
	}
	return out;
}

const ID_RE = /^\d{1,10}$/;

/** "uid", "uid:gid", "name", "name:group", "uid:group", "name:gid" → uid, gid, extra groups. */
export function resolveUser(
	spec: string,
	accounts: Accounts,
): Pick<OciUser, "uid" | "gid" | "additionalGids"> {
	const [userPart = "", groupPart] = spec.split(":", 2);
	const users = parseDb(accounts.passwd, "passwd");
	const groups = parseDb(accounts.group, "group");
	let uid: number;
	let gid: number | undefined;
	let name: string | undefined;
	if (ID_RE.test(userPart)) {
		uid = Number(userPart);
		const u = users.find((x) => x.id === uid);
		gid = u?.gid;
		name = u?.name;
	} else {
		const u = users.find((x) => x.name === userPart);
		if (!u)
			throw new DadiError(
				"INPUT_INVALID",
				`the image's User "${spec}": no user "${userPart}" in its /etc/passwd`,
			);
		uid = u.id;
		gid = u.gid;
		name = u.name;
	}
	if (groupPart !== undefined && groupPart !== "") {
		if (ID_RE.test(groupPart)) gid = Number(groupPart);
		else {
			const g = groups.find((x) => x.name === groupPart);
			if (!g)
				throw new DadiError(
					"INPUT_INVALID",
					`the image's User "${spec}": no group "${groupPart}" in its /etc/group`,
				);
			gid = g.id;
		}
	}
	const extra =
		name === undefined
			? []
			: groups
					.filter((g) => g.members?.includes(name as string) && g.id !== gid)
					.map((g) => g.id);
	return {
		uid,
		gid: gid ?? 0,
		...(extra.length ? { additionalGids: extra } : {}),
	};
}
