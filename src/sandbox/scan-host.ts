/**
 * The host side, searched for secrets: every regular file under the given directories (registry
 * storage, caches, logs, state), each packet capture reassembled into its TCP streams, and zstd
 * files decompressed with Debian's zstd. Reports every hit with its file; counts what it read so a
 * scan that looked at nothing cannot pass for a clean one.
 */
import { execFile } from "node:child_process";
import { lstat, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { type Hit, type Needle, scanBytes } from "./leak-scan.js";
import { parsePcap } from "./pcap.js";
import { reassemble } from "./tcp-streams.js";

export interface FileHit extends Hit {
	file: string;
}

export interface HostScan {
	hits: FileHit[];
	files: number;
	bytes: number;
	/** TCP/UDP streams searched in captures. */
	streams: number;
	/** Files that could not be read (named, with why): a scan with these is not clean. */
	unreadable: string[];
}

const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

export async function scanHost(
	roots: readonly string[],
	needles: readonly Needle[],
	exclude: readonly string[] = [],
): Promise<HostScan> {
	const out: HostScan = {
		hits: [],
		files: 0,
		bytes: 0,
		streams: 0,
		unreadable: [],
	};
	const skip = (p: string) =>
		exclude.some((e) => p === e || p.startsWith(`${e}/`));
	const walk = async (p: string): Promise<void> => {
		if (skip(p)) return;
		let st: Awaited<ReturnType<typeof lstat>>;
		try {
			st = await lstat(p);
		} catch (e) {
			out.unreadable.push(`${p}: ${(e as Error).message}`);
			return;
		}
		if (st.isDirectory()) {
			for (const name of (await readdir(p)).sort()) await walk(join(p, name));
			return;
		}
		if (!st.isFile()) return;
		let bytes: Buffer;
		try {
			bytes = await readFile(p);
		} catch (e) {
			out.unreadable.push(`${p}: ${(e as Error).message}`);
			return;
		}
		out.files++;
		out.bytes += bytes.length;
		const add = (hs: Hit[], where?: string) => {
			for (const h of hs)
				out.hits.push({
					...h,
					file: p,
					where: where ? `${where}/${h.where}` : h.where,
				});
		};
		add(scanBytes(bytes, needles));
		if (isPcap(bytes)) {
			try {
				const { streams } = reassemble(parsePcap(bytes).segments);
				out.streams += streams.length;
				for (const s of streams) add(scanBytes(s.bytes, needles), s.flow);
			} catch (e) {
				out.unreadable.push(
					`${p}: capture unreadable: ${(e as Error).message}`,
				);
			}
		}
		if (bytes.subarray(0, 4).equals(ZSTD_MAGIC)) {
			const plain = await zstdDecompress(p).catch((e: Error) => {
				out.unreadable.push(`${p}: zstd: ${e.message}`);
				return undefined;
			});
			if (plain) add(scanBytes(plain, needles), "zstd");
		}
	};
	for (const r of roots) await walk(r);
	return out;
}

function isPcap(b: Buffer): boolean {
	if (b.length < 24) return false;
	const m = b.readUInt32LE(0);
	return (
		m === 0xa1b2c3d4 || m === 0xa1b23c4d || m === 0xd4c3b2a1 || m === 0x4d3cb2a1
	);
}

function zstdDecompress(file: string): Promise<Buffer> {
	return new Promise((resolve, reject) => {
		execFile(
			"zstd",
			["-dcq", file],
			{ encoding: "buffer", maxBuffer: 2 << 30 },
			(err, stdout) => (err ? reject(err) : resolve(stdout)),
		);
	});
}
