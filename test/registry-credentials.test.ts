import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import {
	authFilePaths,
	authKeyHost,
	findCredentials,
	parseAuthConfig,
} from "../src/registry/credentials.js";
import { cleanupTempDirs, rejection, tempDir, thrown } from "./helpers.js";

afterAll(cleanupTempDirs);

const b64 = (s: string) => Buffer.from(s).toString("base64");

async function writeJson(path: string, doc: unknown): Promise<string> {
	await mkdir(join(path, ".."), { recursive: true });
	await writeFile(path, typeof doc === "string" ? doc : JSON.stringify(doc));
	return path;
}

/** A home directory and an empty environment: nothing from the real machine. */
async function sandbox() {
	const home = await tempDir();
	return { home, env: {} as NodeJS.ProcessEnv };
}

describe("--creds", () => {
	it("splits at the first colon", async () => {
		expect(await findCredentials("ghcr.io", { creds: "me:pa:ss" })).toEqual({
			username: "me",
			password: "pa:ss",
			source: "--creds",
		});
	});

	it("wins over every auth file", async () => {
		const { home, env } = await sandbox();
		const file = await writeJson(join(home, "a.json"), {
			auths: { "ghcr.io": { auth: b64("file:pw") } },
		});
		const c = await findCredentials("ghcr.io", {
			creds: "cli:pw",
			authFile: file,
			env,
			homeDir: home,
		});
		expect(c?.username).toBe("cli");
	});

	it("asks for the password when only a user is given, never echoing input", async () => {
		for (const creds of ["someuser", ":secretpw", "someuser:"]) {
			const e = await rejection(findCredentials("ghcr.io", { creds }));
			expect(e.code).toBe("USAGE");
			expect(e.message).toMatch(/--creds USER:PASSWORD/);
			expect(e.message).not.toMatch(/someuser|secretpw/);
		}
	});
});

describe("auth files", () => {
	it("reads an explicit file and matches host[:port] exactly", async () => {
		const { home, env } = await sandbox();
		const file = await writeJson(join(home, "auth.json"), {
			auths: {
				"localhost:5000": { auth: b64("a:1") },
				localhost: { auth: b64("b:2") },
				"quay.io/myorg": { auth: b64("scoped:3") },
			},
		});
		const o = { authFile: file, env, homeDir: home };
		expect(await findCredentials("localhost:5000", o)).toEqual({
			username: "a",
			password: "1",
			source: file,
		});
		expect((await findCredentials("localhost", o))?.username).toBe("b");
		expect(await findCredentials("localhost:5001", o)).toBeUndefined();
		expect(await findCredentials("quay.io", o)).toBeUndefined();
	});

	it("matches URL-style keys and version paths, case-insensitively", async () => {
		const { home, env } = await sandbox();
		const keys = [
			"https://reg.example",
			"http://reg.example",
			"reg.example/v1/",
			"https://reg.example/v2/",
			"REG.Example",
		];
		for (const key of keys) {
			const file = await writeJson(join(home, "k.json"), {
				auths: { [key]: { auth: b64("u:p") } },
			});
			const c = await findCredentials("reg.example", {
				authFile: file,
				env,
				homeDir: home,
			});
			expect(c?.username, key).toBe("u");
		}
		expect(authKeyHost("https://HOST:5000/v2/")).toBe("host:5000");
		expect(authKeyHost("host/v1")).toBe("host");
		expect(authKeyHost("host/org/repo")).toBeUndefined();
		expect(authKeyHost("https://")).toBeUndefined();
	});

	it("prefers the exact key over URL forms", async () => {
		const { home, env } = await sandbox();
		const file = await writeJson(join(home, "k.json"), {
			auths: {
				"https://reg.example/v1/": { auth: b64("url:p") },
				"reg.example": { auth: b64("exact:p") },
			},
		});
		const c = await findCredentials("reg.example", {
			authFile: file,
			env,
			homeDir: home,
		});
		expect(c?.username).toBe("exact");
	});

	it("knows Docker Hub's aliases", async () => {
		const { home, env } = await sandbox();
		const file = await writeJson(join(home, "config.json"), {
			auths: { "https://index.docker.io/v1/": { auth: b64("hub:pw") } },
		});
		for (const host of ["docker.io", "registry-1.docker.io", "index.docker.io"])
			expect(
				(await findCredentials(host, { authFile: file, env, homeDir: home }))
					?.username,
				host,
			).toBe("hub");
		expect(
			await findCredentials("registry.docker.io.example", {
				authFile: file,
				env,
				homeDir: home,
			}),
		).toBeUndefined();
	});

	it("reads username and password fields", async () => {
		const { home, env } = await sandbox();
		const file = await writeJson(join(home, "a.json"), {
			auths: { "r.example": { username: "u", password: "p:q" } },
		});
		expect(
			await findCredentials("r.example", {
				authFile: file,
				env,
				homeDir: home,
			}),
		).toEqual({ username: "u", password: "p:q", source: file });
	});

	it("refuses bad auth values naming file and registry, not the value", async () => {
		const { home, env } = await sandbox();
		const cases: [unknown, RegExp][] = [
			[{ auth: "!!secretvalue!!" }, /not base64/],
			[{ auth: b64("secretvalue") }, /without a colon/],
			[{ auth: b64(":secretvalue") }, /empty user name/],
			[{ auth: Buffer.from([0xff, 0x3a, 0x41]).toString("base64") }, /UTF-8/],
			[{ username: "u" }, /no "password"/],
			[{ password: "secretvalue" }, /no "username"/],
		];
		for (const [entry, re] of cases) {
			const file = await writeJson(join(home, "bad.json"), {
				auths: { "r.example": entry },
			});
			const e = await rejection(
				findCredentials("r.example", { authFile: file, env, homeDir: home }),
			);
			expect(e.code).toBe("INPUT_INVALID");
			expect(e.message).toMatch(re);
			expect(e.message).toContain(file);
			expect(e.message).toContain('"r.example"');
			expect(e.message).not.toContain("secretvalue");
			expect(e.message).not.toContain(b64("secretvalue"));
		}
	});

	it("requires an explicit file to exist", async () => {
		const { home, env } = await sandbox();
		const missing = join(home, "nope.json");
		const e = await rejection(
			findCredentials("r.example", { authFile: missing, env, homeDir: home }),
		);
		expect(e.code).toBe("INPUT_NOT_FOUND");
		expect(e.message).toContain(missing);
		const f = await rejection(
			findCredentials("r.example", {
				env: { REGISTRY_AUTH_FILE: missing },
				homeDir: home,
			}),
		);
		expect(f.code).toBe("INPUT_NOT_FOUND");
		expect(f.message).toMatch(/REGISTRY_AUTH_FILE/);
	});

	it("consults only the explicit file when one is given", async () => {
		const { home } = await sandbox();
		await writeJson(join(home, ".docker", "config.json"), {
			auths: { "r.example": { auth: b64("default:p") } },
		});
		const explicit = await writeJson(join(home, "explicit.json"), {
			auths: {},
		});
		expect(
			await findCredentials("r.example", {
				authFile: explicit,
				env: {},
				homeDir: home,
			}),
		).toBeUndefined();
		expect(
			await findCredentials("r.example", {
				env: { REGISTRY_AUTH_FILE: explicit },
				homeDir: home,
			}),
		).toBeUndefined();
		expect(
			(await findCredentials("r.example", { env: {}, homeDir: home }))?.source,
		).toBe(join(home, ".docker", "config.json"));
	});

	it("walks the default files in order, skipping missing ones", async () => {
		const { home } = await sandbox();
		const run = join(home, "run");
		const xdg = join(home, "xdgconfig");
		const dockerCfg = join(home, "dockercfg");
		const env = {
			XDG_RUNTIME_DIR: run,
			XDG_CONFIG_HOME: xdg,
			DOCKER_CONFIG: dockerCfg,
		};
		expect(authFilePaths({ env, homeDir: home }).map((p) => p.file)).toEqual([
			join(run, "containers", "auth.json"),
			join(xdg, "containers", "auth.json"),
			join(dockerCfg, "config.json"),
		]);
		expect(
			authFilePaths({ env: {}, homeDir: home }).map((p) => p.file),
		).toEqual([
			join(home, ".config", "containers", "auth.json"),
			join(home, ".docker", "config.json"),
		]);
		const o = { env, homeDir: home };
		expect(await findCredentials("r.example", o)).toBeUndefined();
		await writeJson(join(dockerCfg, "config.json"), {
			auths: { "r.example": { auth: b64("docker:p") } },
		});
		// ~/.docker is ignored when $DOCKER_CONFIG is set
		await writeJson(join(home, ".docker", "config.json"), {
			auths: { "r.example": { auth: b64("homedocker:p") } },
		});
		expect((await findCredentials("r.example", o))?.username).toBe("docker");
		await writeJson(join(xdg, "containers", "auth.json"), {
			auths: { "other.example": { auth: b64("x:p") } },
		});
		expect((await findCredentials("r.example", o))?.username).toBe("docker");
		await writeJson(join(run, "containers", "auth.json"), {
			auths: { "r.example": { auth: b64("runtime:p") } },
		});
		const c = await findCredentials("r.example", o);
		expect(c).toEqual({
			username: "runtime",
			password: "p",
			source: join(run, "containers", "auth.json"),
		});
		expect(
			(await findCredentials("r.example", { env: {}, homeDir: home }))
				?.username,
		).toBe("homedocker");
	});

	it("explains that credential helpers and identity tokens are not supported", async () => {
		const { home, env } = await sandbox();
		const docs: [unknown, RegExp][] = [
			[
				{ auths: { "r.example": { identitytoken: "tok", auth: b64("u:") } } },
				/identity token/,
			],
			[
				{ credHelpers: { "r.example": "ecr-login" } },
				/credential helper "ecr-login"/,
			],
			[
				{ credsStore: "desktop", auths: { "https://r.example/v1/": {} } },
				/credential store "desktop"/,
			],
		];
		for (const [doc, re] of docs) {
			const file = await writeJson(join(home, "h.json"), doc);
			const e = await rejection(
				findCredentials("r.example", { authFile: file, env, homeDir: home }),
			);
			expect(e.code).toBe("INPUT_INVALID");
			expect(e.message).toMatch(re);
			expect(e.message).toMatch(/--creds/);
			expect(e.message).not.toContain('tok"');
		}
		// a credential store with no entry for the registry is no match: anonymous
		const store = await writeJson(join(home, "s.json"), {
			credsStore: "desktop",
			auths: { "other.example": {} },
		});
		expect(
			await findCredentials("r.example", {
				authFile: store,
				env,
				homeDir: home,
			}),
		).toBeUndefined();
		// an empty entry without a store is simply no credentials
		const empty = await writeJson(join(home, "e.json"), {
			auths: { "r.example": {} },
		});
		expect(
			await findCredentials("r.example", {
				authFile: empty,
				env,
				homeDir: home,
			}),
		).toBeUndefined();
	});

	it("uses a usable entry over an unsupported one, also in a later file", async () => {
		const { home } = await sandbox();
		const run = join(home, "run");
		await writeJson(join(run, "containers", "auth.json"), {
			credHelpers: { "r.example": "gcloud" },
		});
		await writeJson(join(home, ".docker", "config.json"), {
			auths: { "r.example": { auth: b64("later:p") } },
		});
		const c = await findCredentials("r.example", {
			env: { XDG_RUNTIME_DIR: run },
			homeDir: home,
		});
		expect(c?.username).toBe("later");
		const both = await writeJson(join(home, "both.json"), {
			auths: {
				"r.example": { identitytoken: "t" },
				"https://r.example": { auth: b64("plain:p") },
			},
		});
		expect(
			(
				await findCredentials("r.example", {
					authFile: both,
					env: {},
					homeDir: home,
				})
			)?.username,
		).toBe("plain");
	});
});

describe("parseAuthConfig", () => {
	it("accepts real-world shapes", () => {
		const c = parseAuthConfig(
			Buffer.from(
				`\ufeff${JSON.stringify({
					auths: { "ghcr.io": { auth: "eDp5", email: "x@y" } },
					credHelpers: { "gcr.io": "gcloud" },
					credsStore: "desktop",
					HttpHeaders: { "User-Agent": "x" },
				})}`,
			),
			"f.json",
		);
		expect(c.auths["ghcr.io"]).toEqual({ auth: "eDp5" });
		expect(c.credHelpers?.["gcr.io"]).toBe("gcloud");
		expect(c.credsStore).toBe("desktop");
		expect(parseAuthConfig(Buffer.from("{}"), "f").auths).toEqual({});
	});

	it("refuses bad JSON and bad shapes, naming the file and not the contents", () => {
		const cases: [string, RegExp][] = [
			['{"auths": {"r": {"auth": "secretvalue"}', /not valid JSON/],
			["secretvalue", /not valid JSON/],
			["[]", /not a JSON object/],
			['{"auths": []}', /"auths" is not an object/],
			['{"auths": {"r": "secretvalue"}}', /entry "r" is not an object/],
			['{"auths": {"r": {"auth": 5}}}', /"auth" is not a string/],
			['{"credHelpers": {"r": 1}}', /"credHelpers" entry "r"/],
			['{"credsStore": {}}', /"credsStore" is not a string/],
		];
		for (const [text, re] of cases) {
			const e = thrown(() =>
				parseAuthConfig(Buffer.from(text), "/x/auth.json"),
			);
			expect(e.code, text).toBe("INPUT_INVALID");
			expect(e.message, text).toMatch(re);
			expect(e.message, text).toMatch(/^\/x\/auth\.json: /);
			expect(e.message, text).not.toContain("secretvalue");
		}
		expect(
			thrown(() => parseAuthConfig(Buffer.from([0x7b, 0xff, 0x7d]), "f"))
				.message,
		).toMatch(/not UTF-8/);
	});

	it("never throws anything but DadiError (property)", () => {
		const json = fc.oneof(
			fc.json(),
			fc
				.record(
					{
						auths: fc.dictionary(
							fc.string(),
							fc.oneof(
								fc.jsonValue(),
								fc.record(
									{
										auth: fc.oneof(fc.string(), fc.jsonValue()),
										username: fc.oneof(fc.string(), fc.jsonValue()),
										password: fc.string(),
										identitytoken: fc.string(),
									},
									{ requiredKeys: [] },
								),
							),
						),
						credHelpers: fc.jsonValue(),
						credsStore: fc.jsonValue(),
					},
					{ requiredKeys: [] },
				)
				.map((d) => JSON.stringify(d)),
		);
		const bytes = fc.oneof(
			json.map((s) => Buffer.from(s)),
			fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
		);
		fc.assert(
			fc.property(bytes, (b) => {
				try {
					const c = parseAuthConfig(b, "f.json");
					expect(typeof c.auths).toBe("object");
				} catch (e) {
					if (!(e instanceof DadiError)) throw e;
					expect(e.code).toBe("INPUT_INVALID");
				}
			}),
			{ numRuns: 3000 },
		);
	});

	it("finds credentials in random files without throwing anything but DadiError", async () => {
		const { home, env } = await sandbox();
		const file = join(home, "p.json");
		await fc.assert(
			fc.asyncProperty(
				fc.dictionary(
					fc.constantFrom(
						"r.example",
						"https://r.example/v1/",
						"docker.io",
						"r.example/org",
						"__proto__",
						"constructor",
					),
					fc.record(
						{
							auth: fc.oneof(fc.string(), fc.string().map(b64)),
							username: fc.string(),
							password: fc.string(),
							identitytoken: fc.string(),
						},
						{ requiredKeys: [] },
					),
				),
				fc.constantFrom("r.example", "docker.io", "constructor"),
				async (auths, host) => {
					await writeFile(file, JSON.stringify({ auths }));
					try {
						const c = await findCredentials(host, {
							authFile: file,
							env,
							homeDir: home,
						});
						if (c) {
							expect(c.username.length).toBeGreaterThan(0);
							expect(c.source).toBe(file);
						}
					} catch (e) {
						if (!(e instanceof DadiError)) throw e;
						expect(e.code).toBe("INPUT_INVALID");
					}
				},
			),
			{ numRuns: 300 },
		);
	});
});
