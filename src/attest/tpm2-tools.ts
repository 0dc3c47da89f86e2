/**
 * The vTPM through tpm2-tools (Debian package tpm2-tools): NV reads and writes and a quote. I/O
 * edge. The TPM is the tools' default (/dev/tpmrm0) unless `tcti` (or $TPM2TOOLS_TCTI) names
 * another, e.g. "swtpm:port=2321" in tests. Outputs go through a private temporary directory.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DadiError } from "../errors.js";
import { printable } from "../printable.js";

export interface TpmOptions {
	/** TPM2TOOLS_TCTI for the tools (default: the environment's, else the device). */
	tcti?: string;
}

function handle(n: number): string {
	return `0x${n.toString(16).padStart(8, "0")}`;
}

async function run(
	tool: string,
	args: string[],
	o: TpmOptions,
): Promise<string> {
	const env = { ...process.env };
	if (o.tcti) env.TPM2TOOLS_TCTI = o.tcti;
	return new Promise((resolve, reject) => {
		execFile(
			tool,
			args,
			{ env, maxBuffer: 4 << 20, timeout: 60_000 },
			(err, stdout, stderr) => {
				if (!err) return resolve(stdout);
				if ((err as NodeJS.ErrnoException).code === "ENOENT")
					return reject(
						new DadiError(
							"INPUT_NOT_FOUND",
							`${tool}: not installed (the Azure vTPM attesters need tpm2-tools)`,
						),
					);
				const last = stderr.trim().split("\n").slice(-2).join("; ");
				reject(
					new DadiError(
						"IO",
						`${tool} ${args[0] ?? ""}: ${printable(last.slice(0, 400)) || err.message}`,
					),
				);
			},
		);
	});
}

async function withTemp<T>(f: (dir: string) => Promise<T>): Promise<T> {
	const dir = await mkdtemp(join(tmpdir(), "dadi-tpm-"));
	try {
		return await f(dir);
	} finally {
		await rm(dir, { recursive: true, force: true });
	}
}

/** The NV index's data size, or undefined when it is not defined. */
export async function nvSize(
	index: number,
	o: TpmOptions = {},
): Promise<number | undefined> {
	let out: string;
	try {
		out = await run("tpm2_nvreadpublic", [handle(index)], o);
	} catch (e) {
		if (e instanceof DadiError && e.code === "IO") return undefined;
		throw e;
	}
	const m = /^\s*size:\s*(\d+)\s*$/m.exec(out);
	return m ? Number(m[1]) : undefined;
}

/** The whole NV index, read with owner authorization. */
export async function nvRead(
	index: number,
	o: TpmOptions = {},
): Promise<Buffer> {
	return withTemp(async (dir) => {
		const out = join(dir, "nv");
		await run("tpm2_nvread", [handle(index), "-C", "o", "-o", out], o);
		return readFile(out);
	});
}

/** Writes `data` to an owner-authorized NV index, (re)defining it at `data`'s size when needed. */
export async function nvWrite(
	index: number,
	data: Buffer,
	o: TpmOptions = {},
): Promise<void> {
	const size = await nvSize(index, o);
	if (size !== undefined && size !== data.length)
		await run("tpm2_nvundefine", [handle(index), "-C", "o"], o);
	if (size !== data.length)
		await run(
			"tpm2_nvdefine",
			[
				handle(index),
				"-C",
				"o",
				"-s",
				String(data.length),
				"-a",
				"ownerread|ownerwrite",
			],
			o,
		);
	await withTemp(async (dir) => {
		const file = join(dir, "data");
		await writeFile(file, data);
		await run("tpm2_nvwrite", [handle(index), "-C", "o", "-i", file], o);
	});
}

export interface RawTpmQuote {
	/** TPMS_ATTEST as signed. */
	message: Buffer;
	/** The raw RSASSA signature. */
	signature: Buffer;
	/** The 24 SHA-256 PCR values, concatenated. */
	pcrValues: Buffer;
}

/** A quote over SHA-256 PCRs 0–23 by the key at `akHandle`, with `qualifyingData` as extraData. */
export async function tpmQuote(
	akHandle: number,
	qualifyingData: Buffer,
	o: TpmOptions = {},
): Promise<RawTpmQuote> {
	if (qualifyingData.length === 0 || qualifyingData.length > 64)
		throw new DadiError(
			"INTERNAL",
			"TPM quote: the qualifying data is 1 to 64 bytes",
		);
	return withTemp(async (dir) => {
		const f = (n: string) => join(dir, n);
		await run(
			"tpm2_quote",
			[
				"-c",
				handle(akHandle),
				"-l",
				"sha256:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23",
				"-q",
				qualifyingData.toString("hex"),
				"-g",
				"sha256",
				"-m",
				f("message"),
				"-s",
				f("signature"),
				"-f",
				"plain",
				"-o",
				f("pcrs"),
				"-F",
				"values",
			],
			o,
		);
		return {
			message: await readFile(f("message")),
			signature: await readFile(f("signature")),
			pcrValues: await readFile(f("pcrs")),
		};
	});
}
