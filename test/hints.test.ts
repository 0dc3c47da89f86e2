/**
 * Mistakes a new user makes, each answered with what is wrong and what to do: a registry
 * reference without docker://, the guest pointed at the broker's admin port or at a registry, the
 * admin client pointed at the KBS port, a missing versus a wrong admin token.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sampleAttester } from "../src/attest/attester.js";
import { AdminClient } from "../src/broker/admin-client.js";
import { fetchResource } from "../src/kbs/client.js";
import { parseReference } from "../src/oci/reference.js";
import { startTestBroker, type TestBroker } from "./broker/harness.js";
import { cleanupTempDirs, rejection, thrown } from "./helpers.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";

let broker: TestBroker;
let reg: RunningRegistry;

beforeAll(async () => {
	[broker, reg] = await Promise.all([startTestBroker(), startRegistry()]);
});

afterAll(async () => {
	await broker?.close();
	await reg?.stop();
	await cleanupTempDirs();
});

describe("hints", () => {
	it("a registry reference without docker:// is named as such", () => {
		for (const t of [
			"localhost:5000/app:v1",
			"registry.example.com/team/app:v1",
			"localhost/app",
			`10.0.0.2:5000/app@sha256:${"a".repeat(64)}`,
		]) {
			const e = thrown(() => parseReference(t));
			expect(e.code).toBe("USAGE");
			expect(e.message, t).toContain(`write docker://${t}`);
		}
		for (const t of ["image.tar", "ftp:x", "app"])
			expect(thrown(() => parseReference(t)).message).not.toContain(
				"write docker://",
			);
	});

	it("a guest pointed at the admin API is told it is the admin API", async () => {
		const e = await rejection(
			fetchResource(
				{ url: broker.adminUrl, attester: sampleAttester, retryForMs: 0 },
				"kbs:///default/image-key/x",
			),
		);
		expect(e.code).toBe("INPUT_NOT_FOUND");
		expect(e.message).toMatch(
			/this is the dadi-broker admin API, not its KBS endpoint/,
		);
	});

	it("a guest pointed at a registry is told it is a registry", async () => {
		const e = await rejection(
			fetchResource(
				{
					url: `http://${reg.host}`,
					attester: sampleAttester,
					retryForMs: 0,
				},
				"kbs:///default/image-key/x",
			),
		);
		expect(e.code).toBe("USAGE");
		expect(e.message).toMatch(/this is an OCI registry, not a key broker/);
	});

	it("the admin client: missing and wrong tokens are told apart; the KBS port is named", async () => {
		const wrong = await AdminClient.open({
			url: broker.adminUrl,
			token: "not-the-token",
		});
		const missing = await AdminClient.open({ url: broker.adminUrl, token: "" });
		const kbs = await AdminClient.open({
			url: broker.url,
			token: broker.adminToken,
		});
		try {
			const w = await rejection(wrong.call("GET", "/admin/v0/resources"));
			expect(w.code).toBe("REMOTE_DENIED");
			expect(w.message).toMatch(/the admin token is wrong/);
			const m = await rejection(missing.call("GET", "/admin/v0/resources"));
			expect(m.code).toBe("REMOTE_DENIED");
			expect(m.message).toMatch(/no admin token was sent/);
			const k = await rejection(kbs.call("GET", "/admin/v0/resources"));
			expect(k.code).toBe("INPUT_NOT_FOUND");
			expect(k.message).toMatch(
				/this is the broker's KBS endpoint, not its admin API/,
			);
		} finally {
			await Promise.all([wrong.close(), missing.close(), kbs.close()]);
		}
	});
});
