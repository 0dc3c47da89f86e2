import {
	chmod,
	link,
	mkdir,
	readdir,
	readFile,
	rename,
	stat,
	unlink,
} from "node:fs/promises";
import { dirname, join } from "node:path";
import { DadiError, fromSystemError } from "../errors.js";
import { acquirePidLock, releasePidLock } from "../pid-lock.js";
import { AuditLog, type AuditLogOptions } from "./audit-log.js";
import {
	decodeB64u,
	deriveSubkey,
	fsyncDir,
	KeyStore,
	openBox,
	sealBox,
	writeViaTemp,
} from "./keystore.js";

export const STATE_FORMAT = "dadi-broker-state";
export const STATE_VERSION = 1;
const CHECK_INFO = "dadi-broker check v1";
const CHECK_AAD = Buffer.from("dadi-broker-state v1 check", "utf8");
const CHECK_PLAINTEXT = Buffer.from(
	"dadi-broker: this master key opens this state directory",
	"utf8",
);
const MAX_STATE_JSON = 64 * 1024;

export interface BrokerState {
	dir: string;
	keystore: KeyStore;
	audit: AuditLog;
	/** Waits for pending writes, closes the audit log and releases the lock. */
	close(): Promise<void>;
}

/**
 * Creates a state directory (0700; an existing empty directory is fine) and its broker.json.
 * OUTPUT_EXISTS when it already is one, or holds anything else.
 */
export async function initStateDir(
	dir: string,
	masterKey: Buffer,
): Promise<void> {
	const checkKey = deriveSubkey(masterKey, CHECK_INFO);
	let created: string | undefined;
	try {
		created = await mkdir(dir, { recursive: true, mode: 0o700 });
		if (created) await fsyncDir(dirname(created));
	} catch (e) {
		throw fromSystemError(e, dir, "creating the state directory");
	}
	let names: string[];
	try {
		names = await readdir(dir);
	} catch (e) {
		throw fromSystemError(e, dir, "creating the state directory");
	}
	if (names.includes("broker.json"))
		throw new DadiError(
			"OUTPUT_EXISTS",
			`${dir} is already a broker state directory (it has a broker.json)`,
		);
	if (names.length > 0)
		throw new DadiError(
			"OUTPUT_EXISTS",
			`${dir} is not empty; give a new or empty directory for the broker state`,
		);
	const doc = {
		format: STATE_FORMAT,
		version: STATE_VERSION,
		check: sealBox(checkKey, CHECK_PLAINTEXT, CHECK_AAD),
	};
	checkKey.fill(0);
	const file = join(dir, "broker.json");
	try {
		if (!created) await chmod(dir, 0o700);
		await writeNew(file, Buffer.from(`${JSON.stringify(doc)}\n`));
		await mkdir(join(dir, "resources"), { mode: 0o700 });
		await mkdir(join(dir, "internal"), { mode: 0o700 });
		await fsyncDir(dir);
	} catch (e) {
		throw fromSystemError(e, file, "creating the state directory");
	}
}

/**
 * Writes a file that must not exist yet, atomically: a complete temporary file is linked into
 * place (link fails if the name exists, so two concurrent inits cannot overwrite each other).
 */
function writeNew(file: string, data: Buffer): Promise<void> {
	return writeViaTemp(file, data, async (tmp) => {
		try {
			await link(tmp, file);
			await unlink(tmp);
		} catch (e) {
			const code = (e as NodeJS.ErrnoException).code;
			if (code !== "EPERM" && code !== "ENOTSUP" && code !== "EOPNOTSUPP")
				throw e;
			await rename(tmp, file); // a file system without hard links
		}
		await fsyncDir(dirname(file));
	});
}

/** Reads and checks broker.json: its format, version, and that `masterKey` opens it. */
async function checkStateFile(dir: string, masterKey: Buffer): Promise<void> {
	const file = join(dir, "broker.json");
	let bytes: Buffer;
	try {
		const st = await stat(file);
		if (!st.isFile() || st.size > MAX_STATE_JSON)
			throw new DadiError("FORMAT_INVALID", `${file}: not a broker state file`);
		bytes = await readFile(file);
	} catch (e) {
		throw fromSystemError(e, file, "opening the state directory");
	}
	let doc: unknown;
	try {
		doc = JSON.parse(bytes.toString("utf8"));
	} catch {
		doc = undefined;
	}
	const d = doc as Record<string, unknown> | undefined;
	if (typeof d !== "object" || d === null || d.format !== STATE_FORMAT)
		throw new DadiError(
			"FORMAT_INVALID",
			`${file}: not a broker state file (expected format "${STATE_FORMAT}")`,
		);
	if (d.version !== STATE_VERSION)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`${file}: state directory version ${JSON.stringify(d.version)} is not supported (this broker reads version ${STATE_VERSION})`,
		);
	const check = d.check as Record<string, unknown> | undefined;
	if (
		typeof check !== "object" ||
		check === null ||
		decodeB64u(check.iv)?.length !== 12 ||
		decodeB64u(check.tag)?.length !== 16 ||
		!decodeB64u(check.ct)
	)
		throw new DadiError("FORMAT_INVALID", `${file}: malformed "check" field`);
	const key = deriveSubkey(masterKey, CHECK_INFO);
	const plain = openBox(key, check, CHECK_AAD);
	key.fill(0);
	if (!plain?.equals(CHECK_PLAINTEXT))
		throw new DadiError(
			"KEY_MISMATCH",
			`the master key does not open state directory ${dir}`,
		);
}

/**
 * Opens a state directory for exclusive use by this process: checks the master key against
 * broker.json, takes broker.lock, opens the key store and the audit log. With `create`, a missing
 * (or empty) directory is initialized first.
 */
export async function openStateDir(
	dir: string,
	masterKey: Buffer,
	o: {
		create?: boolean;
		now?: () => Date;
		/** Rotation and retention of the audit log (audit-log.ts). */
		audit?: Omit<AuditLogOptions, "now">;
	} = {},
): Promise<BrokerState> {
	deriveSubkey(masterKey, CHECK_INFO).fill(0); // KEY_INVALID for a key of the wrong size
	let hasState = true;
	try {
		await stat(join(dir, "broker.json"));
	} catch (e) {
		if ((e as NodeJS.ErrnoException).code !== "ENOENT")
			throw fromSystemError(e, dir, "opening the state directory");
		hasState = false;
	}
	if (!hasState) {
		if (o.create) await initStateDir(dir, masterKey);
		else
			throw new DadiError(
				"INPUT_NOT_FOUND",
				`${dir} is not a broker state directory (no broker.json); create one with 'dadi-broker init'`,
			);
	}
	await checkStateFile(dir, masterKey);
	const lock = await acquirePidLock(
		join(dir, "broker.lock"),
		`state directory ${dir}`,
	);
	let keystore: KeyStore | undefined;
	try {
		const now = o.now ? { now: o.now } : {};
		keystore = await KeyStore.open(dir, masterKey, now);
		const audit = await AuditLog.open(join(dir, "audit.log"), {
			...o.audit,
			...now,
		});
		const ks = keystore;
		let closing: Promise<void> | undefined;
		return {
			dir,
			keystore: ks,
			audit,
			close() {
				closing ??= (async () => {
					try {
						await audit.close();
						await ks.close();
					} finally {
						await releasePidLock(lock);
					}
				})();
				return closing;
			},
		};
	} catch (e) {
		await keystore?.close().catch(() => {});
		await releasePidLock(lock);
		throw e;
	}
}
