/**
 * The cold-start bench's network (issue 18): a docker-registry in its own network namespace,
 * reached from the host through a veth pair, so that every variant's registry traffic takes the
 * same path and can be shaped by the kernel: `tc qdisc … tbf rate 200mbit` on the namespace's end
 * of the pair (the registry → client direction). Unshaped, the pair is the "loopback" link (a veth
 * pair is a kernel-internal link like lo, MTU 1500). The registry's own access log (one JSON line
 * per response, with the bytes written) gives the requests and bytes of each run: no proxy in the
 * path. The key broker stays on the host's loopback (a few KiB, not shaped).
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { openSync, readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";

export interface ShapedRegistry {
	/** "10.x.y.2:5000", the registry as every client reaches it (plain HTTP). */
	host: string;
	/** Sets the link: null = unshaped, else the tbf rate in Mbit/s. */
	shape(mbit: number | null): void;
	/** The access log's current end: pass to `traffic` after a run. */
	mark(): number;
	/** Requests and body bytes the registry served since `mark`. */
	traffic(since: number): { requests: number; bytes: number };
	stop(): Promise<void>;
}

export function netMissing(): string | null {
	if (process.getuid?.() !== 0) return "needs root (network namespace, tc)";
	for (const [cmd, pkg] of [
		["ip", "iproute2"],
		["tc", "iproute2"],
		["docker-registry", "docker-registry"],
	] as const)
		if (spawnSync("sh", ["-c", `command -v ${cmd}`]).status !== 0)
			return `${cmd} not found (Debian: apt-get install ${pkg})`;
	return null;
}

function ip(args: string[], allowFail = false): void {
	const r = spawnSync("ip", args, { encoding: "utf8" });
	if (r.status !== 0 && !allowFail)
		throw new Error(`ip ${args.join(" ")}: ${r.stderr.trim()}`);
}

export async function startShapedRegistry(
	dir: string,
	log: (line: string) => void,
): Promise<ShapedRegistry> {
	const n = process.pid % 250;
	const ns = `dadi-cs-${process.pid}`;
	const hostIf = `dcs${process.pid}h`.slice(0, 15);
	const nsIf = `dcs${process.pid}n`.slice(0, 15);
	const hostIp = `10.231.${n}.1`;
	const nsIp = `10.231.${n}.2`;
	const host = `${nsIp}:5000`;
	await mkdir(join(dir, "storage"), { recursive: true });
	const logFile = join(dir, "registry.log");
	const config = join(dir, "registry.yml");
	await writeFile(
		config,
		[
			"version: 0.1",
			"log:",
			"  level: info",
			"  formatter: json",
			"  accesslog:",
			"    disabled: true",
			"storage:",
			"  filesystem:",
			`    rootdirectory: ${join(dir, "storage")}`,
			"  delete:",
			"    enabled: true",
			"  redirect:",
			"    disable: true",
			"http:",
			`  addr: ${host}`,
			"",
		].join("\n"),
	);
	let child: ChildProcess | undefined;
	const teardown = () => {
		spawnSync("ip", ["netns", "del", ns]);
		spawnSync("ip", ["link", "del", hostIf]);
	};
	try {
		ip(["netns", "add", ns]);
		ip(["link", "add", hostIf, "type", "veth", "peer", "name", nsIf]);
		ip(["link", "set", nsIf, "netns", ns]);
		ip(["addr", "add", `${hostIp}/30`, "dev", hostIf]);
		ip(["link", "set", hostIf, "up"]);
		ip(["-n", ns, "addr", "add", `${nsIp}/30`, "dev", nsIf]);
		ip(["-n", ns, "link", "set", nsIf, "up"]);
		ip(["-n", ns, "link", "set", "lo", "up"]);
		const out = openSync(logFile, "a");
		child = spawn(
			"ip",
			["netns", "exec", ns, "docker-registry", "serve", config],
			{ stdio: ["ignore", out, out] },
		);
		const deadline = Date.now() + 20_000;
		for (;;) {
			if (child.exitCode !== null)
				throw new Error(
					`docker-registry exited: ${readFileSync(logFile, "utf8").slice(-1500)}`,
				);
			const ok = await fetch(`http://${host}/v2/`).then(
				(r) => r.status === 200,
				() => false,
			);
			if (ok) break;
			if (Date.now() > deadline)
				throw new Error("docker-registry did not answer in 20 s");
			await new Promise((r) => setTimeout(r, 200));
		}
	} catch (e) {
		child?.kill("SIGKILL");
		teardown();
		throw e;
	}
	log(`registry ${host} in network namespace ${ns} (veth ${hostIf})`);
	const shape = (mbit: number | null) => {
		spawnSync("ip", [
			"netns",
			"exec",
			ns,
			"tc",
			"qdisc",
			"del",
			"dev",
			nsIf,
			"root",
		]);
		if (mbit === null) return;
		const r = spawnSync(
			"ip",
			[
				"netns",
				"exec",
				ns,
				"tc",
				"qdisc",
				"add",
				"dev",
				nsIf,
				"root",
				"tbf",
				"rate",
				`${mbit}mbit`,
				"burst",
				"64kb",
				"latency",
				"50ms",
			],
			{ encoding: "utf8" },
		);
		if (r.status !== 0) throw new Error(`tc tbf: ${r.stderr.trim()}`);
	};
	const readLog = () => readFileSync(logFile, "utf8");
	return {
		host,
		shape,
		mark: () => Buffer.byteLength(readLog()),
		traffic(since) {
			const text = readFileSync(logFile).subarray(since).toString("utf8");
			let requests = 0;
			let bytes = 0;
			for (const line of text.split("\n")) {
				if (!line.includes('"response completed"')) continue;
				try {
					const doc = JSON.parse(line) as Record<string, unknown>;
					requests++;
					bytes += Number(doc["http.response.written"] ?? 0);
				} catch {
					// a partial line
				}
			}
			return { requests, bytes };
		},
		async stop() {
			const c = child;
			if (c && c.exitCode === null) {
				const done = new Promise((r) => c.once("exit", r));
				c.kill("SIGTERM");
				const t = setTimeout(() => c.kill("SIGKILL"), 5000);
				await done;
				clearTimeout(t);
			}
			teardown();
		},
	};
}
