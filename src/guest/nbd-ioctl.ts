/**
 * The Linux nbd driver's ioctl interface (include/uapi/linux/nbd.h), pure: request numbers, the
 * device geometry for a disk size, and which /dev/nbdN is free. The calls themselves are in
 * nbd-device.ts.
 *
 * With the ioctl interface userspace does the NBD handshake's job itself: it tells the driver the
 * block size, the size and the transmission flags, hands it a connected socket (NBD_SET_SOCK) and
 * then calls NBD_DO_IT, which starts the device and blocks until the connection ends (the server
 * closes the socket — as ours does after NBD_CMD_DISC — or NBD_CLEAR_SOCK shuts it down). The
 * kernel then speaks the transmission phase only: NBD_REQUEST_MAGIC requests, simple replies.
 */
import { DadiError } from "../errors.js";

/** _IO(0xab, n): no direction bits, no size: (type << 8) | nr. */
const nbdIo = (nr: number): number => (0xab << 8) | nr;

export const NBD_SET_SOCK = nbdIo(0);
export const NBD_SET_BLKSIZE = nbdIo(1);
export const NBD_SET_SIZE = nbdIo(2);
export const NBD_DO_IT = nbdIo(3);
export const NBD_CLEAR_SOCK = nbdIo(4);
export const NBD_CLEAR_QUE = nbdIo(5);
export const NBD_PRINT_DEBUG = nbdIo(6);
export const NBD_SET_SIZE_BLOCKS = nbdIo(7);
export const NBD_DISCONNECT = nbdIo(8);
export const NBD_SET_TIMEOUT = nbdIo(9);
export const NBD_SET_FLAGS = nbdIo(10);

export interface NbdGeometry {
	/** NBD_SET_BLKSIZE: the logical block size. */
	blockSize: number;
	/** NBD_SET_SIZE_BLOCKS: the size in those blocks. */
	blocks: number;
}

/**
 * 4096-byte blocks when the disk is a multiple of 4 KiB (every file system image dadi seals),
 * else 512: the driver's size is a whole number of blocks, and a disk that is not even a multiple
 * of 512 bytes cannot be a block device (INPUT_INVALID rather than a silently shortened disk).
 */
export function nbdGeometry(size: number): NbdGeometry {
	if (!Number.isSafeInteger(size) || size <= 0)
		throw new DadiError(
			"INPUT_INVALID",
			`a disk of ${size} bytes cannot be attached to an nbd device`,
		);
	for (const blockSize of [4096, 512])
		if (size % blockSize === 0) return { blockSize, blocks: size / blockSize };
	throw new DadiError(
		"INPUT_INVALID",
		`the disk's size (${size} bytes) is not a multiple of 512: it cannot be attached to an nbd device`,
	);
}

/**
 * --nbd-device: "auto" or /dev/nbdN. Returns the device number, or undefined for auto.
 */
export function parseNbdDevice(text: string): number | undefined {
	if (text === "auto") return undefined;
	const m = /^\/dev\/nbd(\d{1,4})$/.exec(text);
	if (!m)
		throw new DadiError(
			"USAGE",
			`--nbd-device "${text}": expected auto or /dev/nbdN`,
		);
	return Number(m[1]);
}

/**
 * The nbd devices in a listing of /sys/block, by number. A device is in use while
 * /sys/block/nbdN/pid exists (the driver creates it when NBD_DO_IT starts the device).
 */
export function nbdDevicesIn(sysBlockEntries: readonly string[]): number[] {
	return sysBlockEntries
		.map((e) => /^nbd(\d{1,4})$/.exec(e))
		.filter((m): m is RegExpExecArray => m !== null)
		.map((m) => Number(m[1]))
		.sort((a, b) => a - b);
}

/** The advice when a machine has no nbd devices at all. */
export function noNbdMessage(device: string): string {
	return `no ${device}: the nbd driver is not loaded; load it (modprobe nbd nbds_max=16) or use --block loop`;
}
