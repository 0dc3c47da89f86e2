/**
 * The demo's key broker: a state directory with a generated master key, the repository's
 * policies, the sample TEE (development only: --insecure-dev), started in this process on
 * loopback; the image key is registered through the admin API as `dadi-seal seal --broker` does.
 */
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { AdminClient } from "../broker/admin-client.js";
import { generateMasterKeyText, parseMasterKey } from "../broker/master-key.js";
import { type RunningBroker, startBroker } from "../broker/server.js";
import { initStateDir } from "../broker/state-dir.js";
import { type ImageKey, toJwk } from "../crypto/image-key.js";

export const DEMO_POLICIES = fileURLToPath(
	new URL("../../../policies", import.meta.url),
);

export interface DemoBroker {
	running: RunningBroker;
	close(): Promise<void>;
}

export async function startDemoBroker(
	work: string,
	key: ImageKey,
	resource: string,
	log: (line: string) => void,
): Promise<DemoBroker> {
	const state = join(work, "broker-state");
	const masterKey = parseMasterKey(
		generateMasterKeyText(),
		"the demo master key",
	);
	await initStateDir(state, masterKey);
	const token = randomBytes(32).toString("base64url");
	const running = await startBroker({
		host: "127.0.0.1",
		port: 0,
		stateDir: state,
		masterKey,
		policiesDir: DEMO_POLICIES,
		insecureDev: true,
		admin: { host: "127.0.0.1", port: 0, token },
		log,
	});
	try {
		const admin = await AdminClient.open({
			url: running.adminUrl as string,
			token,
		});
		const jwk = Buffer.from(JSON.stringify(toJwk(key)));
		try {
			await admin.putResource(resource, jwk);
		} finally {
			jwk.fill(0);
			await admin.close();
		}
	} catch (e) {
		await running.close();
		throw e;
	}
	return { running, close: () => running.close() };
}
