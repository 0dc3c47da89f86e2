/** `dadi-guest attest`: run auth → attest → resource against a broker and report, never printing the secret. */
import type { Command } from "commander";
import { chooseAttester, tsmRootFrom } from "../attest/attester.js";
import { parseImageKey } from "../crypto/image-key.js";
import { DadiError } from "../errors.js";
import { fetchResource, resourcePathOf } from "../kbs/client.js";
import { printJson, runAction } from "./common.js";
import { parseBrokerRetry, parseKeyKind } from "./key-options.js";

export function attestCommand(program: Command): void {
	program
		.command("attest")
		.description(
			"attest this sandbox to a key broker and fetch one resource, for diagnosis: prints what was released (never the secret)",
		)
		.requiredOption("--broker <URL>", "the broker (http[s]://HOST:PORT)")
		.requiredOption("--resource <PATH>", "kbs:///REPO/TYPE/TAG")
		.option(
			"--attester <auto|snp|tdx|az-snp-vtpm|az-tdx-vtpm|sample>",
			"the TEE to produce evidence with (default auto)",
		)
		.option(
			"--tsm-root <DIR>",
			"configfs-tsm's report directory (default $DADI_TSM_ROOT or /sys/kernel/config/tsm/report)",
		)
		.option("--broker-ca <PEM>", "CA certificates for an https broker")
		.option("--broker-key <ec|rsa>", "the ephemeral key type (default ec)")
		.option(
			"--broker-retry <SECONDS>",
			"keep retrying a broker that is unreachable or answers 429/5xx this long (default 30; 0: once)",
		)
		.option(
			"--image <DIGEST>",
			"the image digest to name in the request (for policies that check it)",
		)
		.option("--json", "print the result as JSON")
		.action(
			async (f: {
				broker: string;
				resource: string;
				attester?: string;
				tsmRoot?: string;
				brokerCa?: string;
				brokerKey?: string;
				brokerRetry?: string;
				image?: string;
				json?: boolean;
			}) =>
				runAction("dadi-guest attest", Boolean(f.json), async () => {
					const path = resourcePathOf(f.resource);
					const keyKind = parseKeyKind(f.brokerKey);
					const attester = await chooseAttester(f.attester ?? "auto", {
						tsmRoot: tsmRootFrom(f.tsmRoot),
					});
					const r = await fetchResource(
						{
							url: f.broker,
							attester,
							caFile: f.brokerCa,
							keyKind,
							retryForMs: parseBrokerRetry(f.brokerRetry),
							onRetry: (e, delay) =>
								process.stderr.write(
									`dadi-guest attest: ${e.message}; retrying in ${(delay / 1000).toFixed(1)} s\n`,
								),
						},
						path,
						{ image: f.image },
					);
					let kid: string | null = null;
					try {
						kid = parseImageKey(r.value.toString("utf8"), "the resource").kid;
					} catch {
						// not an image key: fine for diagnosis
					}
					const size = r.value.length;
					r.value.fill(0);
					const payload = tokenClaims(r.token);
					const out = {
						ok: true,
						broker: f.broker,
						resource: path,
						tee: r.tee,
						hash: r.hash,
						released: { bytes: size, imageKeyId: kid },
						token: { exp: payload.exp, submods: payload.submods },
					};
					if (f.json) printJson(out);
					else
						process.stdout.write(
							`released ${path} by ${f.broker} (${size} bytes${kid ? `, image key ${kid}` : ""})\n  attested  ${r.tee} (report data ${r.hash})\n  token     valid until ${new Date(Number(payload.exp) * 1000).toISOString()}\n`,
						);
				}),
		);
}

/** The claims of the broker's attestation token (shown, not trusted: the broker signed them). */
function tokenClaims(token: string): Record<string, unknown> {
	try {
		const v = JSON.parse(
			Buffer.from(token.split(".")[1] ?? "", "base64url").toString("utf8"),
		) as unknown;
		if (typeof v === "object" && v !== null && !Array.isArray(v))
			return v as Record<string, unknown>;
	} catch {
		// below
	}
	throw new DadiError(
		"REMOTE_PROTOCOL",
		"key broker: the attestation token is not a JWT with a JSON claims set",
	);
}
