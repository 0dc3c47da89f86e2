/**
 * The reference figures every ratio is computed against, all measured in the same run on the same
 * image bytes: node:crypto AES-256-GCM over the whole image in one cipher call (the local limit),
 * AES-256-GCM with one cipher per chunk (what per-chunk sealing cannot go below), and gzip -6.
 */
import { spawn, spawnSync } from "node:child_process";
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";

/** Repeated timings of one operation over `bytes` bytes. */
export interface Timing {
	bytes: number;
	reps: number;
	bestSeconds: number;
	medianSeconds: number;
}

export function timingOf(bytes: number, seconds: number[]): Timing {
	const sorted = [...seconds].sort((a, b) => a - b);
	return {
		bytes,
		reps: sorted.length,
		bestSeconds: sorted[0] ?? Number.NaN,
		medianSeconds: sorted[Math.floor((sorted.length - 1) / 2)] ?? Number.NaN,
	};
}

/** Throughput in MiB/s of the best repetition. */
export function mibPerSecond(t: Timing): number {
	return t.bytes / 2 ** 20 / t.bestSeconds;
}

export interface AesLimit {
	/** One update() over the whole image: the limit the ratios are computed against. */
	encrypt: Timing;
	decrypt: Timing;
	/** One cipher object, the image fed through update() in STREAM_PIECE pieces. */
	streamEncrypt: Timing;
	streamDecrypt: Timing;
}

/** Piece size of the streamed AES-GCM baseline. */
export const STREAM_PIECE = 64 << 10;

/**
 * AES-256-GCM over all of `data` with one cipher object each way, best of `reps`: in one
 * update() call (which also allocates and first touches an output buffer as large as the image),
 * and streamed in 64 KiB update() calls (small outputs the allocator reuses).
 */
export function measureAesLimit(data: Buffer, reps: number): AesLimit {
	const key = randomBytes(32);
	const iv = randomBytes(12);
	const times = { enc: [], dec: [], senc: [], sdec: [] } as Record<
		"enc" | "dec" | "senc" | "sdec",
		number[]
	>;
	let sealed: Buffer = Buffer.alloc(0);
	let tag: Buffer = Buffer.alloc(0);
	const time = (into: number[], fn: () => void): void => {
		const t0 = performance.now();
		fn();
		into.push((performance.now() - t0) / 1000);
	};
	for (let i = 0; i < reps; i++) {
		time(times.enc, () => {
			const c = createCipheriv("aes-256-gcm", key, iv);
			sealed = c.update(data);
			c.final();
			tag = c.getAuthTag();
		});
		time(times.senc, () => {
			const c = createCipheriv("aes-256-gcm", key, iv);
			for (let off = 0; off < data.length; off += STREAM_PIECE)
				c.update(data.subarray(off, off + STREAM_PIECE));
			c.final();
			if (!c.getAuthTag().equals(tag))
				throw new Error("AES-GCM baseline: streamed tag differs");
		});
	}
	for (let i = 0; i < reps; i++) {
		let plain: Buffer = Buffer.alloc(0);
		time(times.dec, () => {
			const d = createDecipheriv("aes-256-gcm", key, iv);
			d.setAuthTag(tag);
			plain = d.update(sealed);
			d.final();
		});
		if (i === 0 && !plain.equals(data))
			throw new Error("AES-GCM baseline: decryption did not round-trip");
		time(times.sdec, () => {
			const d = createDecipheriv("aes-256-gcm", key, iv);
			d.setAuthTag(tag);
			for (let off = 0; off < sealed.length; off += STREAM_PIECE)
				d.update(sealed.subarray(off, off + STREAM_PIECE));
			d.final();
		});
	}
	return {
		encrypt: timingOf(data.length, times.enc),
		decrypt: timingOf(data.length, times.dec),
		streamEncrypt: timingOf(data.length, times.senc),
		streamDecrypt: timingOf(data.length, times.sdec),
	};
}

/**
 * Writing `bytes` into freshly allocated memory, best of `reps`: what the one-call baseline pays
 * for its output buffer. Slow first touches (page faults, in a VM also the hypervisor's) show up
 * here.
 */
export function measureFirstTouch(bytes: number, reps: number): Timing {
	const times: number[] = [];
	for (let i = 0; i < reps; i++) {
		const t0 = performance.now();
		Buffer.allocUnsafeSlow(bytes).fill(i + 1);
		times.push((performance.now() - t0) / 1000);
	}
	return timingOf(bytes, times);
}

/**
 * AES-256-GCM sealing every chunk of `data` with its own cipher object, nonce and 60-byte AAD, as
 * the layer writer does, but with no I/O, no zero detection and no compression.
 */
export function measurePerChunkAes(
	data: Buffer,
	chunkSize: number,
	reps: number,
): Timing {
	const key = randomBytes(32);
	const nonce = Buffer.alloc(12);
	const aad = Buffer.alloc(60);
	const times: number[] = [];
	for (let r = 0; r < reps; r++) {
		const t0 = performance.now();
		for (let off = 0, i = 0; off < data.length; off += chunkSize, i++) {
			nonce.writeUInt32LE(i, 0);
			const c = createCipheriv("aes-256-gcm", key, nonce);
			c.setAAD(aad);
			c.update(data.subarray(off, off + chunkSize));
			c.final();
			c.getAuthTag();
		}
		times.push((performance.now() - t0) / 1000);
	}
	return timingOf(data.length, times);
}

export interface GzipResult {
	bytes: number;
	seconds: number;
}

/** Size of `gzip -6 -n -c FILE`, counted from its output stream; null when gzip cannot run. */
export function gzipSize(path: string): Promise<GzipResult | null> {
	return new Promise((resolve) => {
		const t0 = performance.now();
		let bytes = 0;
		const child = spawn("gzip", ["-6", "-n", "-c", path], {
			stdio: ["ignore", "pipe", "inherit"],
		});
		child.stdout.on("data", (b: Buffer) => {
			bytes += b.length;
		});
		child.on("error", () => resolve(null));
		child.on("close", (code) =>
			resolve(
				code === 0 ? { bytes, seconds: (performance.now() - t0) / 1000 } : null,
			),
		);
	});
}

/**
 * `openssl speed` for AES-256-GCM on 64 KiB buffers, best of `reps` one-second runs, in MiB/s;
 * null when the openssl binary cannot run.
 */
export function opensslSpeed(decrypt: boolean, reps: number): number | null {
	let best: number | null = null;
	for (let i = 0; i < reps; i++) {
		const r = spawnSync(
			"openssl",
			[
				"speed",
				"-elapsed",
				"-seconds",
				"1",
				"-bytes",
				"65536",
				...(decrypt ? ["-decrypt"] : []),
				"-evp",
				"aes-256-gcm",
			],
			{ encoding: "utf8" },
		);
		// The last line reads "AES-256-GCM  4480434.18k": thousands of bytes per second.
		const m = /^AES-256-GCM\s+([\d.]+)k\s*$/m.exec(r.stdout ?? "");
		if (r.status !== 0 || !m) return null;
		const mib = (Number(m[1]) * 1000) / 2 ** 20;
		best = best === null ? mib : Math.max(best, mib);
	}
	return best;
}
