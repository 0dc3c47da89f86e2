/**
 * The crypto worker threads, as the built broker runs them (from TypeScript sources the offload
 * runs inline, so this loads the compiled module that `npm test` builds first).
 */
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";
import { generateSigningKey, tokenSigner } from "../src/broker/token.js";
import { decryptFromBroker, parseFlattenedJwe } from "../src/kbs/jwe.js";
import { generateEphemeralKey, parseTeePubKey } from "../src/kbs/tee-pubkey.js";
import { ROOT } from "./helpers.js";

type Offload = typeof import("../src/broker/crypto-offload.js");

describe("crypto offload (worker threads)", () => {
	it("makes JWEs and token signatures in workers that only the right keys open or verify", async () => {
		const { CryptoOffload } = (await import(
			pathToFileURL(join(ROOT, "dist/src/broker/crypto-offload.js")).href
		)) as Offload;
		const pkcs8 = generateSigningKey();
		const signer = tokenSigner(pkcs8);
		const off = CryptoOffload.start(pkcs8, 2, (i) => signer.signInput(i));
		try {
			expect(off.workers).toBe(2);
			const secret = Buffer.from("a released image key");
			for (const kind of ["ec", "rsa"] as const) {
				const guest = generateEphemeralKey(kind);
				const tee = parseTeePubKey(guest.jwk, "tee-pubkey");
				const jwes = await Promise.all(
					[0, 1, 2, 3].map(() => off.jwe(secret, tee)),
				);
				for (const jwe of jwes)
					expect(
						await decryptFromBroker(
							parseFlattenedJwe(jwe, "jwe"),
							guest.privateKey,
						),
					).toEqual(secret);
				const other = generateEphemeralKey(kind);
				await expect(
					decryptFromBroker(
						parseFlattenedJwe(jwes[0], "jwe"),
						other.privateKey,
					),
				).rejects.toMatchObject({
					code: "AUTH_FAILED",
				});
			}
			const claims = {
				tee: "sample" as const,
				debug: false,
				measurement: "",
				report_data: "",
				init_data: "",
				tcb: { svn: 1 },
				tcb_status: "",
				tee_specific: {},
			};
			const token = await signer.issueAsync(
				{
					claims,
					teePubKey: generateEphemeralKey("ec").jwk,
					evidenceDigest: "ab",
					nowMs: Date.now(),
					ttlSeconds: 60,
					build: "test",
				},
				(i) => off.sign(i),
			);
			expect(
				signer.check(token, Date.now()).submods.sample?.["dadi.claims"],
			).toEqual(claims);
			// a malformed key from a request is the caller's error, as inline
			await expect(
				off.jwe(secret, {
					jwk: {
						kty: "EC",
						crv: "P-256",
						alg: "ECDH-ES+A256KW",
						x: "AA",
						y: "AA",
					},
					thumbprint: "",
				}),
			).rejects.toMatchObject({ code: "INPUT_INVALID" });
		} finally {
			await off.close();
		}
		expect(off.workers).toBe(0);
	});
});
