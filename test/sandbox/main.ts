/**
 * `npm run sandbox`: the confidential sandbox, proved end to end in a real VM (QEMU, TCG here).
 *
 * 1. The image owner (a directory of its own: plaintext, the image key) builds an image with
 *    unique plaintext markers, seals it, pushes it to a local registry and registers its key with
 *    a dadi-broker that releases it to the (development) sample TEE only.
 * 2. A micro-VM boots the guest image (src/sandbox: Debian's kernel, busybox, node, the
 *    single-file dadi-guest). In it `dadi-guest run` attests to the broker over the VM's network,
 *    gets the key as a JWE, reads the sealed image lazily from the host's registry, attaches the
 *    decrypted disk to the guest kernel's nbd driver, mounts it with a writable overlay and runs
 *    the image's own command (from its encrypted config). The host prints that output.
 * 3. The proof: the host side — registry storage and logs, the broker's state, every log and
 *    console transcript, and a capture of all the VM's network traffic — is searched for the
 *    markers (also inside gzip streams, reassembled TCP streams) and for the image key in every
 *    encoding: none may be found. A control run pushes the same image unsealed and lets a VM
 *    fetch a layer: the same scan must find the markers, in registry storage and in the capture.
 * 4. A denied guest: a broker whose policy refuses the VM's evidence; the guest must fail with
 *    the broker's denial and leave nothing mounted or attached.
 *
 * Prints the container's output, then one JSON line (the last line of stdout). Exit 0 when every
 * check holds, 1 when one fails (the JSON says which), 2 when a prerequisite is missing.
 */
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { keyNeedles, type Needle } from "../../src/sandbox/leak-scan.js";
import { scanHost } from "../../src/sandbox/scan-host.js";
import {
	type BrokerProgram,
	startInitialisedBroker,
} from "../broker/harness.js";
import { type Daemon, killDaemons } from "../daemon.js";
import { BIN, must, ROOT, runCli, writeKey } from "../helpers.js";
import { run } from "../image-fixtures.js";
import { type RunningRegistry, startRegistry } from "../registry/harness.js";
import { buildMarkerImage } from "./marker-image.js";
import { snapshotterVolume } from "./snapshotter-volume.js";
import { type GuestRun, prepareGuest, runGuest } from "./vm.js";

const KEY_REF = "kbs:///default/image-key/sandbox-app";
const REPO = "sandbox/app";

export interface SandboxOptions {
	memoryMiB: number;
	log: (line: string) => void;
	keep?: boolean;
}

export interface SandboxResult {
	ok: boolean;
	failures: string[];
	output: string;
	markersOnHost: number;
	keyBytesOnHost: number;
	timings: Record<string, number | null>;
	guestMemoryMiB: number | null;
	[k: string]: unknown;
}

export function missingPrerequisites(): string[] {
	const out: string[] = [];
	for (const [cmd, pkg] of [
		["qemu-system-x86_64", "qemu-system-x86"],
		["docker-registry", "docker-registry"],
		["umoci", "umoci"],
		["skopeo", "skopeo"],
		["busybox", "busybox-static"],
		["apt-get", "apt"],
		["dpkg-deb", "dpkg"],
	] as const)
		if (spawnSync("sh", ["-c", `command -v ${cmd}`]).status !== 0)
			out.push(`${cmd} not found (Debian: apt-get install ${pkg})`);
	return out;
}

const round = (ms: number | undefined | null) =>
	ms === undefined || ms === null ? null : Math.round(ms);

export async function runSandbox(o: SandboxOptions): Promise<SandboxResult> {
	const work = await mkdtemp(join(tmpdir(), "dadi-sandbox-"));
	// The image owner's side (trusted): the plaintext image and the image key.
	const owner = join(work, "owner");
	// The untrusted host side: everything here is scanned.
	const host = join(work, "host");
	// The relying party's brokers (in production off this host): state, master key, admin token.
	// Scanned separately: not host-side, but the image key must not be there in the clear.
	const brokerDir = join(work, "broker");
	for (const d of [owner, host, brokerDir, join(host, "logs")])
		await mkdir(d, { recursive: true });
	const daemons: Daemon[] = [];
	let reg: RunningRegistry | undefined;
	const failures: string[] = [];
	const check = (ok: boolean, what: string) => {
		if (!ok) failures.push(what);
	};
	try {
		o.log(
			"sandbox: building the guest image (initramfs from Debian's packages, cached)...",
		);
		const guest = await prepareGuest(o.log);

		o.log(
			"sandbox: starting a registry and two key brokers (allowing, denying)...",
		);
		reg = await startRegistry();
		const regDir = dirname(reg.storageDir);
		const allow = await startInitialisedBroker(join(brokerDir, "allow"));
		daemons.push(allow.daemon);
		const deny = await startInitialisedBroker(join(brokerDir, "deny"), {
			policies: join(ROOT, "test/sandbox/policies"),
		});
		daemons.push(deny.daemon);

		o.log(
			"sandbox: the owner builds an image with plaintext markers, seals and pushes it...",
		);
		const image = await buildMarkerImage(join(owner, "image"));
		const { key, path: keyPath } = await writeKey(owner);
		await mkdir(join(owner, "seal-work"));
		const sealed = JSON.parse(
			(
				await must(
					runCli(
						BIN.seal,
						[
							"seal",
							image.layout,
							`docker://${reg.host}/${REPO}:v1`,
							"--key",
							keyPath,
							"--key-ref",
							KEY_REF,
							"--insecure",
							"--work-dir",
							join(owner, "seal-work"),
							"--json",
						],
						undefined,
						{ ...process.env, TMPDIR: owner },
					),
				)
			).stdout,
		) as { manifest?: string };
		const digest = sealed.manifest;
		if (!digest)
			throw new Error(
				`dadi-seal printed no manifest digest: ${JSON.stringify(sealed)}`,
			);
		for (const b of [allow, deny]) await b.putImageKey(KEY_REF, keyPath);
		const needles: Needle[] = [
			...image.markers.map((m, i) => ({ name: `marker ${i}`, bytes: m })),
			...keyNeedles(key.key),
		];
		const port = reg.host.split(":")[1];
		const brokerFor = (b: BrokerProgram) =>
			`http://10.0.2.2:${new URL(String(b.daemon.ready.url)).port}`;

		o.log(
			"sandbox: containerd pulls it through dadi-snapshotter (guest mode): the Kata volume...",
		);
		const kata = await snapshotterVolume(
			join(host, "kata-host"),
			`${reg.host}/${REPO}@${digest}`,
		);
		// What the VM's job runs: the volume as Kata's runtime would pass it to the agent, the
		// registry as the guest reaches it (10.0.2.2 is the host's loopback through QEMU's NAT).
		const runArgs = (broker: BrokerProgram) => [
			"--volume",
			kata.volume,
			"--registry-alias",
			`${reg?.host}=10.0.2.2:${port}`,
			"--broker",
			brokerFor(broker),
			"--attester",
			"sample",
			"--insecure",
			"--json",
		];

		o.log(
			"sandbox: booting the VM: attest, fetch lazily, mount, run the image's command...",
		);
		const sealedRun = await runGuest(guest, {
			name: "sealed",
			run: runArgs(allow),
			hostDir: host,
			memoryMiB: o.memoryMiB,
			log: o.log,
		});
		const outputLines = containerOutput(sealedRun, image.expectedOutput);
		check(
			sealedRun.exitCode === 0,
			`the sealed run's command exited ${sealedRun.exitCode}`,
		);
		check(
			image.expectedOutput.every((l) => outputLines.includes(l)),
			"the container's output lacks a line it prints when it reads the right plaintext",
		);
		check(
			sealedRun.check?.mounted === 0,
			"something stayed mounted after the sealed run",
		);

		o.log(
			"sandbox: the denied guest (a policy that refuses the VM's evidence)...",
		);
		const deniedRun = await runGuest(guest, {
			name: "denied",
			run: runArgs(deny),
			hostDir: join(work, "denied"),
			memoryMiB: o.memoryMiB,
			log: o.log,
		});
		const denial = deniedRun.console.find((l) =>
			/POLICY_DENIED|denied/i.test(l),
		);
		check(
			deniedRun.exitCode !== 0 && deniedRun.exitCode !== null,
			"the denied guest's run did not fail",
		);
		check(
			denial !== undefined,
			"the denied guest did not report the broker's denial",
		);
		check(
			deniedRun.check?.mounted === 0 && deniedRun.check.nbdAttached === 0,
			"the denied guest left something mounted or attached",
		);
		check(
			!image.expectedOutput.slice(2).some((l) => deniedRun.console.includes(l)),
			"the denied guest printed the container's output",
		);

		o.log("sandbox: scanning the host side for markers and key bytes...");
		await writeFile(join(host, "logs/allow-broker.log"), allow.daemon.stderr());
		await writeFile(join(host, "logs/deny-broker.log"), deny.daemon.stderr());
		const hostScan = await scanHost(
			[regDir, host, join(work, "denied")],
			needles,
		);
		const markersOnHost = hostScan.hits.filter((h) =>
			h.needle.startsWith("marker"),
		).length;
		const keyBytesOnHost = hostScan.hits.filter((h) =>
			h.needle.startsWith("image key"),
		).length;
		check(
			hostScan.unreadable.length === 0,
			`unreadable host files: ${hostScan.unreadable.join("; ")}`,
		);
		check(
			markersOnHost === 0,
			`markers on the host: ${JSON.stringify(hostScan.hits.slice(0, 5))}`,
		);
		check(keyBytesOnHost === 0, "image key bytes on the host");
		check(
			hostScan.streams > 0,
			"the capture held no traffic: the scan looked at nothing",
		);
		const brokerScan = await scanHost([brokerDir], keyNeedles(key.key));
		check(
			brokerScan.hits.length === 0,
			"the image key in the clear in the broker's state",
		);

		o.log(
			"sandbox: control: the same image unsealed, fetched by a VM; the scan must find it...",
		);
		await run("skopeo", [
			"copy",
			"--quiet",
			"--dest-tls-verify=false",
			image.layout,
			`docker://${reg.host}/control/app:v1`,
		]);
		const manifest = JSON.parse(
			await run("skopeo", [
				"inspect",
				"--raw",
				"--tls-verify=false",
				`docker://${reg.host}/control/app:v1`,
			]),
		) as { config: { digest: string }; layers: { digest: string }[] };
		const controlDir = join(work, "control");
		const controlRun = await runGuest(guest, {
			name: "control",
			fetch: [manifest.config, ...manifest.layers].map(
				(l) =>
					`http://10.0.2.2:${reg?.host.split(":")[1]}/v2/control/app/blobs/${l.digest}`,
			),
			hostDir: controlDir,
			memoryMiB: o.memoryMiB,
			log: o.log,
		});
		const controlRegistry = await scanHost([regDir], needles);
		const controlCapture = await scanHost(
			[join(controlDir, "capture")],
			needles,
		);
		const found = (s: typeof controlRegistry) =>
			new Set(
				s.hits
					.filter((h) => h.needle.startsWith("marker"))
					.map((h) => h.needle),
			).size;
		check(
			controlRun.exitCode === 0,
			`the control VM's fetch exited ${controlRun.exitCode}`,
		);
		check(
			found(controlRegistry) === image.markers.length,
			"the control scan missed a marker in registry storage",
		);
		check(
			found(controlCapture) === image.markers.length,
			"the control scan missed a marker in the capture",
		);

		const t = sealedRun.report?.timingsMs ?? {};
		check(
			sealedRun.report?.blockDevice?.startsWith("/dev/nbd") === true,
			"the sealed run did not use the guest kernel's nbd driver",
		);
		const result: SandboxResult = {
			ok: failures.length === 0,
			failures,
			output: outputLines.join("\n"),
			markersOnHost,
			keyBytesOnHost,
			timings: {
				boot: round(sealedRun.timings.ready),
				attest: round(t.attest),
				firstRead: round(t.firstRead),
				mount: round(t.mount),
				exec: round(t.exec),
				vmTotal: round(sealedRun.timings.total),
			},
			guestMemoryMiB: sealedRun.guestMemoryMiB,
			guest: {
				dadiGuestPeakRssMiB:
					sealedRun.report?.peakRssBytes === undefined
						? null
						: Math.round(sealedRun.report.peakRssBytes / 2 ** 20),
				blockDevice: sealedRun.report?.blockDevice ?? null,
				fsType: sealedRun.report?.fsType ?? null,
				open: round(t.open),
				total: round(t.total),
				memoryMiB: o.memoryMiB,
				initramfsMiB: Math.round(guest.initramfsBytes / 2 ** 20),
				initramfsSha256: guest.initramfsSha256,
				fetched: sealedRun.report?.fetched ?? null,
			},
			scanned: {
				files: hostScan.files,
				bytes: hostScan.bytes,
				captureStreams: hostScan.streams,
			},
			control: {
				markersInRegistry: found(controlRegistry),
				markersInCapture: found(controlCapture),
			},
			denied: {
				exitCode: deniedRun.exitCode,
				denial: denial ?? null,
				mounted: deniedRun.check?.mounted ?? null,
				nbdAttached: deniedRun.check?.nbdAttached ?? null,
			},
			image: `${REPO}@${digest}`,
			kataMount: kata.mountType,
		};
		return result;
	} finally {
		for (const d of daemons) await d.stop().catch(() => {});
		await reg?.stop();
		killDaemons();
		if (o.keep) o.log(`sandbox: kept ${work}`);
		else await rm(work, { recursive: true, force: true });
	}
}

/** The console lines the container printed: from its first expected line to its last. */
function containerOutput(r: GuestRun, expected: string[]): string[] {
	const first = r.console.indexOf(expected[0] as string);
	if (first < 0) return [];
	const last = r.console.lastIndexOf(expected[expected.length - 1] as string);
	return r.console.slice(first, last >= first ? last + 1 : first + 1);
}
