/** A sealed image's own run settings merged into a runtime spec, as containerd/Kubernetes would. */
import { mkdir, readFile, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { patchBundle } from "../src/runtime/bundle.js";
import {
	DEFAULT_PATH,
	mergeEnv,
	mergeProcess,
	type OciProcess,
	resolveUser,
} from "../src/runtime/process-merge.js";
import {
	type RunConfig,
	runConfigOf,
	SEALED_ENTRYPOINT,
} from "../src/runtime/run-config.js";
import { cleanupTempDirs, rejection, tempDir, thrown } from "./helpers.js";

afterAll(cleanupTempDirs);

const RUN: RunConfig = {
	entrypoint: ["/docker-entrypoint.sh"],
	cmd: ["nginx", "-g", "daemon off;"],
	env: ["PATH=/opt/app/bin:/usr/bin:/bin", "APP_MODE=production"],
	workingDir: "/srv/app",
	user: "app",
};
const PASSWD =
	"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
const GROUP = "root:x:0:\napp:x:1000:\nlogs:x:4:app,other\n";

const proc = (args: string[], extra: Partial<OciProcess> = {}): OciProcess => ({
	args,
	env: [DEFAULT_PATH, "HOSTNAME=x"],
	cwd: "/",
	user: { uid: 0, gid: 0 },
	...extra,
});

describe("mergeProcess", () => {
	it("no command given: the image's Entrypoint + Cmd, env, workdir and user", () => {
		const p = mergeProcess(proc([SEALED_ENTRYPOINT]), RUN, {
			passwd: PASSWD,
			group: GROUP,
		});
		expect(p.args).toEqual([
			"/docker-entrypoint.sh",
			"nginx",
			"-g",
			"daemon off;",
		]);
		expect(p.env).toEqual([
			"PATH=/opt/app/bin:/usr/bin:/bin",
			"APP_MODE=production",
			"HOSTNAME=x",
		]);
		expect(p.cwd).toBe("/srv/app");
		expect(p.user).toEqual({ uid: 1000, gid: 1000, additionalGids: [4] });
	});

	it("args given (Kubernetes args): the image's Entrypoint with them; a command replaces everything", () => {
		expect(
			mergeProcess(proc([SEALED_ENTRYPOINT, "-v"]), RUN, { passwd: PASSWD })
				.args,
		).toEqual(["/docker-entrypoint.sh", "-v"]);
		expect(
			mergeProcess(proc(["/bin/sh", "-c", "id"]), RUN, { passwd: PASSWD }).args,
		).toEqual(["/bin/sh", "-c", "id"]);
	});

	it("the pod's env, workdir and user win over the image's", () => {
		const p = mergeProcess(
			proc([SEALED_ENTRYPOINT], {
				env: ["PATH=/custom", "APP_MODE=debug"],
				cwd: "/tmp",
				user: { uid: 5, gid: 5 },
			}),
			RUN,
			{ passwd: PASSWD },
		);
		expect(p.env).toEqual(["PATH=/custom", "APP_MODE=debug"]);
		expect(p.cwd).toBe("/tmp");
		expect(p.user).toEqual({ uid: 5, gid: 5 });
	});

	it("refuses an image with no command when none is given", () => {
		const e = thrown(() =>
			mergeProcess(
				proc([SEALED_ENTRYPOINT]),
				{ ...RUN, entrypoint: [], cmd: [] },
				{},
			),
		);
		expect(e.code).toBe("INPUT_INVALID");
	});

	it("env: every key once; the container's keys keep their values (property)", () => {
		const entry = fc
			.tuple(
				fc.constantFrom("A", "B", "PATH", "C"),
				fc.string({ maxLength: 4 }),
			)
			.map(([k, v]) => `${k}=${v.replace(/\n/g, "")}`);
		const uniq = (a: string[]) => {
			const seen = new Set<string>();
			return a.filter((e) => {
				const k = e.split("=")[0] as string;
				if (seen.has(k)) return false;
				seen.add(k);
				return true;
			});
		};
		fc.assert(
			fc.property(
				fc.array(entry, { maxLength: 6 }),
				fc.array(entry, { maxLength: 6 }),
				(s, i) => {
					const spec = uniq(s);
					const image = uniq(i);
					const out = mergeEnv(spec, image);
					const keys = out.map((e) => e.split("=")[0]);
					expect(new Set(keys).size).toBe(keys.length);
					for (const e of spec)
						if (e !== DEFAULT_PATH) expect(out).toContain(e);
					for (const e of image) {
						const k = e.split("=")[0];
						if (!spec.some((x) => x.split("=")[0] === k && x !== DEFAULT_PATH))
							expect(out).toContain(e);
					}
				},
			),
		);
	});
});

describe("resolveUser", () => {
	it("names, ids and groups as containerd resolves them", () => {
		const a = { passwd: PASSWD, group: GROUP };
		expect(resolveUser("app", a)).toEqual({
			uid: 1000,
			gid: 1000,
			additionalGids: [4],
		});
		expect(resolveUser("1000:4", a)).toEqual({ uid: 1000, gid: 4 });
		expect(resolveUser("app:logs", a)).toEqual({ uid: 1000, gid: 4 });
		expect(resolveUser("4242", a)).toEqual({ uid: 4242, gid: 0 });
		expect(resolveUser("4242:7", {})).toEqual({ uid: 4242, gid: 7 });
		expect(thrown(() => resolveUser("nobody", a)).message).toMatch(
			/no user "nobody"/,
		);
		expect(thrown(() => resolveUser("app:wheel", a)).message).toMatch(
			/no group "wheel"/,
		);
	});
});

describe("runConfigOf", () => {
	it("reads an image config's run settings strictly", () => {
		expect(
			runConfigOf(
				{
					config: {
						Entrypoint: ["/e"],
						Cmd: null,
						Env: ["A=1"],
						WorkingDir: "/w",
						User: "1",
					},
				},
				"c",
			),
		).toEqual({
			entrypoint: ["/e"],
			cmd: [],
			env: ["A=1"],
			workingDir: "/w",
			user: "1",
		});
		expect(runConfigOf({}, "c").entrypoint).toEqual([]);
		for (const bad of [
			{ config: { Entrypoint: "/e" } },
			{ config: { Env: ["NOEQUALS"] } },
			{ config: { User: 5 } },
			{ config: [] },
			[],
		])
			expect(thrown(() => runConfigOf(bad, "c")).code).toBe("INPUT_INVALID");
	});
});

describe("patchBundle", () => {
	async function bundle(args: string[]): Promise<string> {
		const b = await tempDir();
		await mkdir(join(b, "rootfs/etc"), { recursive: true });
		await writeFile(join(b, "rootfs/etc/passwd"), PASSWD);
		await writeFile(join(b, "rootfs/etc/group"), GROUP);
		await writeFile(
			join(b, "config.json"),
			JSON.stringify({
				ociVersion: "1.0.2",
				root: { path: "rootfs" },
				process: proc(args),
				hostname: "h",
			}),
		);
		return b;
	}

	it("rewrites a sealed image's bundle and leaves every other field alone", async () => {
		const b = await bundle([SEALED_ENTRYPOINT]);
		const r = await patchBundle(b, async (rootfs) => {
			expect(rootfs).toBe(join(b, "rootfs"));
			return RUN;
		});
		expect(r).toEqual({
			patched: true,
			args: ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"],
		});
		const spec = JSON.parse(await readFile(join(b, "config.json"), "utf8"));
		expect(spec.hostname).toBe("h");
		expect(spec.process.user.uid).toBe(1000);
	});

	it("leaves an ordinary bundle untouched, byte for byte", async () => {
		const b = await bundle(["/bin/sh"]);
		const before = await readFile(join(b, "config.json"));
		expect((await patchBundle(b, async () => undefined)).patched).toBe(false);
		expect((await readFile(join(b, "config.json"))).equals(before)).toBe(true);
	});

	it("a sealed image run with a command of its own still gets the image's env, workdir and user", async () => {
		const b = await bundle(["/bin/sh", "-c", "env"]);
		expect(await patchBundle(b, async () => RUN)).toEqual({
			patched: true,
			args: ["/bin/sh", "-c", "env"],
		});
		const spec = JSON.parse(await readFile(join(b, "config.json"), "utf8"));
		expect(spec.process.env).toContain("APP_MODE=production");
		expect(spec.process.cwd).toBe("/srv/app");
		expect(spec.process.user.uid).toBe(1000);
	});

	it("a sealed process with no dadi config is an error, not a container that runs the sentinel", async () => {
		const b = await bundle([SEALED_ENTRYPOINT]);
		const e = await rejection(patchBundle(b, async () => undefined));
		expect(e.code).toBe("INPUT_INVALID");
		expect(e.message).toMatch(/not served by dadi-snapshotter in host mode/);
	});

	it("never reads /etc/passwd outside the container's root through a symlink", async () => {
		const b = await bundle([SEALED_ENTRYPOINT]);
		const outside = await tempDir();
		await writeFile(join(outside, "passwd"), "app:x:0:0::/:/bin/sh\n");
		await mkdir(join(b, "rootfs2"));
		await symlink(outside, join(b, "rootfs2/etc"));
		const spec = JSON.parse(await readFile(join(b, "config.json"), "utf8"));
		spec.root.path = "rootfs2";
		await writeFile(join(b, "config.json"), JSON.stringify(spec));
		// /etc → an absolute path outside: re-rooted inside rootfs2, where it does not exist.
		const e = await rejection(patchBundle(b, async () => RUN));
		expect(e.message).toMatch(/no user "app"/);
	});
});
