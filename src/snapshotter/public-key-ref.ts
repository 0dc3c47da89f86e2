/**
 * Guest mode's one look at a sealed image: its key reference, from the public part of its config
 * (the manifest and config, by digest; no key, no layer bytes), so the mount can name it to the
 * sandbox.
 */

import { readFile } from "node:fs/promises";
import { DadiError } from "../errors.js";
import { fetchSealedImage } from "../lazy/open-remote.js";
import { parseReference } from "../oci/reference.js";
import { RegistryClient } from "../registry/client.js";
import { findCredentials } from "../registry/credentials.js";

export async function publicKeyRef(
	image: string,
	o: { insecure: boolean; caFile: string[]; authfile?: string },
): Promise<string> {
	const ref = parseReference(image);
	if (ref.transport !== "docker")
		throw new DadiError("INTERNAL", `${image}: not a registry reference`);
	const client = new RegistryClient(ref.registry, {
		insecure: o.insecure,
		ca: await Promise.all(o.caFile.map((f) => readFile(f, "utf8"))),
		credentials: await findCredentials(ref.registry, { authFile: o.authfile }),
	});
	try {
		return (await fetchSealedImage(client, ref)).config.key.ref;
	} finally {
		await client.close();
	}
}
