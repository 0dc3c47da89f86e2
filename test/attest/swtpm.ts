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
	const dir = mkdtempSync(join(tmpdir(), "dadi-swtpm-"));
	// tpm2-tools' swtpm TCTI finds the control channel at port + 1
	const port = await freePort();
	const ctrl = port + 1;
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
			`type=tcp,port=${ctrl},bindaddr=127.0.0.1`,
			"--flags",
			"not-need-init,startup-clear",
		],
		{ stdio: "ignore" },
	);
	const tcti = `swtpm:port=${port}`;
	const tpm2 = (tool: string, args: string[]) =>
		execFileSync(tool, args, {
			cwd: dir,
			env: { ...process.env, TPM2TOOLS_TCTI: tcti },
			stdio: ["ignore", "pipe", "pipe"],
		}).toString();
	try {
		provision(tpm2);
	} catch (e) {
		proc.kill();
		rmSync(dir, { recursive: true, force: true });
		throw e;
	}
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
		stop() {
			proc.kill();
			rmSync(dir, { recursive: true, force: true });
		},
	};
}

/** Waits for the TPM, then makes the EK and the AK and persists the AK at 0x81000003. */
function provision(tpm2: (tool: string, args: string[]) => string): void {
	const until = Date.now() + 10_000;
	for (;;) {
		try {
			tpm2("tpm2_getrandom", ["--hex", "4"]);
			break;
		} catch (e) {
			if (Date.now() > until) throw e;
			execFileSync("sleep", ["0.05"]);
		}
	}
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
