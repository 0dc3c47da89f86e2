/**
 * Where the real TEE evidence samples are (../shared/fixtures/attestation; read-only, never copied
 * into this repository): $DADI_FIXTURES, else ../shared beside the repository. Nothing else is
 * searched, so a checkout never picks up some other copy by accident. Tests that need them skip
 * with a loud warning when none is found.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./helpers.js";

export function attestationFixtures(): string {
	const candidates = [
		process.env.DADI_FIXTURES,
		join(ROOT, "../shared/fixtures/attestation"),
	].filter((x): x is string => Boolean(x));
	const found = candidates.find((d) => existsSync(join(d, "README.md")));
	return `${(found ?? candidates[0] ?? "").replace(/\/$/, "")}/`;
}
