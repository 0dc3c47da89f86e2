/**
 * Test-only: a software TPM (swtpm, Debian swtpm + swtpm-tools) on loopback TCP, provisioned like an
 * Azure CVM's vTPM: an RSA-2048 RSASSA-SHA256 attestation key persisted at 0x81000003 and NV index
 * 0x01400001 holding an HCL report of the test's making. tpm2-tools reach it through
 * TPM2TOOLS_TCTI=swtpm:port=N.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export function haveSwtpm(): boolean {
	for (const tool of ["swtpm", "tpm2_quote", "tpm2_createak"])
		try {
			execFileSync("sh", ["-c", `command -v ${tool}`], { stdio: "ignore" });
		} catch {
			return false;
		}
	return true;
}

async function freePort(): Promise<number> {
	return new Promise((resolve, reject) => {
		const s = createServer();
		s.listen(0, "127.0.0.1", () => {
			const a = s.address();
			s.close(() =>
				typeof a === "object" && a
					? resolve(a.port)
					: reject(new Error("no port")),
			);
		});
	});
}

export interface Swtpm {
	tcti: string;
	/** The AK's public key (PEM). */
	akPem: string;
	tpm2(tool: string, args: string[]): string;
	/** (Re)writes NV index `index` with `data` (owner read/write, defined at data's size). */
	setNv(index: number, data: Buffer): void;
	stop(): void;
}

export async function startSwtpm(): Promise<Swtpm> {
	// The two ports are picked free and then given to swtpm, so another process may take one in
	// between (the whole suite runs in parallel): swtpm then exits at once, and a new pair is tried.
	let lastError = "";
	for (let attempt = 0; attempt < 5; attempt++) {
		const dir = mkdtempSync(join(tmpdir(), "dadi-swtpm-"));
		// tpm2-tools' swtpm TCTI finds the control channel at port + 1
		const port = await freePortPair();
		const proc: ChildProcess = spawn(
			"swtpm",
			[
				"socket",
				"--tpm2",
				"--tpmstate",
				`dir=${dir}`,
				"--server",
				`type=tcp,port=${port},bindaddr=127.0.0.1`,
				"--ctrl",
				`type=tcp,port=${port + 1},bindaddr=127.0.0.1`,
				"--flags",
				"not-need-init,startup-clear",
			],
			{ stdio: ["ignore", "ignore", "pipe"] },
		);
		let stderr = "";
		proc.stderr?.on("data", (d: Buffer) => {
			stderr += d.toString();
		});
		let exited = false;
		proc.on("exit", () => {
			exited = true;
		});
		const tcti = `swtpm:port=${port}`;
		const tpm2 = (tool: string, args: string[]) =>
			execFileSync(tool, args, {
				cwd: dir,
				env: { ...process.env, TPM2TOOLS_TCTI: tcti },
				stdio: ["ignore", "pipe", "pipe"],
			}).toString();
		const cleanup = () => {
			proc.kill();
			rmSync(dir, { recursive: true, force: true });
		};
		const ready = await waitReady(tpm2, () => exited);
		if (!ready) {
			cleanup();
			lastError = `swtpm on ports ${port}/${port + 1} ${exited ? "exited" : "did not answer in 10 s"}: ${stderr.trim()}`;
			continue;
		}
		try {
			provision(tpm2);
		} catch (e) {
			cleanup();
			throw e;
		}
		return swtpmHandle(dir, tcti, tpm2, cleanup);
	}
	throw new Error(`could not start swtpm: ${lastError}`);
}

async function freePortPair(): Promise<number> {
	for (;;) {
		const port = await freePort();
		if (port < 65535 && (await portFree(port + 1))) return port;
	}
}

async function portFree(port: number): Promise<boolean> {
	return new Promise((resolve) => {
		const s = createServer();
		s.once("error", () => resolve(false));
		s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
	});
}

/** Polls the TPM (without blocking the event loop between tries) until it answers, it exits, or 10 s. */
async function waitReady(
	tpm2: (tool: string, args: string[]) => string,
	exited: () => boolean,
): Promise<boolean> {
	const until = Date.now() + 10_000;
	while (Date.now() < until) {
		if (exited()) return false;
		try {
			tpm2("tpm2_getrandom", ["--hex", "4"]);
			return true;
		} catch {
			await new Promise((r) => setTimeout(r, 50));
		}
	}
	return false;
}

function swtpmHandle(
	dir: string,
	tcti: string,
	tpm2: (tool: string, args: string[]) => string,
	cleanup: () => void,
): Swtpm {
	const hex = (n: number) => `0x${n.toString(16).padStart(8, "0")}`;
	return {
		tcti,
		akPem: readFileSync(join(dir, "ak.pem"), "utf8"),
		tpm2,
		setNv(index, data) {
			try {
				tpm2("tpm2_nvundefine", [hex(index), "-C", "o"]);
			} catch {
				// not defined yet
			}
			tpm2("tpm2_nvdefine", [
				hex(index),
				"-C",
				"o",
				"-s",
				String(data.length),
				"-a",
				"ownerread|ownerwrite",
			]);
			writeFileSync(join(dir, "nv.bin"), data);
			tpm2("tpm2_nvwrite", [hex(index), "-C", "o", "-i", "nv.bin"]);
		},
		stop: cleanup,
	};
}

/** Makes the EK and the AK and persists the AK at 0x81000003. */
function provision(tpm2: (tool: string, args: string[]) => string): void {
	tpm2("tpm2_createek", ["-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
	tpm2("tpm2_createak", [
		"-C",
		"ek.ctx",
		"-c",
		"ak.ctx",
		"-G",
		"rsa",
		"-g",
		"sha256",
		"-s",
		"rsassa",
		"-u",
		"ak.pub",
		"-n",
		"ak.name",
	]);
	tpm2("tpm2_flushcontext", ["-t"]);
	tpm2("tpm2_flushcontext", ["-s"]);
	tpm2("tpm2_evictcontrol", ["-C", "o", "-c", "ak.ctx", "0x81000003"]);
	tpm2("tpm2_flushcontext", ["-t"]);
	tpm2("tpm2_readpublic", ["-c", "0x81000003", "-f", "pem", "-o", "ak.pem"]);
}
