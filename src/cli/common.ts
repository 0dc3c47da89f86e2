/** What every command shares: exit codes, error printing, key files, sizes. */
import { readFile } from "node:fs/promises";
import { CommanderError } from "commander";
import { type ImageKey, parseImageKey } from "../crypto/image-key.js";
import {
	asDadiError,
	DadiError,
	type ErrorCode,
	fromSystemError,
} from "../errors.js";

/** Exit codes, documented in docs/cli.md. */
export const EXIT = {
	ok: 0,
	internal: 1,
	usage: 2,
	input: 3,
	format: 4,
	integrity: 5,
	key: 6,
	io: 7,
	remote: 8,
	denied: 9,
} as const;

export function exitCodeFor(code: ErrorCode): number {
	switch (code) {
		case "USAGE":
			return EXIT.usage;
		case "INPUT_NOT_FOUND":
		case "INPUT_INVALID":
		case "OUTPUT_EXISTS":
		case "PRECONDITION_FAILED":
		case "OUT_OF_RANGE":
			return EXIT.input;
		case "FORMAT_INVALID":
		case "FORMAT_UNSUPPORTED":
		case "LAYOUT_INVALID":
			return EXIT.format;
		case "AUTH_FAILED":
		case "DIGEST_MISMATCH":
		case "LAYER_MISMATCH":
			return EXIT.integrity;
		case "KEY_INVALID":
		case "KEY_MISMATCH":
			return EXIT.key;
		case "IO":
			return EXIT.io;
		case "NETWORK":
		case "REMOTE_DENIED":
		case "REMOTE_PROTOCOL":
			return EXIT.remote;
		case "EVIDENCE_INVALID":
		case "EVIDENCE_UNSUPPORTED":
		case "SIGNATURE_INVALID":
		case "CHAIN_UNTRUSTED":
		case "CERT_EXPIRED":
		case "CERT_REVOKED":
		case "TCB_MISMATCH":
		case "EVENTLOG_MISMATCH":
		case "POLICY_DENIED":
		case "SESSION_INVALID":
			return EXIT.denied;
		case "POLICY_INVALID":
			return EXIT.input;
		default:
			return EXIT.internal;
	}
}

/** Runs a command's action; prints a one-line error and sets the exit code on failure. */
export async function runAction(
	prog: string,
	json: boolean,
	fn: () => Promise<void>,
): Promise<void> {
	try {
		await fn();
	} catch (e) {
		const err = asDadiError(e);
		if (json)
			process.stdout.write(
				`${JSON.stringify({ ok: false, error: { code: err.code, message: err.message } })}\n`,
			);
		process.stderr.write(`${prog}: error: ${err.message} [${err.code}]\n`);
		process.exitCode = exitCodeFor(err.code);
	}
}

/** Parses argv with commander, mapping its usage errors to exit code 2. */
export async function runProgram(
	program: import("commander").Command,
	argv: string[],
): Promise<void> {
	const configure = (c: import("commander").Command): void => {
		c.exitOverride();
		c.configureOutput({ writeErr: (s) => process.stderr.write(s) });
		for (const sub of c.commands) configure(sub);
	};
	configure(program);
	try {
		await program.parseAsync(argv);
	} catch (e) {
		if (e instanceof CommanderError) {
			process.exitCode = e.exitCode === 0 ? EXIT.ok : EXIT.usage;
			return;
		}
		throw e;
	}
}

/**
 * Reads an image key file. A missing file gets advice for what the key is for: a new key can seal
 * a new image, but an existing image opens only with the key it was sealed with.
 */
export async function readKeyFile(
	path: string,
	purpose: "seal" | "open" = "seal",
): Promise<ImageKey> {
	let text: string;
	try {
		text = await readFile(path, "utf8");
	} catch (e) {
		const err = fromSystemError(e, path, "reading the key file");
		if (err.code === "INPUT_NOT_FOUND")
			throw new DadiError(
				"INPUT_NOT_FOUND",
				purpose === "seal"
					? `${path}: key file not found; create one with 'dadi-seal keygen --out ${path}'`
					: `${path}: key file not found; an image opens only with the key it was sealed with: give the file that was passed to 'dadi-seal seal --key', or (dadi-guest) have a key broker release it with --broker URL (a new key from 'dadi-seal keygen' cannot open it)`,
			);
		throw err;
	}
	return parseImageKey(text, path);
}

/** "65536", "64k", "64KiB", "1M" → bytes. */
export function parseSize(text: string, what: string): number {
	const m = /^(\d+)\s*(k|kb|kib|m|mb|mib|g|gb|gib)?$/i.exec(text.trim());
	if (!m)
		throw new DadiError(
			"USAGE",
			`${what}: "${text}" is not a size (e.g. 65536, 64k, 1M, 10G)`,
		);
	const unit = (m[2] ?? "").toLowerCase();
	const mult = unit.startsWith("k")
		? 1024
		: unit.startsWith("m")
			? 1024 * 1024
			: unit.startsWith("g")
				? 1024 * 1024 * 1024
				: 1;
	return Number(m[1]) * mult;
}

export function formatBytes(n: number): string {
	const units = ["B", "KiB", "MiB", "GiB", "TiB"];
	let v = n;
	let u = 0;
	while (v >= 1024 && u < units.length - 1) {
		v /= 1024;
		u++;
	}
	return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

export function printJson(v: unknown): void {
	process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
}
