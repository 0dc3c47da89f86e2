/**
 * Reading a small secret file (the broker's master key, an admin token). A secret file that group
 * or others may access is refused, wherever it is read — `dadi-broker serve`, `init`, and every
 * client command — with the file, its mode and the fix: someone else on the machine may already
 * have read it, and a broker should not carry on as if nothing were wrong. Errors name the file,
 * never what it holds.
 */
import { type FileHandle, open } from "node:fs/promises";
import { DadiError, fromSystemError } from "../errors.js";

/**
 * The bytes of `file` (at most `maxBytes`), after checking that it is a regular file that only its
 * owner may access. `what` names it in messages ("master key file", "admin token file"). The
 * caller zeroes the buffer when done.
 */
export async function readSecretFile(
	file: string,
	what: string,
	maxBytes: number,
): Promise<Buffer> {
	let fh: FileHandle | undefined;
	try {
		fh = await open(file, "r");
		const st = await fh.stat();
		if (!st.isFile())
			throw new DadiError("KEY_INVALID", `${what} ${file}: not a regular file`);
		checkSecretMode(file, what, st.mode);
		if (st.size > maxBytes) throw tooLarge(file, what);
		const bytes = Buffer.alloc(maxBytes + 1);
		let n = 0;
		for (;;) {
			const { bytesRead } = await fh.read(bytes, n, bytes.length - n, n);
			if (bytesRead === 0) break;
			n += bytesRead;
			if (n > maxBytes) break;
		}
		if (n > maxBytes) {
			bytes.fill(0);
			throw tooLarge(file, what);
		}
		return bytes.subarray(0, n);
	} catch (e) {
		throw fromSystemError(e, file, `reading the ${what}`);
	} finally {
		await fh?.close().catch(() => {});
	}
}

/** KEY_INVALID unless `mode` gives group and others no access at all. */
export function checkSecretMode(
	file: string,
	what: string,
	mode: number,
): void {
	if ((mode & 0o077) === 0) return;
	const octal = (mode & 0o777).toString(8).padStart(4, "0");
	throw new DadiError(
		"KEY_INVALID",
		`${what} ${file}: mode ${octal} lets group or others read it; run 'chmod 600 ${file}' (and consider the secret exposed if anyone else could read it)`,
	);
}

function tooLarge(file: string, what: string): DadiError {
	return new DadiError("KEY_INVALID", `${what} ${file}: too large to be one`);
}
