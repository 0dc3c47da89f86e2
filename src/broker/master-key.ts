/**
 * The broker's master key: 32 random bytes, written as base64url text (one line) by `dadi-broker
 * init`. Every key the broker stores is encrypted under subkeys derived from it, so it never appears
 * in a message: errors name where the key came from, never what it held.
 */
import { randomBytes } from "node:crypto";
import { DadiError } from "../errors.js";
import { readSecretFile } from "./secret-file.js";

export const MASTER_KEY_BYTES = 32;
const ENV_NAME = "DADI_BROKER_MASTER_KEY";
/** A key file is one short line; anything much larger is not a key file. */
const MAX_KEY_FILE = 4096;

/**
 * Parses the base64url text of exactly 32 bytes (surrounding whitespace and one "=" of padding
 * allowed). `source` names where the text came from; the text itself is never echoed.
 */
export function parseMasterKey(text: string, source: string): Buffer {
	const t = text.trim().replace(/=$/, "");
	const invalid = () =>
		new DadiError(
			"KEY_INVALID",
			`${source}: not a broker master key (expected the base64url encoding of ${MASTER_KEY_BYTES} bytes, as 'dadi-broker init' writes)`,
		);
	if (!/^[A-Za-z0-9_-]{43}$/.test(t)) throw invalid();
	const decoded = Buffer.from(t, "base64url");
	// Canonical only: the last character carries 2 unused bits, which must be zero.
	const ok =
		decoded.length === MASTER_KEY_BYTES && decoded.toString("base64url") === t;
	const key = Buffer.alloc(MASTER_KEY_BYTES); // own memory, not a slab shared with other buffers
	if (ok) decoded.copy(key);
	decoded.fill(0);
	if (!ok) throw invalid();
	return key;
}

/** A fresh random master key as the text of a key file (base64url and a newline). */
export function generateMasterKeyText(): string {
	const key = randomBytes(MASTER_KEY_BYTES);
	const text = `${key.toString("base64url")}\n`;
	key.fill(0);
	return text;
}

/**
 * The master key from a file (wins when both are given) or from the value of
 * DADI_BROKER_MASTER_KEY. A key file that group or others may access is refused (secret-file.ts).
 */
export async function readMasterKey(o: {
	file?: string;
	envValue?: string;
}): Promise<Buffer> {
	if (o.file !== undefined) return readKeyFile(o.file);
	if (o.envValue !== undefined && o.envValue !== "")
		return parseMasterKey(o.envValue, ENV_NAME);
	throw new DadiError(
		"USAGE",
		"the broker needs a master key: --master-key FILE or DADI_BROKER_MASTER_KEY (create one with 'dadi-broker init')",
	);
}

async function readKeyFile(file: string): Promise<Buffer> {
	const bytes = await readSecretFile(file, "master key file", MAX_KEY_FILE);
	try {
		return parseMasterKey(bytes.toString("utf8"), `master key file ${file}`);
	} finally {
		bytes.fill(0);
	}
}
