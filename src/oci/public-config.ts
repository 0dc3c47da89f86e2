/**
 * The public OCI image config of a sealed image (format v2, docs/format.md §6.3). Container tools
 * (skopeo, containerd) need an ordinary `application/vnd.oci.image.config.v1+json` config to accept
 * an image: a platform, and `rootfs.diff_ids` with one entry per layer. This one holds nothing
 * secret:
 *
 * - `architecture`, `os` (and `variant`) of the image;
 * - `config.Entrypoint` = [SEALED_ENTRYPOINT] only — no env, no command, no user, no labels (unless
 *   the sealer published labels with `--public-labels`): a runtime that understands dadi replaces
 *   the process with the one in the decrypted original config; one that does not fails clearly on a
 *   missing file instead of running something else;
 * - `rootfs.diff_ids` = the sealed layer blob digests (a sealed layer is stored uncompressed, so its
 *   diff_id is its digest);
 * - the sealed config as the extra member SEALED_MEMBER. Image-config readers ignore members they do
 *   not know, and the registry keeps this blob because the manifest references it.
 *
 * Everything outside the member is a function of the member's authenticated values: a reader
 * rebuilds it and requires the stored document to say exactly that, so the public part is
 * authenticated too (its serialisation is not, as for any JSON we read).
 */
import { DadiError } from "../errors.js";
import { parseJson } from "./layout.js";
import {
	checkSchemaVersion,
	parseSealedConfig,
	type SealedConfig,
	sealedConfigValue,
} from "./sealed-config.js";

/** The entrypoint of every sealed image: a path no real image has (exported for runtimes). */
export const SEALED_ENTRYPOINT = "/.dadi/sealed-image-entrypoint";
/** The member of the public config that carries the sealed config. */
export const SEALED_MEMBER = "io.dadi.sealed";

/** The public config as a JSON value: what a host, registry or container tool reads. */
export function publicConfigValue(c: SealedConfig): Record<string, unknown> {
	const config: Record<string, unknown> = { Entrypoint: [SEALED_ENTRYPOINT] };
	if (c.publicLabels !== undefined) config.Labels = { ...c.publicLabels };
	return {
		architecture: c.platform.architecture,
		os: c.platform.os,
		...(c.platform.variant === undefined
			? {}
			: { variant: c.platform.variant }),
		config,
		rootfs: { type: "layers", diff_ids: c.layers.map((l) => l.digest) },
		[SEALED_MEMBER]: sealedConfigValue(c),
	};
}

/** The config blob the writer stores: two-space indentation and a trailing newline. */
export function serializePublicConfig(c: SealedConfig): Buffer {
	return Buffer.from(
		`${JSON.stringify(publicConfigValue(c), null, 2)}\n`,
		"utf8",
	);
}

const E = (msg: string) =>
	new DadiError("LAYOUT_INVALID", `public image config: ${msg}`);

/**
 * Parses a sealed image's config blob: the sealed member (checked and parsed exactly) and the
 * public part around it, which must be what the member implies and nothing else.
 */
export function parsePublicConfig(bytes: Buffer): SealedConfig {
	const doc = parseJson(bytes, "image config");
	if (typeof doc !== "object" || doc === null || Array.isArray(doc))
		throw E("not a JSON object");
	const o = doc as Record<string, unknown>;
	const member = o[SEALED_MEMBER];
	if (typeof member !== "object" || member === null || Array.isArray(member))
		throw E(`no "${SEALED_MEMBER}" object: not a dadi sealed image config`);
	checkSchemaVersion((member as Record<string, unknown>).schemaVersion);
	const sealed = parseSealedConfig(member);
	checkPublicPart(o, sealed);
	return sealed;
}

/** The public members must be exactly those `publicConfigValue` writes for `sealed`. */
export function checkPublicPart(
	o: Record<string, unknown>,
	sealed: SealedConfig,
): void {
	const want = publicConfigValue(sealed);
	const names = Object.keys(o);
	for (const k of names)
		if (!Object.hasOwn(want, k))
			throw E(`unexpected member "${k.slice(0, 60)}"`);
	for (const k of Object.keys(want))
		if (!Object.hasOwn(o, k)) throw E(`member "${k}" is missing`);
	for (const k of ["architecture", "os", "variant"])
		if (o[k] !== want[k])
			throw E(`${k} is not the platform the sealed config states`);
	const cfg = o.config;
	if (typeof cfg !== "object" || cfg === null || Array.isArray(cfg))
		throw E("config is not an object");
	const c = cfg as Record<string, unknown>;
	const wantCfg = want.config as Record<string, unknown>;
	if (Object.keys(c).length !== Object.keys(wantCfg).length)
		throw E("config holds more than the sealed entrypoint and public labels");
	const ep = c.Entrypoint;
	if (!Array.isArray(ep) || ep.length !== 1 || ep[0] !== SEALED_ENTRYPOINT)
		throw E(`config.Entrypoint must be ["${SEALED_ENTRYPOINT}"]`);
	if (!sameLabels(c.Labels, wantCfg.Labels))
		throw E("config.Labels are not the public labels the sealed config states");
	const rootfs = o.rootfs;
	if (typeof rootfs !== "object" || rootfs === null || Array.isArray(rootfs))
		throw E("rootfs is not an object");
	const r = rootfs as Record<string, unknown>;
	if (Object.keys(r).length !== 2 || r.type !== "layers")
		throw E('rootfs must be exactly {"type":"layers","diff_ids":[…]}');
	const ids = r.diff_ids;
	if (
		!Array.isArray(ids) ||
		ids.length !== sealed.layers.length ||
		ids.some((d, i) => d !== sealed.layers[i]?.digest)
	)
		throw E("rootfs.diff_ids are not the sealed layers' digests");
}

function sameLabels(got: unknown, want: unknown): boolean {
	if (want === undefined) return got === undefined;
	if (typeof got !== "object" || got === null || Array.isArray(got))
		return false;
	const g = got as Record<string, unknown>;
	const w = want as Record<string, string>;
	const gk = Object.keys(g);
	return (
		gk.length === Object.keys(w).length &&
		gk.every((k) => Object.hasOwn(w, k) && g[k] === w[k])
	);
}
