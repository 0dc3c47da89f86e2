/** Opening a sealed image for reading from the command line, local or remote alike. */

import { DadiError } from "../errors.js";
import {
	type KeySource,
	loadSealedImage,
	type OpenedImage,
	openImageConfigBytes,
	openSealedImage,
	resolveKey,
	type SealedImageRef,
} from "../image/open-image.js";
import {
	LayoutReferrerStore,
	type ReferrerStore,
	RegistryReferrerStore,
} from "../image/trace-referrer.js";
import {
	loadRemoteSealedImage,
	openRemoteSealedImage,
} from "../lazy/open-remote.js";
import type { LazyStats } from "../lazy/stats.js";
import { writeFileAtomic } from "../oci/layout.js";
import { parseReference } from "../oci/reference.js";
import { type KeyFlags, keySourceFrom } from "./key-options.js";
import {
	type LazyFlags,
	lazyOpenOptions,
	type RegistryFlags,
	registryClientOptions,
} from "./registry-options.js";

export interface ReadableImage {
	image: OpenedImage;
	/** Present for registry images. */
	stats?: LazyStats;
	/** The reference as read: a registry tag is pinned to the digest it named. */
	name: string;
	/** Writes --stats (when asked) and closes. */
	finish(): Promise<void>;
}

export async function openForReading(
	refText: string,
	keyFlags: KeyFlags,
	flags: LazyFlags,
	/** Whole-image passes (export, verify) read ahead themselves: no speculative read-ahead. */
	sequential = false,
	log?: (line: string) => void,
	/** Wraps the key source (e.g. to time the broker exchange). */
	wrapKey: (key: KeySource) => KeySource = (k) => k,
	/**
	 * Told as soon as the image's manifest and config are checked, before the key is asked for,
	 * with where its referrers are (the registry repository or the layout): trace lookup.
	 */
	onImage?: (image: SealedImageRef, referrers: ReferrerStore) => void,
): Promise<ReadableImage> {
	const ref = parseReference(refText);
	// From a registry, a broker's auth and attest begin now, alongside the manifest and config.
	const raw = await keySourceFrom(keyFlags, log, {
		early: ref.transport === "docker",
	});
	try {
		return await openWith(
			ref,
			refText,
			wrapKey(raw),
			flags,
			sequential,
			log,
			onImage,
		);
	} finally {
		// Used by the open, or never to be: what was begun early is dropped.
		if (typeof raw === "function" && "cancel" in raw)
			(raw as { cancel(): void }).cancel();
	}
}

async function openWith(
	ref: ReturnType<typeof parseReference>,
	refText: string,
	key: KeySource,
	flags: LazyFlags,
	sequential: boolean,
	log: ((line: string) => void) | undefined,
	onImage:
		| ((image: SealedImageRef, referrers: ReferrerStore) => void)
		| undefined,
): Promise<ReadableImage> {
	if (ref.transport === "docker") {
		const o = await lazyOpenOptions(ref, flags);
		o.log = log;
		if (onImage)
			o.onImage = (image, client) =>
				onImage(image, new RegistryReferrerStore(client, ref.repository));
		if (sequential)
			o.tuning = { ...o.tuning, readAheadAfter: Number.MAX_SAFE_INTEGER };
		const image = await openRemoteSealedImage(ref, key, o);
		return {
			image,
			stats: image.stats,
			name: image.name,
			finish: async () => {
				await image.close();
				if (flags.stats)
					await writeFileAtomic(
						flags.stats,
						Buffer.from(`${JSON.stringify(image.stats.toJSON(), null, 2)}\n`),
					);
			},
		};
	}
	if (ref.transport !== "oci")
		throw new DadiError(
			"USAGE",
			`"${refText}": a sealed image is read from oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]`,
		);
	if (flags.cacheDir || flags.stats || flags.layers)
		throw new DadiError(
			"USAGE",
			"--cache-dir, --stats and --layers apply to registry (docker://) images only",
		);
	const image = await openSealedImage(
		ref,
		onImage
			? async (img) => {
					if (img.layout) onImage(img, new LayoutReferrerStore(img.layout));
					return resolveKey(key, img);
				}
			: key,
	);
	return { image, name: image.name, finish: () => image.close() };
}

export interface ImageConfigRead {
	/** The image pinned to the manifest digest that was read. */
	pinned: string;
	/** The original OCI image config exactly as sealed, or null (a raw disk). */
	bytes: Buffer | null;
}

/**
 * The original OCI image config of a sealed image, decrypted: manifest and config fetched and
 * checked, the key obtained (file or broker), the config authenticated. No layer is opened.
 */
export async function readOriginalConfig(
	refText: string,
	keyFlags: KeyFlags,
	flags: RegistryFlags,
	log?: (line: string) => void,
): Promise<ImageConfigRead> {
	const ref = parseReference(refText);
	const key = await keySourceFrom(keyFlags, log);
	let image: SealedImageRef;
	let pinned: string;
	if (ref.transport === "docker") {
		image = await loadRemoteSealedImage(
			ref,
			await registryClientOptions(ref, flags),
		);
		pinned = image.name;
	} else if (ref.transport === "oci") {
		image = await loadSealedImage(ref);
		pinned = `oci:${ref.dir}@${image.manifestDesc.digest}`;
	} else
		throw new DadiError(
			"USAGE",
			`"${refText}": a sealed image is read from oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]`,
		);
	return {
		pinned,
		bytes: openImageConfigBytes(image, await resolveKey(key, image)),
	};
}
