/** An image key source that asks a key broker: attest, receive the key, keep it in memory only. */
import type { Attester } from "../attest/attester.js";
import { parseImageKey } from "../crypto/image-key.js";
import type { KeySource } from "../image/open-image.js";
import { fetchResource } from "./client.js";

export interface BrokerKeyOptions {
	url: string;
	attester: Attester;
	caFile?: string;
	keyKind?: "ec" | "rsa";
	/** Keep retrying an unreachable or failing broker this long (ms; default 30 s). */
	retryForMs?: number;
	log?: (line: string) => void;
}

export function brokerKeySource(o: BrokerKeyOptions): KeySource {
	return async (image) => {
		const ref = image.config.key.ref;
		o.log?.(`attesting (${o.attester.tee}) to ${o.url} for ${ref}`);
		const released = await fetchResource(
			{
				url: o.url,
				attester: o.attester,
				caFile: o.caFile,
				keyKind: o.keyKind,
				retryForMs: o.retryForMs,
				onRetry: (e, delay) =>
					o.log?.(`${e.message}; retrying in ${(delay / 1000).toFixed(1)} s`),
			},
			ref,
			{ image: image.manifestDesc.digest },
		);
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
}
