/**
 * The part of an OCI image config that says how to run the image (`config`: Entrypoint, Cmd, Env,
 * WorkingDir, User), read strictly, and the sentinel entrypoint a sealed image's public config
 * carries instead of the real one (the real config is encrypted). A runtime that sees the
 * sentinel as the first argument fills in the image's own process (process-merge.ts).
 */
import { DadiError } from "../errors.js";

/** What the public config of a sealed image names as its entrypoint: no such file exists. */
export { SEALED_ENTRYPOINT } from "../oci/public-config.js";

export interface RunConfig {
	entrypoint: string[];
	cmd: string[];
	/** KEY=VALUE entries, in order. */
	env: string[];
	workingDir: string;
	/** "", "uid", "uid:gid", "name", "name:group", … as the image says. */
	user: string;
}

const E = (what: string, msg: string) =>
	new DadiError("INPUT_INVALID", `${what}: ${msg}`);

function strings(v: unknown, field: string, what: string): string[] {
	if (v === undefined || v === null) return [];
	if (!Array.isArray(v) || v.some((x) => typeof x !== "string"))
		throw E(what, `config.${field} must be an array of strings`);
	return v as string[];
}

function text(v: unknown, field: string, what: string): string {
	if (v === undefined || v === null) return "";
	if (typeof v !== "string") throw E(what, `config.${field} must be a string`);
	return v;
}

/** The run settings of an OCI image config document (the whole config JSON, parsed). */
export function runConfigOf(imageConfig: unknown, what: string): RunConfig {
	if (
		typeof imageConfig !== "object" ||
		imageConfig === null ||
		Array.isArray(imageConfig)
	)
		throw E(what, "not a JSON object");
	const c = (imageConfig as Record<string, unknown>).config;
	if (c === undefined || c === null)
		return { entrypoint: [], cmd: [], env: [], workingDir: "", user: "" };
	if (typeof c !== "object" || Array.isArray(c))
		throw E(what, "config must be an object");
	const o = c as Record<string, unknown>;
	const env = strings(o.Env, "Env", what);
	for (const e of env)
		if (!/^[^=]+=/.test(e))
			throw E(what, "config.Env entries must be KEY=VALUE");
	return {
		entrypoint: strings(o.Entrypoint, "Entrypoint", what),
		cmd: strings(o.Cmd, "Cmd", what),
		env,
		workingDir: text(o.WorkingDir, "WorkingDir", what),
		user: text(o.User, "User", what),
	};
}
