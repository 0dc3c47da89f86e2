/**
 * Linux configfs-tsm (≥ 6.7): one attestation report through /sys/kernel/config/tsm/report.
 * I/O edge. Documentation/ABI/testing/configfs-tsm:
 *
 *   mkdir ROOT/NAME          the kernel creates the attributes: provider, generation, inblob,
 *                            outblob, auxblob, privlevel, privlevel_floor (and more on new kernels)
 *   write privlevel          (optional) the privilege level the report is requested at
 *   write inblob             the report_data (64 bytes for sev_guest and tdx_guest)
 *   read outblob             the report (SEV-SNP: the 1184-byte ATTESTATION_REPORT; TDX: the quote)
 *   read auxblob             SEV-SNP: the certificate table when the host provides one; else empty
 *   read generation          counts writes to the directory's attributes: when it is not the
 *                            number of writes we made, someone else wrote too and the outblob may
 *                            not be ours
 *   rmdir ROOT/NAME
 *
 * The root is a parameter, so tests (and `--tsm-root`) can point it at a plain directory played by
 * a fake kernel. Such a tree cannot create attributes synchronously inside mkdir, nor produce the
 * outblob synchronously inside the write of inblob, so this edge waits (briefly, bounded) for
 * `provider` to appear and for `generation` to reach the number of writes made; on a real configfs
 * neither wait ever happens. A directory that cannot be removed because it holds files (a fake
 * tree: configfs never says ENOTEMPTY for its attributes) is removed recursively.
 */
import { randomBytes } from "node:crypto";
import { mkdir, readFile, rm, rmdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { DadiError, fromSystemError } from "../errors.js";

export const TSM_REPORT_ROOT = "/sys/kernel/config/tsm/report";

export type TsmProvider = "sev_guest" | "tdx_guest";

export interface TsmRequest {
	/** The report directory's parent (default TSM_REPORT_ROOT). */
	root?: string;
	/** The report_data, as the provider wants it (64 bytes for SEV-SNP and TDX). */
	inblob: Buffer;
	/** Refuse a provider other than this one. */
	provider?: TsmProvider;
	/** SEV-SNP: the VMPL to request the report at (written to privlevel). */
	privlevel?: number;
	/** Also read auxblob (SEV-SNP's certificate table). */
	aux?: boolean;
	/** Attempts when another writer races us (default 3). */
	attempts?: number;
	/** How long to wait for a fake tree's attributes (default 5000 ms). */
	waitMs?: number;
}

export interface TsmReport {
	provider: TsmProvider;
	outblob: Buffer;
	/** auxblob when asked for and non-empty. */
	auxblob?: Buffer;
}

const MAX_BLOB = 1 << 20;

/** "sev_guest\n" → "sev_guest"; anything else is unsupported. */
export function parseProvider(text: string): TsmProvider {
	const t = text.trim();
	if (t === "sev_guest" || t === "tdx_guest") return t;
	throw new DadiError(
		"FORMAT_UNSUPPORTED",
		`configfs-tsm: provider ${JSON.stringify(t.slice(0, 40))} is not one this build attests with (sev_guest, tdx_guest)`,
	);
}

/** "3\n" → 3; anything but a small decimal is malformed. */
export function parseGeneration(text: string): number {
	const t = text.trim();
	if (!/^\d{1,10}$/.test(t))
		throw new DadiError(
			"FORMAT_INVALID",
			`configfs-tsm: generation ${JSON.stringify(t.slice(0, 20))} is not a decimal number`,
		);
	return Number(t);
}

/** True when a report directory exists under `root` (the kernel has configfs-tsm). */
export async function tsmAvailable(
	root: string = TSM_REPORT_ROOT,
): Promise<boolean> {
	try {
		return (await stat(root)).isDirectory();
	} catch {
		return false;
	}
}

/** The provider behind `root` (mkdir, read provider, rmdir), or undefined without configfs-tsm. */
export async function tsmProvider(
	root: string = TSM_REPORT_ROOT,
	waitMs = 5000,
): Promise<TsmProvider | undefined> {
	if (!(await tsmAvailable(root))) return undefined;
	const dir = join(root, `dadi-probe-${randomBytes(6).toString("hex")}`);
	await mkdir(dir).catch((e) => {
		throw fromSystemError(e, dir, "creating a configfs-tsm report");
	});
	try {
		return parseProvider(await readAttr(dir, "provider", waitMs));
	} finally {
		await removeReportDir(dir);
	}
}

/** One report: retried (a new directory each time) while another writer races us. */
export async function tsmReport(r: TsmRequest): Promise<TsmReport> {
	const root = r.root ?? TSM_REPORT_ROOT;
	if (!(await tsmAvailable(root)))
		throw new DadiError(
			"INPUT_NOT_FOUND",
			`configfs-tsm: ${root} does not exist (Linux 6.7 or later with configfs mounted on /sys/kernel/config)`,
		);
	if (r.inblob.length === 0 || r.inblob.length > 64)
		throw new DadiError(
			"INTERNAL",
			"configfs-tsm: inblob must be 1 to 64 bytes",
		);
	const attempts = r.attempts ?? 3;
	let last: DadiError | undefined;
	for (let i = 0; i < attempts; i++) {
		try {
			return await once(root, r);
		} catch (e) {
			if (!(e instanceof RaceError)) throw e;
			last = new DadiError("IO", e.message);
		}
	}
	throw last ?? new DadiError("INTERNAL", "configfs-tsm: no attempt made");
}

class RaceError extends Error {}

async function once(root: string, r: TsmRequest): Promise<TsmReport> {
	const waitMs = r.waitMs ?? 5000;
	const dir = join(root, `dadi-${randomBytes(8).toString("hex")}`);
	await mkdir(dir).catch((e) => {
		throw fromSystemError(e, dir, "creating a configfs-tsm report");
	});
	try {
		const provider = parseProvider(await readAttr(dir, "provider", waitMs));
		if (r.provider && provider !== r.provider)
			throw new DadiError(
				"USAGE",
				`configfs-tsm: this machine's provider is ${provider}, not ${r.provider}`,
			);
		let writes = 0;
		if (r.privlevel !== undefined) {
			await writeAttr(dir, "privlevel", Buffer.from(`${r.privlevel}\n`));
			writes++;
		}
		await writeAttr(dir, "inblob", r.inblob);
		writes++;
		await waitForGeneration(dir, writes, waitMs);
		const outblob = await readBlob(dir, "outblob");
		let auxblob: Buffer | undefined;
		if (r.aux) {
			try {
				auxblob = await readBlob(dir, "auxblob");
			} catch {
				auxblob = undefined; // no certificates from this host (or no auxblob attribute)
			}
			if (auxblob?.length === 0) auxblob = undefined;
		}
		const after = parseGeneration(await readAttr(dir, "generation", 0));
		if (after !== writes)
			throw new RaceError(
				`configfs-tsm: ${dir} was written by someone else while we read the report (generation ${after}, expected ${writes})`,
			);
		if (outblob.length === 0)
			throw new DadiError("IO", `configfs-tsm: ${dir}/outblob is empty`);
		const out: TsmReport = { provider, outblob };
		if (auxblob) out.auxblob = auxblob;
		return out;
	} finally {
		await removeReportDir(dir);
	}
}

async function waitForGeneration(
	dir: string,
	writes: number,
	waitMs: number,
): Promise<void> {
	const until = Date.now() + waitMs;
	for (;;) {
		const g = parseGeneration(await readAttr(dir, "generation", waitMs));
		if (g === writes) return;
		if (g > writes)
			throw new RaceError(
				`configfs-tsm: ${dir} was written by someone else (generation ${g}, expected ${writes})`,
			);
		if (Date.now() >= until)
			throw new DadiError(
				"IO",
				`configfs-tsm: ${dir}/generation stayed ${g} after our ${writes} write(s)`,
			);
		await sleep(5);
	}
}

/** A small text attribute, waiting up to `waitMs` for it to appear (fake trees). */
async function readAttr(
	dir: string,
	name: string,
	waitMs: number,
): Promise<string> {
	const path = join(dir, name);
	const until = Date.now() + waitMs;
	for (;;) {
		try {
			const b = await readFile(path);
			if (b.length > 4096)
				throw new DadiError(
					"FORMAT_INVALID",
					`${path}: larger than 4096 bytes`,
				);
			return b.toString("utf8");
		} catch (e) {
			if ((e as NodeJS.ErrnoException).code !== "ENOENT" || Date.now() >= until)
				throw fromSystemError(e, path, "reading a configfs-tsm attribute");
			await sleep(5);
		}
	}
}

async function readBlob(dir: string, name: string): Promise<Buffer> {
	const path = join(dir, name);
	let b: Buffer;
	try {
		b = await readFile(path);
	} catch (e) {
		throw fromSystemError(e, path, "reading a configfs-tsm report");
	}
	if (b.length > MAX_BLOB)
		throw new DadiError("FORMAT_INVALID", `${path}: larger than 1 MiB`);
	return b;
}

async function writeAttr(dir: string, name: string, b: Buffer): Promise<void> {
	const path = join(dir, name);
	try {
		await writeFile(path, b);
	} catch (e) {
		throw fromSystemError(e, path, "writing a configfs-tsm attribute");
	}
}

async function removeReportDir(dir: string): Promise<void> {
	try {
		await rmdir(dir);
	} catch (e) {
		if ((e as NodeJS.ErrnoException).code === "ENOTEMPTY")
			await rm(dir, { recursive: true, force: true }).catch(() => {});
		// else: best effort; a leaked configfs directory holds no secret
	}
}

function sleep(ms: number): Promise<void> {
	return new Promise((r) => setTimeout(r, ms));
}
