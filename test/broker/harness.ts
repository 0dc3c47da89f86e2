/**
 * A broker for tests, started in this process on loopback with a fresh state directory, plus a
 * hand-driven guest (raw HTTP) so tests can deviate from the protocol at any step.
 */
import { type KeyObject, randomBytes } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { AdminClient } from "../../src/broker/admin-client.js";
import {
	generateMasterKeyText,
	parseMasterKey,
} from "../../src/broker/master-key.js";
import {
	type BrokerConfig,
	type RunningBroker,
	startBroker,
} from "../../src/broker/server.js";
import { initStateDir } from "../../src/broker/state-dir.js";
import { decryptFromBroker, parseFlattenedJwe } from "../../src/kbs/jwe.js";
import { reportDataDigest } from "../../src/kbs/report-data.js";
import {
	generateEphemeralKey,
	type TeePubKey,
} from "../../src/kbs/tee-pubkey.js";
import { type Daemon, startDaemon } from "../daemon.js";
import { BIN, ROOT, runCli, tempDir } from "../helpers.js";

export const POLICIES = join(ROOT, "policies");

export interface TestPolicy {
	name: string;
	resources: string[];
	values?: Record<string, unknown>;
	rules: { name: string; expr: string }[];
}

export interface TestBroker {
	running: RunningBroker;
	url: string;
	adminUrl: string;
	adminToken: string;
	stateDir: string;
	masterKey: Buffer;
	logs: string[];
	admin(): Promise<AdminClient>;
	put(path: string, value: Buffer): Promise<void>;
	/** Uploads a KeyReleasePolicy (apiVersion and kind filled in) through the admin API. */
	putPolicy(p: TestPolicy): Promise<void>;
	/** Stops and starts again on the same state (same options unless overridden). */
	restart(over?: Partial<BrokerConfig>): Promise<void>;
	close(): Promise<void>;
}

export async function startTestBroker(
	over: Partial<BrokerConfig> = {},
): Promise<TestBroker> {
	const dir = await tempDir();
	const stateDir = join(dir, "state");
	const masterKey = parseMasterKey(generateMasterKeyText(), "test");
	await initStateDir(stateDir, masterKey);
	const adminToken = randomBytes(24).toString("base64url");
	const logs: string[] = [];
	const config = (o: Partial<BrokerConfig>): BrokerConfig => ({
		host: "127.0.0.1",
		port: 0,
		stateDir,
		masterKey,
		policiesDir: POLICIES,
		insecureDev: true,
		admin: { host: "127.0.0.1", port: 0, token: adminToken },
		rateLimit: { rate: 0, burst: 0 },
		log: (l) => logs.push(l),
		...o,
	});
	let running = await startBroker(config(over));
	const t: TestBroker = {
		running,
		url: running.url,
		adminUrl: running.adminUrl as string,
		adminToken,
		stateDir,
		masterKey,
		logs,
		admin: () => AdminClient.open({ url: t.adminUrl, token: adminToken }),
		put: async (path, value) => {
			const a = await t.admin();
			try {
				await a.putResource(path, value);
			} finally {
				await a.close();
			}
		},
		putPolicy: async (p) => {
			const a = await t.admin();
			try {
				await a.call(
					"PUT",
					`/admin/v0/policy/${p.name}`,
					JSON.stringify({
						apiVersion: "dadi.dev/v1alpha1",
						kind: "KeyReleasePolicy",
						...p,
					}),
					"application/json",
				);
			} finally {
				await a.close();
			}
		},
		restart: async (o = {}) => {
			await running.close();
			running = await startBroker(config({ ...over, ...o }));
			t.running = running;
			t.url = running.url;
			t.adminUrl = running.adminUrl as string;
		},
		close: () => running.close(),
	};
	return t;
}

export interface RawResponse {
	status: number;
	headers: Headers;
	text: string;
	json(): unknown;
}

export async function raw(
	url: string,
	init: {
		method?: string;
		headers?: Record<string, string>;
		body?: string | Buffer;
	} = {},
): Promise<RawResponse> {
	const res = await fetch(url, {
		method: init.method ?? "GET",
		headers: init.headers,
		body: init.body,
	});
	const text = await res.text();
	return {
		status: res.status,
		headers: res.headers,
		text,
		json: () => JSON.parse(text),
	};
}

/** A guest driven step by step. */
export class ManualGuest {
	cookie = "";
	nonce = "";
	token = "";
	readonly key: { privateKey: KeyObject; jwk: TeePubKey };
	readonly bodies: string[] = [];

	constructor(
		readonly url: string,
		kind: "ec" | "rsa" = "ec",
	) {
		this.key = generateEphemeralKey(kind);
	}

	async auth(tee = "sample", extra: unknown = ""): Promise<RawResponse> {
		const r = await raw(`${this.url}/kbs/v0/auth`, {
			method: "POST",
			headers: { "content-type": "application/json" },
			body: JSON.stringify({ version: "0.4.0", tee, "extra-params": extra }),
		});
		this.bodies.push(r.text);
		const c = r.headers.get("set-cookie");
		if (c) this.cookie = c.split(";")[0] as string;
		if (r.status === 200) this.nonce = (r.json() as { nonce: string }).nonce;
		return r;
	}

	/** Sample evidence binding (nonce, jwk) — or whatever the overrides say. */
	evidence(
		o: { nonce?: string; jwk?: unknown; svn?: string } = {},
	): Record<string, string> {
		const digest = reportDataDigest({
			nonce: o.nonce ?? this.nonce,
			teePubKey: o.jwk ?? this.key.jwk,
		});
		return {
			svn: o.svn ?? "1",
			report_data: digest.toString("base64"),
			init_data: "",
		};
	}

	async attest(
		o: {
			evidence?: unknown;
			nonce?: string;
			jwk?: unknown;
			body?: unknown;
		} = {},
	): Promise<RawResponse> {
		const body = o.body ?? {
			"init-data": null,
			"runtime-data": {
				nonce: o.nonce ?? this.nonce,
				"tee-pubkey": o.jwk ?? this.key.jwk,
			},
			"tee-evidence": {
				primary_evidence: o.evidence ?? this.evidence(),
				additional_evidence: "",
			},
		};
		const r = await raw(`${this.url}/kbs/v0/attest`, {
			method: "POST",
			headers: {
				"content-type": "application/json",
				...(this.cookie ? { cookie: this.cookie } : {}),
			},
			body: JSON.stringify(body),
		});
		this.bodies.push(r.text);
		if (r.status === 200) this.token = (r.json() as { token: string }).token;
		return r;
	}

	async resource(
		path: string,
		o: { bearer?: string; cookie?: boolean; query?: string } = {},
	): Promise<RawResponse> {
		const headers: Record<string, string> = {};
		if (o.cookie !== false && this.cookie) headers.cookie = this.cookie;
		if (o.bearer) headers.authorization = `Bearer ${o.bearer}`;
		const r = await raw(`${this.url}/kbs/v0/resource/${path}${o.query ?? ""}`, {
			headers,
		});
		this.bodies.push(r.text);
		return r;
	}

	/** The resource's value: its response must be 200, and the JWE is opened with this guest's key. */
	async released(path: string): Promise<Buffer> {
		const res = await this.resource(path);
		if (res.status !== 200)
			throw new Error(`resource ${path}: ${res.status} ${res.text}`);
		return decryptFromBroker(
			parseFlattenedJwe(res.json(), "resource"),
			this.key.privateKey,
		);
	}

	/** The claims the broker put in this guest's attestation token for `tee`. */
	tokenClaims(tee: string): Record<string, unknown> {
		return JSON.parse(
			Buffer.from(this.token.split(".")[1] as string, "base64url").toString(),
		).submods[tee]["dadi.claims"];
	}

	/** auth + attest, both expected to succeed. */
	async attested(tee = "sample"): Promise<this> {
		const a = await this.auth(tee);
		if (a.status !== 200) throw new Error(`auth: ${a.status} ${a.text}`);
		const b = await this.attest();
		if (b.status !== 200) throw new Error(`attest: ${b.status} ${b.text}`);
		return this;
	}
}

/**
 * `dadi-broker serve` as the program runs it: KBS and admin listeners on free loopback ports, the
 * repository's policies, the given state, master key and admin token files; `extra` flags last.
 */
export function startBrokerProgram(
	o: {
		state: string;
		masterKey: string;
		adminTokenFile: string;
		/** Default: the repository's policies/. */
		policies?: string;
	},
	extra: string[] = ["--insecure-dev"],
): Promise<Daemon> {
	return startDaemon(BIN.broker, [
		"serve",
		"--state",
		o.state,
		"--master-key",
		o.masterKey,
		"--listen",
		"tcp:127.0.0.1:0",
		"--policies",
		o.policies ?? POLICIES,
		"--admin-listen",
		"tcp:127.0.0.1:0",
		"--admin-token-file",
		o.adminTokenFile,
		"--json",
		...extra,
	]);
}

/** A `dadi-broker` program on a state initialised in `dir` (`dadi-broker init`), and its admin. */
export interface BrokerProgram {
	daemon: Daemon;
	adminTokenFile: string;
	/** `dadi-broker resource put REF --image-key FILE` through the admin listener. */
	putImageKey(ref: string, keyFile: string): Promise<void>;
}

export async function startInitialisedBroker(
	dir: string,
	o: { policies?: string; extra?: string[] } = {},
): Promise<BrokerProgram> {
	await mkdir(dir, { recursive: true });
	const state = join(dir, "state");
	const masterKey = join(dir, "master.key");
	const adminTokenFile = join(dir, "admin.token");
	const r = await runCli(BIN.broker, [
		"init",
		"--state",
		state,
		"--master-key",
		masterKey,
		"--admin-token",
		adminTokenFile,
	]);
	if (r.code !== 0)
		throw new Error(`dadi-broker init: exit ${r.code}: ${r.stderr}`);
	const daemon = await startBrokerProgram(
		{ state, masterKey, adminTokenFile, policies: o.policies },
		o.extra,
	);
	if (daemon.ready.ok !== true) {
		await daemon.stop();
		throw new Error(
			`dadi-broker serve did not start: ${JSON.stringify(daemon.ready)}`,
		);
	}
	return {
		daemon,
		adminTokenFile,
		putImageKey: async (ref, keyFile) => {
			const p = await runCli(BIN.broker, [
				"resource",
				"put",
				ref,
				"--image-key",
				keyFile,
				"--admin",
				String(daemon.ready.admin),
				"--admin-token-file",
				adminTokenFile,
			]);
			if (p.code !== 0)
				throw new Error(
					`dadi-broker resource put: exit ${p.code}: ${p.stderr}`,
				);
		},
	};
}
