/**
 * An ordinary (not sealed) container image to seal: its OCI image config and its layers as tar
 * streams, from an OCI image layout or a docker-archive file. Every byte is checked: blobs against
 * their digests, uncompressed layers against the config's diff_ids.
 */
export interface SourceLayer {
	/** sha256 of the uncompressed tar, from the config's rootfs.diff_ids. */
	diffId: string;
	/** Stored (compressed) size, for reports. */
	size: number;
	/**
	 * Opens the uncompressed tar. After the consumer has read what it needs, `finish()` reads the
	 * rest and checks the digests (DIGEST_MISMATCH); it must be called for the layer to count as
	 * verified.
	 */
	open(): Promise<LayerStream>;
}

export interface LayerStream {
	chunks: AsyncIterable<Buffer>;
	/** Stored (compressed) bytes read so far, of the layer's `size` (progress). */
	bytesRead(): number;
	finish(): Promise<void>;
	close(): Promise<void>;
}

export interface SourceImage {
	/** What it is, for messages: the reference and the resolved digest. */
	description: string;
	/** The OCI image config, exactly as stored (it travels encrypted in the sealed image). */
	config: Buffer;
	platform: Platform;
	layers: SourceLayer[];
	close(): Promise<void>;
}

export interface Platform {
	os: string;
	architecture: string;
	variant?: string;
}
