/**
 * What `inspect` shows: what anyone without the key — the registry, the host, the network — can
 * read of a sealed image. Nothing here is secret; the encrypted records are shown by size only.
 */
import { SEALED_ENTRYPOINT, SEALED_MEMBER } from "../oci/public-config.js";
import { CONFIG_SCHEMA_VERSION } from "../oci/sealed-config.js";
import type { SealedImageRef } from "./open-image.js";

export interface ImageSummary {
	manifestDigest: string;
	configDigest: string;
	formatVersion: number;
	/** Where the sealed config travels inside the public OCI config. */
	sealedMember: string;
	platform: { os: string; architecture: string; variant?: string };
	entrypoint: string;
	/** Labels the sealer published (`--public-labels`), else null. */
	publicLabels: Record<string, string> | null;
	fsType: string;
	virtualSize: number;
	chunkSize: number;
	suite: string;
	keyRef: string;
	keyId: string;
	sealId: string;
	hasImageConfig: boolean;
	/** Sizes of the encrypted records (padded), 0 when absent. */
	encrypted: { imageConfigBytes: number; sealParamsBytes: number };
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

const decodedLength = (b64: string | null | undefined): number =>
	b64 ? Buffer.from(b64, "base64url").length : 0;

export function summarize(image: SealedImageRef): ImageSummary {
	const c = image.config;
	return {
		manifestDigest: image.manifestDesc.digest,
		configDigest: image.manifest.config.digest,
		formatVersion: CONFIG_SCHEMA_VERSION,
		sealedMember: SEALED_MEMBER,
		platform: { ...c.platform },
		entrypoint: SEALED_ENTRYPOINT,
		publicLabels: c.publicLabels ? { ...c.publicLabels } : null,
		fsType: c.fsType,
		virtualSize: c.virtualSize,
		chunkSize: c.chunkSize,
		suite: c.suite,
		keyRef: c.key.ref,
		keyId: c.key.kid,
		sealId: c.sealId,
		hasImageConfig: c.imageConfig !== null,
		encrypted: {
			imageConfigBytes: decodedLength(c.imageConfig),
			sealParamsBytes: decodedLength(c.sealParams),
		},
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
