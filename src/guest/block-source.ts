/**
 * What the guest's exposures (NBD server, FUSE file) serve: a read-only byte device. The virtual
 * disk of a sealed image (src/storage/virtual-disk.ts) is one; tests use a buffer or a file.
 */
export interface BlockSource {
	/** Size in bytes. */
	readonly size: number;
	/**
	 * Exactly `length` bytes at `offset` (callers keep offset + length <= size), or a rejected
	 * promise (a DadiError: AUTH_FAILED, NETWORK, …) that the exposure turns into EIO.
	 */
	read(offset: number, length: number): Promise<Buffer>;
}
