/**
 * A small, bounds-checked cpio "newc" reader: lists what an archive holds. Pure. Used by the tests
 * (the writer's output read back) and to inspect a built initramfs.
 */
import { DadiError } from "../errors.js";

export interface CpioRecord {
	path: string;
	ino: number;
	mode: number;
	uid: number;
	gid: number;
	nlink: number;
	mtime: number;
	rdevMajor: number;
	rdevMinor: number;
	data: Buffer;
}

const HEADER = 110;
const pad4 = (n: number) => (4 - (n % 4)) % 4;

function bad(at: number, why: string): DadiError {
	return new DadiError("FORMAT_INVALID", `cpio archive at byte ${at}: ${why}`);
}

/** The records of `archive` up to (not including) TRAILER!!!. */
export function readCpio(archive: Buffer): CpioRecord[] {
	const out: CpioRecord[] = [];
	let at = 0;
	for (;;) {
		if (at + HEADER > archive.length) throw bad(at, "truncated header");
		const head = archive.toString("latin1", at, at + HEADER);
		if (!head.startsWith("070701")) throw bad(at, "not a newc header");
		const field = (i: number) => {
			const s = head.slice(6 + i * 8, 14 + i * 8);
			if (!/^[0-9a-fA-F]{8}$/.test(s)) throw bad(at, `field ${i} is not hex`);
			return Number.parseInt(s, 16);
		};
		const fileSize = field(6);
		const nameSize = field(11);
		if (nameSize < 1) throw bad(at, "empty name");
		const nameEnd = at + HEADER + nameSize;
		if (nameEnd > archive.length) throw bad(at, "truncated name");
		if (archive[nameEnd - 1] !== 0) throw bad(at, "name not NUL-terminated");
		const path = archive.toString("utf8", at + HEADER, nameEnd - 1);
		const dataAt = nameEnd + pad4(HEADER + nameSize);
		const dataEnd = dataAt + fileSize;
		if (dataEnd > archive.length) throw bad(at, "truncated data");
		if (path === "TRAILER!!!") return out;
		out.push({
			path,
			ino: field(0),
			mode: field(1),
			uid: field(2),
			gid: field(3),
			nlink: field(4),
			mtime: field(5),
			rdevMajor: field(9),
			rdevMinor: field(10),
			data: archive.subarray(dataAt, dataEnd),
		});
		at = dataEnd + pad4(fileSize);
	}
}
