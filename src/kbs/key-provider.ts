/** An image key source that asks a key broker: attest, receive the key, keep it in memory only. */
import type { Attester } from "../attest/attester.js";
import { type ImageKey, parseImageKey } from "../crypto/image-key.js";
import type { KeySource, SealedImageRef } from "../image/open-image.js";
import {
	beginResource,
	type EarlyResource,
	fetchResource,
	type KbsClientOptions,
} from "./client.js";

export interface BrokerKeyOptions {
	url: string;
	attester: Attester;
	caFile?: string;
	keyKind?: "ec" | "rsa";
	/** Keep retrying an unreachable or failing broker this long (ms; default 30 s). */
	retryForMs?: number;
	log?: (line: string) => void;
}

/** A key source that may have begun its exchange early; `cancel` drops what was begun. */
export type BrokerKeySource = KeySource &
	((image: SealedImageRef) => Promise<ImageKey>) & {
		cancel(): void;
	};

/**
 * With `early`, auth and attest start at once (beginResource) and only the resource request
 * waits for the image; the first call uses that session, later ones make a whole exchange. Call
 * `cancel` when the image will not be asked for (its open failed before the key was needed).
 */
export function brokerKeySource(
	o: BrokerKeyOptions & { early?: boolean },
): BrokerKeySource {
	const client: KbsClientOptions = {
		url: o.url,
		attester: o.attester,
		caFile: o.caFile,
		keyKind: o.keyKind,
		retryForMs: o.retryForMs,
		onRetry: (e, delay) =>
			o.log?.(`${e.message}; retrying in ${(delay / 1000).toFixed(1)} s`),
	};
	let early: EarlyResource | undefined = o.early
		? beginResource(client)
		: undefined;
	const source = async (image: SealedImageRef): Promise<ImageKey> => {
		const ref = image.config.key.ref;
		o.log?.(`attesting (${o.attester.tee}) to ${o.url} for ${ref}`);
		const wanted = { image: image.manifestDesc.digest };
		const begun = early;
		early = undefined;
		const released = begun
			? await begun.resource(ref, wanted)
			: await fetchResource(client, ref, wanted);
		try {
			const key = parseImageKey(
				released.value.toString("utf8"),
				`the key ${o.url} released for ${ref}`,
			);
			o.log?.(`image key ${key.kid} released by ${o.url}`);
			return key;
		} finally {
			released.value.fill(0);
		}
	};
	return Object.assign(source, {
		cancel: () => {
			early?.cancel();
			early = undefined;
		},
	});
}
