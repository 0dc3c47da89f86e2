/**
 * Worker thread for the broker's per-release public-key work — the JWE to the tee-pubkey (an
 * ephemeral ECDH key pair and agreement, or RSA-OAEP) and the token's ECDSA signature — so the
 * event loop keeps serving HTTP while a second core does the crypto. Messages in:
 * {id, op: "jwe", plaintext, jwk} | {id, op: "sign", input}; out: {id, ok, value | error}.
 * The token key arrives once, in workerData. Nothing here logs.
 */
import { createPrivateKey, sign } from "node:crypto";
import { parentPort, workerData } from "node:worker_threads";
import { encryptToTeeKey } from "../kbs/jwe.js";
import { parseTeePubKey } from "../kbs/tee-pubkey.js";

const tokenKey = createPrivateKey({
	key: Buffer.from((workerData as { pkcs8: Uint8Array }).pkcs8),
	format: "der",
	type: "pkcs8",
});

parentPort?.on(
	"message",
	(m: {
		id: number;
		op: string;
		plaintext?: Uint8Array;
		jwk?: unknown;
		input?: string;
	}) => {
		try {
			let value: unknown;
			if (m.op === "jwe") {
				const plaintext = Buffer.from(m.plaintext as Uint8Array);
				value = encryptToTeeKey(plaintext, parseTeePubKey(m.jwk, "tee-pubkey"));
				plaintext.fill(0);
			} else if (m.op === "sign")
				value = sign("sha256", Buffer.from(m.input as string), {
					key: tokenKey,
					dsaEncoding: "ieee-p1363",
				}).toString("base64url");
			else throw new Error(`unknown op ${m.op}`);
			parentPort?.postMessage({ id: m.id, ok: true, value });
		} catch (e) {
			parentPort?.postMessage({
				id: m.id,
				ok: false,
				error: {
					code: (e as { code?: string }).code,
					message: (e as Error).message,
				},
			});
		}
	},
);
