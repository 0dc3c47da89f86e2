/**
 * The sandbox harness's leak scan (src/sandbox/{pcap,tcp-streams,leak-scan,scan-host}.ts): a
 * marker split across TCP segments, sent out of order and retransmitted, is found; gzip hides
 * nothing; a key is found in every encoding; hostile captures never crash the parser.
 */
import { randomBytes } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import { keyNeedles, scanBytes } from "../src/sandbox/leak-scan.js";
import { frameSegment, parsePcap, type Segment } from "../src/sandbox/pcap.js";
import { scanHost } from "../src/sandbox/scan-host.js";
import { reassemble } from "../src/sandbox/tcp-streams.js";
import { cleanupTempDirs, tempDir } from "./helpers.js";

afterAll(cleanupTempDirs);

/** An Ethernet + IPv4 + TCP frame (checksums left zero: the parser does not check them). */
function tcpFrame(seq: number, payload: Buffer, syn = false): Buffer {
	const eth = Buffer.alloc(14);
	eth.writeUInt16BE(0x0800, 12);
	const ip = Buffer.alloc(20);
	ip[0] = 0x45;
	ip.writeUInt16BE(20 + 20 + payload.length, 2);
	ip[9] = 6;
	Buffer.from([10, 0, 2, 2]).copy(ip, 12);
	Buffer.from([10, 0, 2, 15]).copy(ip, 16);
	const tcp = Buffer.alloc(20);
	tcp.writeUInt16BE(5000, 0);
	tcp.writeUInt16BE(40000, 2);
	tcp.writeUInt32BE(seq >>> 0, 4);
	tcp[12] = 5 << 4;
	tcp[13] = syn ? 0x02 : 0x18;
	return Buffer.concat([eth, ip, tcp, payload]);
}

function pcapOf(frames: Buffer[]): Buffer {
	const head = Buffer.alloc(24);
	head.writeUInt32LE(0xa1b2c3d4, 0);
	head.writeUInt16LE(2, 4);
	head.writeUInt16LE(4, 6);
	head.writeUInt32LE(65535, 16);
	head.writeUInt32LE(1, 20);
	return Buffer.concat([
		head,
		...frames.flatMap((f, i) => {
			const r = Buffer.alloc(16);
			r.writeUInt32LE(i, 0);
			r.writeUInt32LE(f.length, 8);
			r.writeUInt32LE(f.length, 12);
			return [r, f];
		}),
	]);
}

const MARKER = Buffer.from(`DADI-MARKER-${randomBytes(12).toString("hex")}`);
const needles = [{ name: "marker", bytes: MARKER }];

describe("capture reassembly", () => {
	it("finds a marker split across segments sent out of order, with a retransmission and a sequence wrap", () => {
		const body = Buffer.concat([randomBytes(3000), MARKER, randomBytes(3000)]);
		const isn = 0xffffff00; // the stream wraps 2^32 inside the body
		const cut = [0, 1400, 3010, 4400, body.length];
		const frames = [tcpFrame(isn, Buffer.alloc(0), true)];
		const parts = cut.slice(0, -1).map((a, i) => ({
			seq: isn + 1 + a,
			p: body.subarray(a, cut[i + 1]),
		}));
		for (const i of [0, 2, 1, 2, 3]) {
			const part = parts[i] as { seq: number; p: Buffer };
			frames.push(tcpFrame(part.seq, part.p));
		}
		const cap = parsePcap(pcapOf(frames));
		expect(cap.records).toBe(6);
		const { streams } = reassemble(cap.segments);
		expect(streams).toHaveLength(1);
		const s = streams[0] as { bytes: Buffer; gaps: number };
		expect(s.gaps).toBe(0);
		expect(s.bytes.equals(body)).toBe(true);
		expect(scanBytes(s.bytes, needles).map((h) => h.needle)).toEqual([
			"marker",
		]);
		// No segment carries the marker whole: only the reassembled stream shows it.
		expect(cap.segments.some((g) => g.payload.includes(MARKER))).toBe(false);
	});

	it("stops at a record cut short, keeping what came before", () => {
		const full = pcapOf([tcpFrame(1, Buffer.from("abc")), tcpFrame(4, MARKER)]);
		const cap = parsePcap(full.subarray(0, full.length - 5));
		expect(cap.truncated).toBe(true);
		expect(cap.records).toBe(1);
	});

	it("refuses what is not a pcap file, with FORMAT_INVALID", () => {
		for (const b of [Buffer.alloc(10), Buffer.alloc(24, 0x41)])
			expect(() => parsePcap(b)).toThrow(DadiError);
		const wrongLink = pcapOf([]);
		wrongLink.writeUInt32LE(113, 20);
		expect(() => parsePcap(wrongLink)).toThrow(/link type 113/);
	});

	it("never throws anything but DadiError on arbitrary captures, and reassembly stays bounded", () => {
		fc.assert(
			fc.property(
				fc.uint8Array({ maxLength: 600 }),
				fc.boolean(),
				(bytes, withHeader) => {
					const b = withHeader
						? Buffer.concat([pcapOf([]), Buffer.from(bytes)])
						: Buffer.from(bytes);
					try {
						const cap = parsePcap(b);
						const r = reassemble(cap.segments, 1 << 16);
						for (const s of r.streams)
							expect(s.bytes.length).toBeLessThanOrEqual(1 << 16);
					} catch (e) {
						expect(e).toBeInstanceOf(DadiError);
					}
				},
			),
			{ numRuns: 2000 },
		);
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
				frameSegment(Buffer.from(bytes));
			}),
			{ numRuns: 2000 },
		);
	});

	it("keeps arbitrary segment orders bounded and exact where they cover the stream", () => {
		fc.assert(
			fc.property(
				fc.uint8Array({ minLength: 1, maxLength: 300 }),
				fc.array(fc.nat(299), { maxLength: 8 }),
				fc.nat(),
				(data, cuts, isn) => {
					const body = Buffer.from(data);
					const points = [
						...new Set([0, ...cuts.filter((c) => c < body.length)]),
					].sort((a, b) => a - b);
					const segs: Segment[] = points.map((a, i) => ({
						flow: "f",
						proto: "tcp",
						seq: (isn + a) >>> 0,
						syn: false,
						payload: body.subarray(a, points[i + 1] ?? body.length),
					}));
					const { streams } = reassemble(segs.reverse().concat(segs));
					// Without a SYN the base is the first segment seen (the last one of the body
					// here), so only bytes from it on are placed.
					for (const s of streams)
						expect(s.bytes.length).toBeLessThanOrEqual(body.length);
				},
			),
		);
	});
});

describe("leak scan", () => {
	it("finds a marker inside gzip, also inside a member cut short and behind other bytes", () => {
		const gz = gzipSync(
			Buffer.concat([
				randomBytes(500),
				MARKER,
				randomBytes(5000),
				Buffer.alloc(100_000),
			]),
		);
		const wrapped = Buffer.concat([randomBytes(777), gz, randomBytes(99)]);
		expect(wrapped.includes(MARKER)).toBe(false);
		expect(scanBytes(wrapped, needles).map((h) => h.where)).toEqual([
			"gzip@777",
		]);
		const cut = wrapped.subarray(0, 777 + Math.floor(gz.length * 0.9));
		expect(scanBytes(cut, needles)).toHaveLength(1);
		expect(scanBytes(randomBytes(50_000), needles)).toEqual([]);
	});

	it("finds an image key raw, in hex and inside base64/base64url texts at every alignment", () => {
		const key = randomBytes(32);
		const ns = keyNeedles(key);
		const found = (b: Buffer) => scanBytes(b, ns).length > 0;
		expect(found(Buffer.concat([randomBytes(9), key]))).toBe(true);
		expect(found(Buffer.from(`x${key.toString("hex").toUpperCase()}y`))).toBe(
			true,
		);
		for (let pre = 0; pre < 3; pre++) {
			const text = Buffer.concat([randomBytes(pre + 3), key, randomBytes(4)]);
			expect(found(Buffer.from(text.toString("base64")))).toBe(true);
			expect(found(Buffer.from(text.toString("base64url")))).toBe(true);
			expect(
				found(Buffer.from(JSON.stringify({ k: key.toString("base64url") }))),
			).toBe(true);
		}
		expect(found(Buffer.from(randomBytes(32).toString("base64")))).toBe(false);
	});

	it("walks a host tree: files, captures and zstd files; excluded paths are skipped", async () => {
		const dir = await tempDir();
		await mkdir(join(dir, "a/b"), { recursive: true });
		await mkdir(join(dir, "owner"), { recursive: true });
		await writeFile(join(dir, "a/clean"), randomBytes(4096));
		await writeFile(
			join(dir, "a/b/layer.tar.gz"),
			gzipSync(Buffer.concat([randomBytes(10), MARKER])),
		);
		await writeFile(join(dir, "owner/plain"), MARKER);
		const body = Buffer.concat([
			Buffer.from("HTTP/1.1 200 OK\r\n\r\n"),
			MARKER,
		]);
		await writeFile(
			join(dir, "net.pcap"),
			pcapOf([
				tcpFrame(10, body.subarray(0, 20)),
				tcpFrame(30, body.subarray(20)),
			]),
		);
		const r = await scanHost([dir], needles, [join(dir, "owner")]);
		expect(r.unreadable).toEqual([]);
		expect(r.files).toBe(3);
		expect(r.streams).toBe(1);
		expect(
			r.hits.map((h) => [h.file.slice(dir.length), h.where]).sort(),
		).toEqual([
			["/a/b/layer.tar.gz", "gzip@0"],
			["/net.pcap", "10.0.2.2:5000>10.0.2.15:40000/tcp/raw"],
		]);
	});
});
