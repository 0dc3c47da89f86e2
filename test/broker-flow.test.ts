/**
 * The whole flow through the programs a user runs: `dadi-broker init` and `serve`, `dadi-seal seal
 * --broker` registering the image key, and `dadi-guest` attesting (sample TEE, development mode)
 * to get the key — export, attest, and serve + loop mount as root — then the audit trail, a
 * restart that keeps keys, policies and audit log, and a production broker refusing the sample TEE.
 */
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildFilesystem } from "../src/rootfs/mkfs.js";
import { startBrokerProgram } from "./broker/harness.js";
import { type Daemon, killDaemons, startDaemon } from "./daemon.js";
import {
	BIN,
	cleanupTempDirs,
	must,
	prng,
	runCli,
	tempDir,
	writeDisk,
} from "./helpers.js";
import { makeTlsFiles } from "./registry/harness.js";

let dir: string;
let state: string;
let master: string;
let token: string;
let broker: Daemon;
let keyFile: string;
let disk: Buffer;
const RES = "kbs:///default/image-key/flow";

function startBrokerCli(extra: string[] = ["--insecure-dev"]): Promise<Daemon> {
	return startBrokerProgram(
		{ state, masterKey: master, adminTokenFile: token },
		extra,
	);
}

const url = () => String(broker.ready.url);
/** `dadi-guest attest` arguments for the flow's resource with the sample TEE. */
const attestArgs = () => [
	"attest",
	"--broker",
	url(),
	"--resource",
	RES,
	"--attester",
	"sample",
	"--json",
];
/** The same run, which must succeed. */
const attestCli = (extra: string[] = []) =>
	must(runCli(BIN.guest, [...attestArgs(), ...extra]));
/** Every audit record, through `dadi-broker audit`. */
const auditRecords = async () =>
	JSON.parse(
		(
			await must(
				runCli(BIN.broker, [
					"audit",
					...adminArgs(),
					"--json",
					"--limit",
					"10000",
				]),
			)
		).stdout,
	).records as {
		seq: number;
		event: string;
		resource?: string;
		status?: number;
	}[];
const adminArgs = () => [
	"--admin",
	String(broker.ready.admin),
	"--admin-token-file",
	token,
];

beforeAll(async () => {
	dir = await tempDir();
	state = join(dir, "state");
	master = join(dir, "master.key");
	token = join(dir, "admin.token");
	const init = await must(
		runCli(BIN.broker, [
			"init",
			"--state",
			state,
			"--master-key",
			master,
			"--admin-token",
			token,
			"--json",
		]),
	);
	expect(JSON.parse(init.stdout)).toMatchObject({
		ok: true,
		masterKeyCreated: true,
	});
	broker = await startBrokerCli();
	expect(broker.ready).toMatchObject({
		ok: true,
		tees: ["snp", "tdx", "azsnpvtpm", "aztdxvtpm", "sample"],
		insecureDev: true,
	});
	keyFile = join(dir, "image.jwk");
	await must(runCli(BIN.seal, ["keygen", "--out", keyFile]));
	disk = await writeDisk(join(dir, "disk.img"), 8 << 20, [
		{ at: 0, bytes: prng("flow-a", 1 << 20) },
		{ at: 5 << 20, bytes: prng("flow-b", 300_000) },
	]);
});

afterAll(async () => {
	await broker?.stop();
	killDaemons();
	await cleanupTempDirs();
});

describe("seal → register → attest → read", () => {
	it("dadi-seal seal --broker registers the image key; the guest exports with a released key", async () => {
		const sealed = await must(
			runCli(BIN.seal, [
				"seal",
				`raw:${join(dir, "disk.img")}`,
				`oci:${join(dir, "oci")}:v1`,
				"--key",
				keyFile,
				"--key-ref",
				RES,
				"--broker",
				String(broker.ready.admin),
				"--broker-token-file",
				token,
				"--json",
				"--quiet",
			]),
		);
		const kid = JSON.parse(await readFile(keyFile, "utf8")).kid;
		expect(JSON.parse(sealed.stdout).broker).toEqual({
			broker: broker.ready.admin,
			resource: "default/image-key/flow",
			kid,
		});
		const list = await must(
			runCli(BIN.broker, ["resource", "list", ...adminArgs(), "--json"]),
		);
		expect(
			JSON.parse(list.stdout).resources.map((r: { path: string }) => r.path),
		).toContain("default/image-key/flow");

		const out = join(dir, "exported.img");
		const exp = await runCli(BIN.guest, [
			"export",
			`oci:${join(dir, "oci")}:v1`,
			"--broker",
			url(),
			"--attester",
			"sample",
			"--out",
			out,
			"--quiet",
		]);
		expect(exp.stderr).toBe("");
		expect(exp.code).toBe(0);
		expect((await readFile(out)).equals(disk)).toBe(true);

		const att = await attestCli();
		const a = JSON.parse(att.stdout);
		expect(a).toMatchObject({
			ok: true,
			tee: "sample",
			hash: "sha384",
			released: { imageKeyId: kid },
		});
		expect(att.stdout).not.toContain(
			JSON.parse(await readFile(keyFile, "utf8")).k,
		);
	});

	it("a guest without a key anywhere fails cleanly: no --key/--broker, denied resource, no TEE for auto", async () => {
		const none = await runCli(BIN.guest, [
			"export",
			`oci:${join(dir, "oci")}:v1`,
			"--out",
			join(dir, "x.img"),
		]);
		expect(none.code).toBe(2);
		const denied = await runCli(BIN.guest, [
			"attest",
			"--broker",
			url(),
			"--resource",
			"kbs:///elsewhere/image-key/x",
			"--attester",
			"sample",
		]);
		expect(denied.code).toBe(9);
		expect(denied.stderr).toMatch(/POLICY_DENIED/);
		const auto = await runCli(BIN.guest, [
			"attest",
			"--broker",
			url(),
			"--resource",
			RES,
		]);
		expect(auto.code).toBe(2);
		expect(auto.stderr).toMatch(/no TEE found/);
	});

	it("dadi-guest serve --broker mounts the image's file system (root: FUSE + loop)", async () => {
		if (process.getuid?.() !== 0) throw new Error("this test runs as root");
		const tree = join(dir, "tree");
		await mkdir(join(tree, "etc"), { recursive: true });
		await writeFile(join(tree, "etc/greeting"), "released by attestation\n");
		await buildFilesystem({
			fsType: "ext4",
			staging: tree,
			out: join(dir, "fs.img"),
			sizeBytes: 8 << 20,
			uuid: "0b6e7a0c-1111-4222-8333-444455556677",
			timestamp: 1_700_000_000,
		});
		await must(
			runCli(BIN.seal, [
				"seal",
				`raw:${join(dir, "fs.img")}`,
				`oci:${join(dir, "oci")}:fs`,
				"--key",
				keyFile,
				"--key-ref",
				RES,
				"--quiet",
			]),
		);
		const mnt = join(dir, "mnt");
		const fuse = join(dir, "fuse");
		await mkdir(mnt);
		await mkdir(fuse);
		const s = await startDaemon(BIN.guest, [
			"serve",
			`oci:${join(dir, "oci")}:fs`,
			"--broker",
			url(),
			"--attester",
			"sample",
			"--fuse",
			fuse,
			"--mount-at",
			mnt,
			"--json",
		]);
		try {
			expect(s.ready.mountedAt).toBe(mnt);
			expect(await readFile(join(mnt, "etc/greeting"), "utf8")).toBe(
				"released by attestation\n",
			);
			expect(s.stderr()).toMatch(/image key \S+ released by/);
		} finally {
			expect(await s.stop()).toBe(0);
		}
	});

	it("the audit log records releases and denials, queried through the admin API", async () => {
		const records = await auditRecords();
		expect(
			records.filter(
				(x) => x.event === "release" && x.resource === "default/image-key/flow",
			).length,
		).toBeGreaterThanOrEqual(3);
		expect(
			records.some(
				(x) =>
					x.event === "deny" &&
					x.resource === "elsewhere/image-key/x" &&
					x.status === 403,
			),
		).toBe(true);
		expect(records.some((x) => x.event === "admin")).toBe(true);
	});
});

describe("restart and production mode", () => {
	it("a restarted broker keeps keys, uploaded policies and the audit log", async () => {
		const policy = join(dir, "extra.json");
		await writeFile(
			policy,
			JSON.stringify({
				apiVersion: "dadi.dev/v1alpha1",
				kind: "KeyReleasePolicy",
				name: "extra",
				resources: ["extra/*/*"],
				rules: [{ name: "sample", expr: "tee == 'sample'" }],
			}),
		);
		const adm = String(broker.ready.admin);
		const tokenText = (await readFile(token, "utf8")).trim();
		const put = await fetch(`${adm}/admin/v0/policy/extra`, {
			method: "PUT",
			headers: {
				authorization: `Bearer ${tokenText}`,
				"content-type": "application/json",
			},
			body: await readFile(policy),
		});
		expect(put.status).toBe(201);
		const before = await auditRecords();
		expect(await broker.stop()).toBe(0);
		broker = await startBrokerCli();
		expect(broker.ready.policies).toContain("extra");
		const after = await auditRecords();
		expect(after.slice(0, before.length)).toEqual(before);
		const att = await attestCli();
		expect(JSON.parse(att.stdout).released.imageKeyId).toBe(
			JSON.parse(await readFile(keyFile, "utf8")).kid,
		);
	});

	it("without --insecure-dev the sample TEE gets nothing (exit 9)", async () => {
		await broker.stop();
		broker = await startBrokerCli([]);
		expect(broker.ready.tees).toEqual(["snp", "tdx", "azsnpvtpm", "aztdxvtpm"]);
		const r = await runCli(BIN.guest, [
			"attest",
			"--broker",
			url(),
			"--resource",
			RES,
			"--attester",
			"sample",
		]);
		expect(r.code).toBe(9);
		expect(r.stderr).toMatch(/insecure-dev/);
	});

	it("serves HTTPS: the guest needs the CA (--broker-ca), the cookie is Secure", async () => {
		await broker.stop();
		const tls = await makeTlsFiles(await tempDir());
		broker = await startBrokerCli([
			"--insecure-dev",
			"--tls-cert",
			tls.cert,
			"--tls-key",
			tls.key,
		]);
		expect(url()).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
		const args = attestArgs();
		const ok = await must(runCli(BIN.guest, [...args, "--broker-ca", tls.ca]));
		expect(JSON.parse(ok.stdout).released.imageKeyId).toBe(
			JSON.parse(await readFile(keyFile, "utf8")).kid,
		);
		const untrusted = await runCli(BIN.guest, args);
		expect(untrusted.code).toBe(8);
		expect(untrusted.stderr).toMatch(/NETWORK/);
		await broker.stop();
		broker = await startBrokerCli();
	});

	it("a wrong master key does not open the state (exit 6), and nothing is served", async () => {
		await broker.stop();
		const wrong = join(dir, "wrong.key");
		await must(
			runCli(BIN.broker, [
				"init",
				"--state",
				join(dir, "other-state"),
				"--master-key",
				wrong,
			]),
		);
		const r = await runCli(BIN.broker, [
			"serve",
			"--state",
			state,
			"--master-key",
			wrong,
			"--listen",
			"tcp:127.0.0.1:0",
		]);
		expect(r.code).toBe(6);
		expect(r.stderr).toMatch(/KEY_MISMATCH/);
		broker = await startBrokerCli();
	});
});
