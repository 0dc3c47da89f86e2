/**
 * Reading a small file that an untrusted party may have replaced: it is opened without blocking
 * (a FIFO would otherwise hang the open), must be a regular file once open (not a device such as
 * /dev/zero behind a symlink, not a directory), and is read only up to a bound, so no planted file
 * can make a reader hang or allocate without limit.
 */
import { constants } from "node:fs";
import { open } from "node:fs/promises";
import { DadiError, type ErrorCode, fromSystemError } from "./errors.js";

export async function readRegularFile(
	path: string,
	max: number,
	what: string,
	code: ErrorCode = "INPUT_INVALID",
): Promise<Buffer> {
	let fh: Awaited<ReturnType<typeof open>>;
	try {
		fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
	} catch (e) {
		throw fromSystemError(e, path, `reading ${what}`);
	}
	try {
		const st = await fh.stat();
		if (!st.isFile())
			throw new DadiError(
				code,
				`${what} (${path}): not a regular file (a ${st.isFIFO() ? "FIFO" : st.isDirectory() ? "directory" : "device or special file"})`,
			);
		if (st.size > max)
			throw new DadiError(
				code,
				`${what} (${path}): ${st.size} bytes, more than the ${max} allowed`,
			);
		// One byte more than allowed, to notice a file that grew since fstat.
		const buf = Buffer.allocUnsafe(Math.min(max, st.size) + 1);
		let n = 0;
		for (;;) {
			const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
			if (bytesRead === 0) break;
			n += bytesRead;
			if (n === buf.length) break;
		}
		if (n > max)
			throw new DadiError(
				code,
				`${what} (${path}): more than the ${max} bytes allowed`,
			);
		return buf.subarray(0, n);
	} catch (e) {
		throw fromSystemError(e, path, `reading ${what}`);
	} finally {
		await fh.close().catch(() => {});
	}
}
