/**
 * Issue 16: `dadi-guest run` end to end on this host, as root, through `--block loop` (FUSE + loop:
 * this host has no nbd module; the lead runs `--block nbd` inside the VM). A real container image
 * (umoci, busybox) with its own Entrypoint, Cmd, Env, WorkingDir and User is sealed for a broker's
 * resource and pushed to the real registry; the key comes from a real dadi-broker (--insecure-dev,
 * the sample TEE). The container's process runs with the image's settings from the encrypted
 * config, its output and exit code come back, writes land in the tmpfs overlay (the image's file
 * system is mounted read-only), and afterwards nothing is mounted and no loop device is left. A
 * denied attestation mounts nothing; a bad --volume is refused clearly; SIGTERM stops the
 * container and tears down.
 */
import { execFile, spawn } from "node:child_process";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kataVolume } from "../src/snapshotter/sealed-mounts.js";
import { startInitialisedBroker } from "./broker/harness.js";
import { type Daemon, killDaemons } from "./daemon.js";
import {
	BIN,
	type CliResult,
	cleanupTempDirs,
	must,
	runCli,
	tempDir,
	writeKey,
} from "./helpers.js";
import { buildTestImage, run as sh } from "./image-fixtures.js";
import { type RunningRegistry, startRegistry } from "./registry/harness.js";

const exec = promisify(execFile);

/** `dadi-guest run ARGS` in the background: its output so far, and its exit code when it ends. */
function startRun(args: string[]) {
	const child = spawn(process.execPath, [BIN.guest, "run", ...args], {
		stdio: ["ignore", "pipe", "pipe"],
	});
	const r = {
		child,
		stdout: "",
		stderr: "",
		exited: new Promise<number>((ok) => child.once("exit", (c) => ok(c ?? -1))),
	};
	child.stdout.on("data", (d) => {
		r.stdout += d;
	});
	child.stderr.on("data", (d) => {
		r.stderr += d;
	});
	return r;
}
const RES = "kbs:///default/image-key/run-test";
const DENIED_RES = "kbs:///elsewhere/image-key/run-test";
/** What the image's own process prints: its env, working directory, user, and arguments. */
const SCRIPT =
	'echo "greeting=$GREETING token=$SECRET_TOKEN cwd=$(pwd) id=$(/bin/busybox id -u):$(/bin/busybox id -g) args=$0"; exit 7';

let dir: string;
let reg: RunningRegistry;
let broker: Daemon;
let ref: string;
let pinned: string;
let deniedRef: string;
let brokerArgs: string[];

/** dadi-guest mounts, loop devices and work directories: none may outlive a run. */
async function leftovers(): Promise<string[]> {
	const mounts = (await readFile("/proc/self/mountinfo", "utf8"))
		.split("\n")
		.filter((l) => /dadi-run-|fuse\.dadi/.test(l));
	const loops = (await exec("losetup", ["-a"])).stdout
		.split("\n")
		.filter((l) => l.includes("dadi-run-"));
	const dirs = (await readdir(tmpdir())).filter((d) =>
		d.startsWith("dadi-run-"),
	);
	return [...mounts, ...loops, ...dirs];
}

function guestRun(args: string[]): Promise<CliResult> {
	return runCli(BIN.guest, ["run", ...args]);
}

/** The DADI-RUN report: the last stderr line. */
function reportOf(r: CliResult) {
	const lines = r.stderr.trimEnd().split("\n");
	const last = lines[lines.length - 1] as string;
	expect(last.startsWith("DADI-RUN ")).toBe(true);
	return JSON.parse(last.slice("DADI-RUN ".length));
}

beforeAll(async () => {
	if (process.getuid?.() !== 0) throw new Error("these tests run as root");
	expect(await leftovers()).toEqual([]);
	dir = await tempDir();
	reg = await startRegistry();
	const { path: keyPath } = await writeKey(dir);
	const { path: otherKeyPath } = await writeKey(dir, "other.jwk");
	// v2 of the test image: busybox, /home/user owned by 1000:1001, /etc/hello from layer 2
	const src = await buildTestImage(await tempDir());
	await sh("umoci", [
		"config",
		"--image",
		`${src}:v2`,
		"--config.entrypoint",
		"/bin/sh",
		"--config.entrypoint",
		"-c",
		"--config.cmd",
		SCRIPT,
		"--config.cmd",
		"from-cmd",
		"--config.env",
		"GREETING=sealed-hello",
		"--config.workingdir",
		"/home/user",
		"--config.user",
		"1000:1001",
		"--tag",
		"run",
	]);
	const b = await startInitialisedBroker(dir);
	broker = b.daemon;
	await b.putImageKey(RES, keyPath);
	await b.putImageKey(DENIED_RES, otherKeyPath);
	ref = `docker://${reg.host}/run/app:v1`;
	deniedRef = `docker://${reg.host}/run/denied:v1`;
	for (const [to, key, res] of [
		[ref, keyPath, RES],
		[deniedRef, otherKeyPath, DENIED_RES],
	] as const)
		await must(
			runCli(BIN.seal, [
				"seal",
				`oci:${src}:run`,
				to,
				"--key",
				key,
				"--key-ref",
				res,
				"--insecure",
				"--quiet",
			]),
		);
	brokerArgs = [
		"--broker",
		String(broker.ready.url),
		"--attester",
		"sample",
		"--insecure",
	];
	const cfg = JSON.parse(
		(await must(runCli(BIN.guest, ["config", ref, ...brokerArgs, "--json"])))
			.stdout,
	);
	pinned = cfg.image;
}, 300_000);

afterAll(async () => {
	await broker?.stop();
	await reg?.stop();
	killDaemons();
	await cleanupTempDirs();
});

describe("dadi-guest run --block loop", () => {
	it("runs the image's own process (entrypoint, cmd, env, workdir, user from the encrypted config), returns its output and exit code, reports, and leaves nothing behind", async () => {
		const report = join(dir, "report.json");
		const r = await guestRun([
			ref,
			...brokerArgs,
			"--block",
			"loop",
			"--json",
			"--report",
			report,
		]);
		expect(r.stdout).toBe(
			"greeting=sealed-hello token=s3cr3t cwd=/home/user id=1000:1001 args=from-cmd\n",
		);
		expect(r.code).toBe(7);
		const line = reportOf(r);
		expect(line).toEqual(JSON.parse(await readFile(report, "utf8")));
		expect(line).toMatchObject({
			ok: true,
			image: pinned,
			exitCode: 7,
			block: "loop",
			fsType: "ext4",
		});
		expect(line.blockDevice).toMatch(/^\/dev\/loop\d+$/);
		for (const k of ["open", "attest", "firstRead", "mount", "exec", "total"])
			expect(line.timingsMs[k], k).toBeGreaterThan(0);
		expect(line.fetched.bytes).toBeGreaterThan(0);
		expect(line.fetched.requests).toBeGreaterThan(0);
		// what the kernel read of the disk (mount and command), counted in the guest
		expect(line.read.reads).toBeGreaterThan(0);
		expect(line.read.bytes).toBeGreaterThan(0);
		expect(line.peakRssBytes).toBeGreaterThan(10 << 20);
		// the report and the log carry no secret from the config
		expect(r.stderr).not.toMatch(/s3cr3t/);
		expect(await leftovers()).toEqual([]);
	});

	it("arguments after -- replace the Cmd (the Entrypoint stays); writes go to the tmpfs overlay over a read-only image", async () => {
		const g = startRun([
			ref,
			...brokerArgs,
			"--block",
			"loop",
			"--json",
			"--",
			"echo changed > /home/user/owned && cat /home/user/owned && cat /etc/hello && touch /etc/x; sleep 3; echo done",
		]);
		// while it sleeps: the image's file system is mounted read-only, the overlay on top
		let seen: string[] = [];
		for (let i = 0; i < 200 && seen.length === 0; i++) {
			const info = (await readFile("/proc/self/mountinfo", "utf8")).split("\n");
			if (g.stdout.includes("hello from layer 2"))
				seen = info.filter((l) => /dadi-run-[^/ ]+\/(lower|root) /.test(l));
			else await new Promise((r) => setTimeout(r, 50));
		}
		const lower = seen.find((l) => / \S+\/lower /.test(l)) as string;
		expect(lower).toMatch(/ ro[, ]/);
		expect(lower).toMatch(/ - ext4 \/dev\/loop\d+ ro/);
		expect(seen.find((l) => / \S+\/root /.test(l))).toMatch(/ - overlay /);
		expect(await g.exited).toBe(0);
		expect(g.stdout).toBe("changed\nhello from layer 2\ndone\n");
		// the user 1000 cannot write root's /etc: the image's permissions hold in the overlay
		expect(g.stderr).toMatch(/touch: \/etc\/x: Permission denied/);
		expect(await leftovers()).toEqual([]);
		// a new run starts from the image again: the write was the overlay's only
		const again = await must(
			guestRun([
				ref,
				...brokerArgs,
				"--block",
				"loop",
				"--",
				"cat /home/user/owned",
			]),
		);
		expect(again.stdout).toBe("mine\n");
	});

	it("--volume (dadi-snapshotter's Kata volume) with --registry-alias: the volume's image, key reference and layer count", async () => {
		const digest = pinned.slice(pinned.indexOf("@") + 1);
		const volume = kataVolume({
			image: `docker://registry.example:5000/run/app@${digest}`,
			keyRef: RES,
			layers: 1,
			config: digest,
		});
		const file = join(dir, "volume.b64");
		await writeFile(
			file,
			Buffer.from(JSON.stringify(volume)).toString("base64"),
		);
		// layer 1 of the image: /etc/hello as layer 1 wrote it
		const r = await guestRun([
			"--volume",
			`@${file}`,
			"--registry-alias",
			`registry.example:5000=${reg.host}`,
			...brokerArgs,
			"--block",
			"loop",
			"--json",
			"--",
			"cat /etc/hello",
		]);
		expect(r.stdout).toBe("hello from layer 1\n");
		expect(r.code).toBe(0);
		expect(reportOf(r).image).toBe(`docker://${reg.host}/run/app@${digest}`);
		// a volume naming another key reference than the image's: refused before attesting
		const wrongKey = kataVolume({
			image: `docker://${reg.host}/run/app@${digest}`,
			keyRef: "kbs:///default/image-key/other",
			layers: 1,
			config: digest,
		});
		const w = await guestRun([
			"--volume",
			Buffer.from(JSON.stringify(wrongKey)).toString("base64"),
			...brokerArgs,
			"--block",
			"loop",
		]);
		expect(w.code).toBe(3);
		expect(w.stderr).toMatch(/key reference .* the volume names/);
		expect(await leftovers()).toEqual([]);
	});

	it("a bad --volume is refused clearly (exit 3), REF and --volume together or neither are usage errors (exit 2)", async () => {
		const bad = Buffer.from(
			JSON.stringify({ volume_type: "direct_block", source: "/dev/sda" }),
		).toString("base64");
		const r = await guestRun(["--volume", bad, ...brokerArgs]);
		expect(r.code).toBe(3);
		expect(r.stderr).toMatch(
			/--volume: volume_type is "direct_block", expected "image_guest_pull".*\[INPUT_INVALID\]/,
		);
		const junk = await guestRun(["--volume", "%%%", ...brokerArgs]);
		expect(junk.code).toBe(3);
		expect(junk.stderr).toMatch(/neither base64 nor a JSON object/);
		const missing = await guestRun([
			"--volume",
			`@${join(dir, "nope")}`,
			...brokerArgs,
		]);
		expect(missing.code).toBe(3);
		const both = await guestRun([
			ref,
			"--volume",
			Buffer.from(
				JSON.stringify(
					kataVolume({ image: pinned, keyRef: RES, layers: 1, config: "x" }),
				),
			).toString("base64"),
			...brokerArgs,
		]);
		expect(both.code).toBe(2);
		expect(both.stderr).toMatch(/REF or --volume, not both/);
		const neither = await guestRun(brokerArgs);
		expect(neither.code).toBe(2);
		expect(await leftovers()).toEqual([]);
	});

	it("a denied attestation fails before anything is attached: the broker's denial, exit 9, nothing mounted", async () => {
		const before = (await exec("losetup", ["-a"])).stdout;
		const r = await guestRun([
			deniedRef,
			...brokerArgs,
			"--block",
			"loop",
			"--json",
		]);
		expect(r.code).toBe(9);
		expect(r.stdout).toBe("");
		expect(r.stderr).toMatch(/\[POLICY_DENIED\]/);
		// the container starter spawned ahead of time was stopped, not left to find no spec
		expect(r.stderr).not.toMatch(/process spec/);
		const line = reportOf(r);
		expect(line.ok).toBe(false);
		expect(line.error.code).toBe("POLICY_DENIED");
		expect(line.blockDevice).toBeUndefined();
		expect(await leftovers()).toEqual([]);
		expect((await exec("losetup", ["-a"])).stdout).toBe(before);
	});

	it("SIGTERM stops the container (its exit code, 143) and tears everything down", async () => {
		const g = startRun([
			ref,
			...brokerArgs,
			"--block",
			"loop",
			"--",
			"echo up; exec /bin/busybox sleep 60",
		]);
		for (let i = 0; i < 400 && !g.stdout.includes("up"); i++)
			await new Promise((r) => setTimeout(r, 50));
		expect(g.stdout).toBe("up\n");
		g.child.kill("SIGTERM");
		expect(await g.exited).toBe(143);
		expect(await leftovers()).toEqual([]);
	});

	it("SIGTERM while an unreachable broker is being retried stops at once (143), nothing attached", async () => {
		const g = startRun([
			ref,
			"--insecure",
			"--broker",
			"http://127.0.0.1:1",
			"--attester",
			"sample",
			"--broker-retry",
			"60",
			"--block",
			"loop",
			"--json",
		]);
		for (
			let i = 0;
			i < 200 && !/retry|retrying|unreachable/i.test(g.stderr);
			i++
		)
			await new Promise((r) => setTimeout(r, 50));
		const t = Date.now();
		g.child.kill("SIGTERM");
		expect(await g.exited).toBe(143);
		expect(Date.now() - t).toBeLessThan(5000);
		expect(g.stderr).toMatch(/DADI-RUN \{"ok":false.*"INTERRUPTED"/);
		expect(await leftovers()).toEqual([]);
	});

	it("--block nbd without the nbd module: a clear error naming modprobe before attesting, nothing mounted", async () => {
		const sysBlock = await readdir("/sys/block");
		if (sysBlock.some((d) => d.startsWith("nbd"))) return; // this host has nbd: the VM test covers it
		const r = await guestRun([ref, ...brokerArgs, "--block", "nbd", "--json"]);
		expect(r.code).toBe(3);
		expect(r.stderr).toMatch(
			/no \/dev\/nbd0: the nbd driver is not loaded; load it \(modprobe nbd/,
		);
		// checked before the broker is asked or the image opened
		expect(reportOf(r).timingsMs.attest).toBeUndefined();
		expect(await leftovers()).toEqual([]);
	});
});
