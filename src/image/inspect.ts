/** What `inspect` shows: the public facts of a sealed image, no key needed, nothing secret. */
import type { SealedImageRef } from "./open-image.js";

export interface ImageSummary {
	manifestDigest: string;
	fsType: string;
	virtualSize: number;
	chunkSize: number;
	suite: string;
	keyRef: string;
	keyId: string;
	hasImageConfig: boolean;
	layers: {
		digest: string;
		size: number;
		layerId: string;
		virtualSize: number;
		compression: string;
		storedChunks: number;
		zeroChunks: number;
	}[];
	storedBytes: number;
}

export function summarize(image: SealedImageRef): ImageSummary {
	const c = image.config;
	return {
		manifestDigest: image.manifestDesc.digest,
		fsType: c.fsType,
		virtualSize: c.virtualSize,
		chunkSize: c.chunkSize,
		suite: c.suite,
		keyRef: c.key.ref,
		keyId: c.key.kid,
		hasImageConfig: c.imageConfig !== null,
		layers: c.layers.map((l) => ({
			digest: l.digest,
			size: l.size,
			layerId: l.layerId,
			virtualSize: l.virtualSize,
			compression: l.compression,
			storedChunks: l.storedChunks,
			zeroChunks: l.zeroChunks,
		})),
		storedBytes: c.layers.reduce((n, l) => n + l.size, 0),
	};
}
