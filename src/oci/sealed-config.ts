/**
 * The sealed config (format v2, docs/format.md §6.3): everything a reader needs besides the key —
 * layers, wrapped layer keys, chunk size, suite, key reference — plus the original OCI image config
 * and the sealer's parameters, both encrypted. It travels as the `io.dadi.sealed` member of the
 * image's public OCI config (public-config.ts). Every value in it is public except the two
 * encrypted records, and nothing public is a function of a secret that an observer could compute
 * without the key (docs/threat-model.md §5).
 *
 * The whole config is authenticated by a MAC under the image key (crypto/config-auth.ts) over
 * `canonicalConfigBytes`, which rebuilds the JSON from the checked fields in a fixed order, so key
 * order or whitespace in the stored document cannot change what is authenticated.
 */
import { DadiError } from "../errors.js";
import {
	type CompressionName,
	isPowerOfTwoChunkSize,
	SUITE_AES256GCM_HKDFSHA256,
	SUITE_NAMES,
} from "../format/constants.js";
import { isCanonicalBase64url } from "./base64url.js";
import { checkDigest, shown } from "./digest.js";

export const CONFIG_SCHEMA_VERSION = 2;
export const WRAP_ALG = "HKDF-SHA256+A256KW";
export type FsType = "raw" | "ext4" | "erofs";
export const MAX_LAYERS = 1024;
/** A wrapped layer key (AES Key Wrap of 32 bytes). */
const WRAPPED_KEY_BYTES = 40;
/** An SIV record: 12-byte nonce and 16-byte tag around the ciphertext. */
const SIV_OVERHEAD = 28;

/** What the refusal of an image sealed with format v1 says, wherever it is noticed. */
export const V1_REFUSAL =
	"sealed with format v1 by an earlier dadi; this build reads format v2 only: re-seal the image from its source with this version (dadi-seal seal)";

export interface SealedLayerEntry {
	digest: string;
	size: number;
	layerId: string; // hex
	virtualSize: number;
	compression: CompressionName;
	wrappedKey: string; // base64url
	storedChunks: number;
	zeroChunks: number;
}

/** The platform the image is for, as the public OCI config states it. */
export interface SealedPlatform {
	os: string;
	architecture: string;
	variant?: string;
}

export interface SealedConfig {
	schemaVersion: 2;
	sealId: string; // hex
	chunkSize: number;
	suite: string;
	fsType: FsType;
	virtualSize: number;
	platform: SealedPlatform;
	/** Labels the sealer chose to publish (`--public-labels`); absent by default. */
	publicLabels?: Record<string, string>;
	key: { ref: string; kid: string; wrap: string };
	layers: SealedLayerEntry[];
	/** base64url of the encrypted original OCI image config (a sealed record), or null (raw disks). */
	imageConfig: string | null;
	/** Container images: base64url of the encrypted seal parameters (seal/seal-params.ts). */
	sealParams?: string;
	/** base64url HMAC-SHA256 over canonicalConfigBytes. */
	mac: string;
}

const E = (msg: string) =>
	new DadiError("LAYOUT_INVALID", `sealed config: ${msg}`);

function int(v: unknown, what: string, min = 0): number {
	if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min)
		throw E(`${what} must be an integer >= ${min}`);
	return v;
}
function str(v: unknown, what: string, re?: RegExp): string {
	if (typeof v !== "string" || (re && !re.test(v)))
		throw E(`${what} is missing or malformed`);
	return v;
}
/** A canonical base64url field (base64url.ts) of `length` bytes, or at least `min` bytes. */
function b64(
	v: unknown,
	what: string,
	size: { length: number } | { min: number },
): string {
	const ok =
		"length" in size
			? isCanonicalBase64url(v, size.length)
			: isCanonicalBase64url(v) &&
				Buffer.from(v as string, "base64url").length >= size.min;
	if (!ok)
		throw E(
			`${what} is not canonical base64url of ${"length" in size ? `${size.length}` : `at least ${size.min}`} bytes`,
		);
	return v as string;
}
function object(v: unknown, what: string): Record<string, unknown> {
	if (typeof v !== "object" || v === null || Array.isArray(v))
		throw E(`${what} must be an object`);
	return v as Record<string, unknown>;
}
function exactKeys(
	o: Record<string, unknown>,
	keys: readonly string[],
	what: string,
): void {
	for (const k of Object.keys(o))
		if (!keys.includes(k)) throw E(`${what} has an unknown field "${k}"`);
}

const HEX32 = /^[0-9a-f]{32}$/;
const HEX64 = /^[0-9a-f]{64}$/;
/** OCI platform values: `linux`, `amd64`, `arm64`, `v8`, … */
export const PLATFORM_VALUE_RE = /^[A-Za-z0-9._-]{1,64}$/;
export const KEY_REF_RE =
	/^kbs:\/\/\/[A-Za-z0-9._-]+\/[A-Za-z0-9._-]+\/[A-Za-z0-9._-]+$/;

const TOP_FIELDS = [
	"schemaVersion",
	"sealId",
	"chunkSize",
	"suite",
	"fsType",
	"virtualSize",
	"platform",
	"publicLabels",
	"key",
	"layers",
	"imageConfig",
	"sealParams",
	"mac",
] as const;
const LAYER_FIELDS = [
	"digest",
	"size",
	"layerId",
	"virtualSize",
	"compression",
	"wrappedKey",
	"storedChunks",
	"zeroChunks",
] as const;

/** Checks the schema version first: v1 is refused with the re-seal advice, anything else unknown. */
export function checkSchemaVersion(v: unknown): void {
	if (v === CONFIG_SCHEMA_VERSION) return;
	if (v === 1)
		throw new DadiError("FORMAT_UNSUPPORTED", `sealed config: ${V1_REFUSAL}`);
	throw new DadiError(
		"FORMAT_UNSUPPORTED",
		`sealed config: schemaVersion ${shown(v, 20)} is not supported (this build reads ${CONFIG_SCHEMA_VERSION})`,
	);
}

export function parseSealedConfig(v: unknown): SealedConfig {
	const o = object(v, "the sealed config");
	checkSchemaVersion(o.schemaVersion);
	exactKeys(o, TOP_FIELDS, "config");
	const chunkSize = int(o.chunkSize, "chunkSize", 1);
	if (!isPowerOfTwoChunkSize(chunkSize))
		throw E(`chunkSize ${chunkSize} is not a power of two in 4 KiB..1 MiB`);
	const suite = str(o.suite, "suite");
	if (suite !== SUITE_NAMES[SUITE_AES256GCM_HKDFSHA256])
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`sealed config: suite "${suite.slice(0, 40)}" is not supported`,
		);
	const fsType = str(o.fsType, "fsType");
	if (fsType !== "raw" && fsType !== "ext4" && fsType !== "erofs")
		throw E(`fsType "${fsType.slice(0, 20)}" is unknown`);
	const key = object(o.key, "key");
	exactKeys(key, ["ref", "kid", "wrap"], "key");
	if (key.wrap !== WRAP_ALG)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`sealed config: key wrap ${shown(key.wrap, 40)} is not supported`,
		);
	if (!Array.isArray(o.layers) || o.layers.length === 0)
		throw E("layers must be a non-empty array");
	if (o.layers.length > MAX_LAYERS) throw E(`more than ${MAX_LAYERS} layers`);
	const layers = o.layers.map((l: unknown, i: number) => parseLayer(l, i));
	const top = layers[layers.length - 1] as SealedLayerEntry;
	const virtualSize = int(o.virtualSize, "virtualSize", 1);
	if (virtualSize !== top.virtualSize)
		throw E("virtualSize differs from the top layer's");
	if (o.imageConfig !== null)
		b64(o.imageConfig, "imageConfig (or null)", { min: SIV_OVERHEAD });
	return {
		schemaVersion: CONFIG_SCHEMA_VERSION,
		sealId: str(o.sealId, "sealId", HEX32),
		chunkSize,
		suite,
		fsType,
		virtualSize,
		platform: parsePlatform(o.platform),
		...(o.publicLabels === undefined
			? {}
			: { publicLabels: parseLabels(o.publicLabels, "publicLabels") }),
		key: {
			ref: str(key.ref, "key.ref", KEY_REF_RE),
			kid: b64(key.kid, "key.kid", { length: 32 }),
			wrap: WRAP_ALG,
		},
		layers,
		imageConfig: o.imageConfig as string | null,
		...(o.sealParams === undefined
			? {}
			: { sealParams: b64(o.sealParams, "sealParams", { min: SIV_OVERHEAD }) }),
		mac: b64(o.mac, "mac", { length: 32 }),
	};
}

function parseLayer(l: unknown, i: number): SealedLayerEntry {
	const x = object(l, `layers[${i}]`);
	exactKeys(x, LAYER_FIELDS, `layers[${i}]`);
	const compression = str(x.compression, `layers[${i}].compression`);
	if (compression !== "none" && compression !== "zstd")
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`sealed config: layers[${i}] uses unknown compression "${compression.slice(0, 20)}"`,
		);
	return {
		digest: checkDigest(x.digest, `sealed config: layers[${i}].digest`),
		size: int(x.size, `layers[${i}].size`, 128),
		layerId: str(x.layerId, `layers[${i}].layerId`, HEX64),
		virtualSize: int(x.virtualSize, `layers[${i}].virtualSize`, 1),
		compression,
		wrappedKey: b64(x.wrappedKey, `layers[${i}].wrappedKey`, {
			length: WRAPPED_KEY_BYTES,
		}),
		storedChunks: int(x.storedChunks, `layers[${i}].storedChunks`),
		zeroChunks: int(x.zeroChunks, `layers[${i}].zeroChunks`),
	};
}

export function parsePlatform(v: unknown): SealedPlatform {
	const p = object(v, "platform");
	exactKeys(p, ["os", "architecture", "variant"], "platform");
	return {
		os: str(p.os, "platform.os", PLATFORM_VALUE_RE),
		architecture: str(
			p.architecture,
			"platform.architecture",
			PLATFORM_VALUE_RE,
		),
		...(p.variant === undefined
			? {}
			: { variant: str(p.variant, "platform.variant", PLATFORM_VALUE_RE) }),
	};
}

/** A string → string map (OCI labels); at most 1024 entries. */
export function parseLabels(v: unknown, what: string): Record<string, string> {
	const o = object(v, what);
	const keys = Object.keys(o);
	if (keys.length > 1024) throw E(`${what} has more than 1024 entries`);
	const out: Record<string, string> = {};
	for (const k of keys) {
		if (typeof o[k] !== "string") throw E(`${what}: a value is not a string`);
		out[k] = o[k] as string;
	}
	return out;
}

/** `{"a":…,"b":…}` with the members in the order given (each value already JSON text). */
function members(parts: [string, string][]): string {
	return `{${parts.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(",")}}`;
}

/** A label map with its keys sorted by UTF-16 code units (RFC 8785 order), as JSON text. */
export function sortedLabelsJson(labels: Record<string, string>): string {
	const keys = Object.keys(labels).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
	return members(
		keys.map((k) => [k, JSON.stringify(labels[k])] as [string, string]),
	);
}

export function platformJson(p: SealedPlatform): string {
	const parts: [string, string][] = [
		["os", JSON.stringify(p.os)],
		["architecture", JSON.stringify(p.architecture)],
	];
	if (p.variant !== undefined)
		parts.push(["variant", JSON.stringify(p.variant)]);
	return members(parts);
}

/** The bytes the MAC covers: every field but `mac`, in a fixed order (format §5.10). */
export function canonicalConfigBytes(c: Omit<SealedConfig, "mac">): Buffer {
	const parts: [string, string][] = [
		["schemaVersion", JSON.stringify(c.schemaVersion)],
		["sealId", JSON.stringify(c.sealId)],
		["chunkSize", JSON.stringify(c.chunkSize)],
		["suite", JSON.stringify(c.suite)],
		["fsType", JSON.stringify(c.fsType)],
		["virtualSize", JSON.stringify(c.virtualSize)],
		["platform", platformJson(c.platform)],
	];
	if (c.publicLabels !== undefined)
		parts.push(["publicLabels", sortedLabelsJson(c.publicLabels)]);
	parts.push(
		[
			"key",
			JSON.stringify({ ref: c.key.ref, kid: c.key.kid, wrap: c.key.wrap }),
		],
		[
			"layers",
			JSON.stringify(
				c.layers.map((l) => ({
					digest: l.digest,
					size: l.size,
					layerId: l.layerId,
					virtualSize: l.virtualSize,
					compression: l.compression,
					wrappedKey: l.wrappedKey,
					storedChunks: l.storedChunks,
					zeroChunks: l.zeroChunks,
				})),
			),
		],
		["imageConfig", JSON.stringify(c.imageConfig)],
	);
	if (c.sealParams !== undefined)
		parts.push(["sealParams", JSON.stringify(c.sealParams)]);
	return Buffer.from(members(parts), "utf8");
}

/** The stored member: the canonical fields plus the MAC, as a JSON value. */
export function sealedConfigValue(c: SealedConfig): Record<string, unknown> {
	const body = JSON.parse(canonicalConfigBytes(c).toString("utf8")) as Record<
		string,
		unknown
	>;
	return { ...body, mac: c.mac };
}
