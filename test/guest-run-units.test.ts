/**
 * Issue 16, the pure parts of `dadi-guest run` and the host-testable part of the nbd attach: the
 * Kata volume parser and --registry-alias (untrusted input: property tests), file system detection
 * from a superblock, the nbd ioctl numbers and geometry, VmHWM parsing, and the NBD server's
 * transmission-only mode over a koffi socketpair driven with raw requests as the kernel sends
 * them (READ, FLUSH, a refused WRITE, DISC). The kernel attach itself needs the nbd module, which
 * this host lacks: only its clear failure is checked here.
 */
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import { detectFsType } from "../src/guest/fs-detect.js";
import {
	decodeVolumeText,
	parseGuestVolume,
} from "../src/guest/kata-volume.js";
import { kernelTransmissionFlags, NbdServer } from "../src/guest/nbd/server.js";
import {
	attachNbd,
	socketOnFd,
	unixSocketPair,
} from "../src/guest/nbd-device.js";
import {
	NBD_CLEAR_QUE,
	NBD_CLEAR_SOCK,
	NBD_DISCONNECT,
	NBD_DO_IT,
	NBD_PRINT_DEBUG,
	NBD_SET_BLKSIZE,
	NBD_SET_FLAGS,
	NBD_SET_SIZE,
	NBD_SET_SIZE_BLOCKS,
	NBD_SET_SOCK,
	NBD_SET_TIMEOUT,
	nbdDevicesIn,
	nbdGeometry,
	parseNbdDevice,
} from "../src/guest/nbd-ioctl.js";
import {
	applyRegistryAlias,
	parseRegistryAlias,
} from "../src/guest/registry-alias.js";
import { peakRssFrom } from "../src/guest/run-report.js";
import { kataVolume } from "../src/snapshotter/sealed-mounts.js";
import {
	cleanupTempDirs,
	prng,
	rejection,
	tempDir,
	thrown,
} from "./helpers.js";

const DIGEST = `sha256:${"ab".repeat(32)}`;
const IMAGE = `docker://registry.example:5000/app/web@${DIGEST}`;
const good = () =>
	kataVolume({
		image: IMAGE,
		keyRef: "kbs:///default/image-key/web",
		layers: 3,
		config: `sha256:${"cd".repeat(32)}`,
	});
const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64");
const parse = (v: unknown) => parseGuestVolume(decodeVolumeText(b64(v)));

afterAll(cleanupTempDirs);

describe("--volume: the Kata virtual volume of dadi-snapshotter's guest mode", () => {
	it("reads what sealed-mounts.ts builds (base64, url-safe base64, @FILE's JSON as is)", () => {
		const want = {
			image: IMAGE,
			keyRef: "kbs:///default/image-key/web",
			layers: 3,
		};
		expect(parse(good())).toEqual(want);
		const urlSafe = Buffer.from(JSON.stringify(good()))
			.toString("base64url")
			.replace(/=+$/, "");
		expect(parseGuestVolume(decodeVolumeText(urlSafe))).toEqual(want);
		expect(parseGuestVolume(decodeVolumeText(JSON.stringify(good())))).toEqual(
			want,
		);
	});

	it("refuses what is not such a volume, saying what is wrong (INPUT_INVALID)", () => {
		const v = good() as Record<string, unknown> & {
			image_pull: { metadata: Record<string, unknown> };
		};
		const cases: [unknown, RegExp][] = [
			[{ ...v, volume_type: "direct_block" }, /volume_type is "direct_block"/],
			[{ ...v, volume_type: undefined }, /volume_type is missing/],
			[{ ...v, fs_type: "ext4" }, /fs_type/],
			[{ ...v, image_pull: undefined }, /image_pull.metadata is missing/],
			[{ ...v, image_pull: { metadata: [] } }, /image_pull.metadata/],
			[[v], /not a JSON object/],
			[
				{
					...v,
					image_pull: {
						metadata: { ...v.image_pull.metadata, "io.dadi.image": undefined },
					},
				},
				/io.dadi.image"\] is missing/,
			],
			[
				{
					...v,
					source: "docker://registry.example:5000/app/web:latest",
					image_pull: {
						metadata: {
							...v.image_pull.metadata,
							"io.dadi.image": "docker://registry.example:5000/app/web:latest",
						},
					},
				},
				/pinned by digest/,
			],
			[
				{
					...v,
					image_pull: {
						metadata: { ...v.image_pull.metadata, "io.dadi.key-ref": "x" },
					},
				},
				/io.dadi.key-ref "x" is not a KBS resource/,
			],
			[
				{
					...v,
					image_pull: {
						metadata: { ...v.image_pull.metadata, "io.dadi.layers": "0" },
					},
				},
				/io.dadi.layers "0"/,
			],
			[
				{
					...v,
					image_pull: {
						metadata: { ...v.image_pull.metadata, "io.dadi.layers": 3 },
					},
				},
				/io.dadi.layers"\] is 3/,
			],
			[
				{
					...v,
					image_pull: {
						metadata: { ...v.image_pull.metadata, "io.dadi.format": "plain" },
					},
				},
				/io.dadi.format/,
			],
			[{ ...v, source: "docker://elsewhere/x" }, /different images/],
		];
		for (const [doc, re] of cases) {
			const e = thrown(() => parse(doc));
			expect(e.code, re.source).toBe("INPUT_INVALID");
			expect(e.message, re.source).toMatch(re);
			expect(e.message).toMatch(/^--volume: /);
		}
		for (const text of ["", "   ", "not base64!", "e30", "a".repeat(70_000)])
			expect(thrown(() => parseGuestVolume(decodeVolumeText(text))).code).toBe(
				"INPUT_INVALID",
			);
	});

	it("property: any text or bytes give a volume or INPUT_INVALID, never another error", () => {
		const check = (f: () => unknown) => {
			try {
				f();
			} catch (e) {
				expect(e).toBeInstanceOf(DadiError);
				expect((e as DadiError).code).toBe("INPUT_INVALID");
			}
		};
		fc.assert(
			fc.property(fc.string({ maxLength: 300 }), (s) =>
				check(() => parseGuestVolume(decodeVolumeText(s))),
			),
			{ numRuns: 500 },
		);
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 400 }), (b) =>
				check(() => parseGuestVolume(b)),
			),
			{ numRuns: 500 },
		);
		// mutations of a real volume's JSON
		const base = Buffer.from(JSON.stringify(good()));
		fc.assert(
			fc.property(
				fc.nat(base.length - 1),
				fc.integer({ min: 0, max: 255 }),
				(at, byte) => {
					const b = Buffer.from(base);
					b[at] = byte;
					check(() => parseGuestVolume(b));
				},
			),
			{ numRuns: 1000 },
		);
		// any JSON value at all
		fc.assert(
			fc.property(fc.jsonValue(), (v) =>
				check(() => parseGuestVolume(Buffer.from(JSON.stringify(v)))),
			),
			{ numRuns: 500 },
		);
	});
});

describe("--registry-alias", () => {
	it("rewrites the registry of docker:// references it names, nothing else", () => {
		const a = [parseRegistryAlias("127.0.0.1:5000=10.0.2.2:5000")];
		expect(
			applyRegistryAlias(`docker://127.0.0.1:5000/app/web@${DIGEST}`, a),
		).toBe(`docker://10.0.2.2:5000/app/web@${DIGEST}`);
		expect(applyRegistryAlias("docker://127.0.0.1:5000/app:v1", a)).toBe(
			"docker://10.0.2.2:5000/app:v1",
		);
		expect(applyRegistryAlias("docker://127.0.0.1:5001/app:v1", a)).toBe(
			"docker://127.0.0.1:5001/app:v1",
		);
		expect(applyRegistryAlias("oci:/x:127.0.0.1:5000", a)).toBe(
			"oci:/x:127.0.0.1:5000",
		);
		const named = [parseRegistryAlias("Registry.Example:5000=[::1]:5000")];
		expect(applyRegistryAlias(IMAGE, named)).toBe(
			`docker://[::1]:5000/app/web@${DIGEST}`,
		);
	});

	it("refuses malformed aliases (USAGE)", () => {
		for (const t of [
			"",
			"=",
			"a=",
			"=b",
			"a",
			"a=b=c",
			"a/b=c",
			"a=b/c",
			"-a=b",
			"a:port=b",
		])
			expect(thrown(() => parseRegistryAlias(t)).code, t).toBe("USAGE");
		fc.assert(
			fc.property(fc.string({ maxLength: 80 }), (s) => {
				try {
					parseRegistryAlias(s);
				} catch (e) {
					expect((e as DadiError).code).toBe("USAGE");
				}
			}),
		);
	});
});

describe("the file system type from the superblock", () => {
	it("ext4 (0xEF53 at 1080), EROFS (0xE0F5E1E2 at 1024), or nothing", () => {
		const ext4 = Buffer.alloc(4096);
		ext4.writeUInt16LE(0xef53, 1080);
		expect(detectFsType(ext4)).toBe("ext4");
		const erofs = Buffer.alloc(4096);
		erofs.writeUInt32LE(0xe0f5e1e2, 1024);
		expect(detectFsType(erofs)).toBe("erofs");
		expect(detectFsType(Buffer.alloc(4096))).toBeUndefined();
		expect(detectFsType(ext4.subarray(0, 1081))).toBeUndefined();
		expect(detectFsType(Buffer.alloc(0))).toBeUndefined();
		// an offset view of a larger buffer is read at its own offsets
		const big = Buffer.alloc(8192);
		big.writeUInt16LE(0xef53, 100 + 1080);
		expect(detectFsType(big.subarray(100, 4196))).toBe("ext4");
	});

	it("property: random bytes never throw; a planted magic is always found", () => {
		fc.assert(
			fc.property(fc.uint8Array({ maxLength: 5000 }), (b) => {
				const t = detectFsType(b);
				expect([undefined, "ext4", "erofs"]).toContain(t);
			}),
		);
		fc.assert(
			fc.property(
				fc.uint8Array({ minLength: 4096, maxLength: 4096 }),
				fc.boolean(),
				(b, erofs) => {
					const buf = Buffer.from(b);
					if (erofs) buf.writeUInt32LE(0xe0f5e1e2, 1024);
					else {
						buf.writeUInt32LE(0, 1024);
						buf.writeUInt16LE(0xef53, 1080);
					}
					expect(detectFsType(buf)).toBe(erofs ? "erofs" : "ext4");
				},
			),
		);
	});
});

describe("nbd ioctl interface (linux/nbd.h)", () => {
	it("_IO(0xab, n) request numbers", () => {
		expect([
			NBD_SET_SOCK,
			NBD_SET_BLKSIZE,
			NBD_SET_SIZE,
			NBD_DO_IT,
			NBD_CLEAR_SOCK,
			NBD_CLEAR_QUE,
			NBD_PRINT_DEBUG,
			NBD_SET_SIZE_BLOCKS,
			NBD_DISCONNECT,
			NBD_SET_TIMEOUT,
			NBD_SET_FLAGS,
		]).toEqual([
			0xab00, 0xab01, 0xab02, 0xab03, 0xab04, 0xab05, 0xab06, 0xab07, 0xab08,
			0xab09, 0xab0a,
		]);
		// HAS_FLAGS | READ_ONLY | SEND_FLUSH | CAN_MULTI_CONN | SEND_CACHE
		expect(kernelTransmissionFlags()).toBe(1 | 2 | 4 | 256 | 1024);
	});

	it("geometry: 4 KiB blocks when the size allows, else 512; other sizes refused", () => {
		expect(nbdGeometry(64 << 20)).toEqual({
			blockSize: 4096,
			blocks: 16384,
		});
		expect(nbdGeometry(4096 + 512)).toEqual({ blockSize: 512, blocks: 9 });
		for (const n of [0, -4096, 1000, 4097, 1.5, Number.NaN])
			expect(thrown(() => nbdGeometry(n)).code).toBe("INPUT_INVALID");
	});

	it("--nbd-device and the devices in /sys/block", () => {
		expect(parseNbdDevice("auto")).toBeUndefined();
		expect(parseNbdDevice("/dev/nbd12")).toBe(12);
		for (const t of ["/dev/nbd", "nbd0", "/dev/loop0", "/dev/nbd0p1", ""])
			expect(thrown(() => parseNbdDevice(t)).code).toBe("USAGE");
		expect(
			nbdDevicesIn(["loop0", "nbd10", "nbd2", "nbd0", "nbd1p1", "sda"]),
		).toEqual([0, 2, 10]);
	});

	it("without the nbd module: a clear PRECONDITION_FAILED naming modprobe", async () => {
		const server = new NbdServer({
			source: { size: 1 << 20, read: async (_o, n) => Buffer.alloc(n) },
		});
		const empty = await tempDir();
		const e = await rejection(
			attachNbd({ server, size: 1 << 20, log: () => {}, sysBlock: empty }),
		);
		expect(e.code).toBe("PRECONDITION_FAILED");
		expect(e.message).toMatch(/no \/dev\/nbd0: .*modprobe nbd/);
		const named = await rejection(
			attachNbd({
				server,
				size: 1 << 20,
				device: 9999,
				log: () => {},
				sysBlock: empty,
			}),
		);
		expect(named.code).toBe("PRECONDITION_FAILED");
		expect(named.message).toMatch(/no \/dev\/nbd9999: .*modprobe nbd/);
		await server.close();
	});
});

describe("the run report", () => {
	it("VmHWM from /proc/self/status, in bytes", () => {
		expect(
			peakRssFrom("Name:\tnode\nVmPeak:\t 1000 kB\nVmHWM:\t   51200 kB\n"),
		).toBe(51200 * 1024);
		expect(peakRssFrom("Name:\tnode\n")).toBeUndefined();
	});
});

/** A raw NBD client for the transmission phase, as the kernel speaks it. */
class KernelSide {
	private buf = Buffer.alloc(0);
	private waiters: (() => void)[] = [];
	closed = false;
	constructor(private readonly s: ReturnType<typeof socketOnFd>) {
		s.on("data", (d: Buffer) => {
			this.buf = Buffer.concat([this.buf, d]);
			for (const w of this.waiters.splice(0)) w();
		});
		// the server ending its side is what the kernel sees as the connection's end
		const ended = () => {
			this.closed = true;
			for (const w of this.waiters.splice(0)) w();
			s.destroy();
		};
		s.on("end", ended);
		s.on("close", ended);
	}
	request(
		type: number,
		cookie: bigint,
		offset: bigint,
		length: number,
		flags = 0,
	) {
		const h = Buffer.alloc(28);
		h.writeUInt32BE(0x25609513, 0);
		h.writeUInt16BE(flags, 4);
		h.writeUInt16BE(type, 6);
		h.writeBigUInt64BE(cookie, 8);
		h.writeBigUInt64BE(offset, 16);
		h.writeUInt32BE(length, 24);
		this.s.write(h);
	}
	write(b: Buffer) {
		this.s.write(b);
	}
	async take(n: number): Promise<Buffer> {
		while (this.buf.length < n) {
			if (this.closed) throw new Error("closed");
			await new Promise<void>((r) => this.waiters.push(r));
		}
		const out = this.buf.subarray(0, n);
		this.buf = this.buf.subarray(n);
		return out;
	}
	/** A simple reply: magic, error, cookie. */
	async reply(): Promise<{ error: number; cookie: bigint }> {
		const r = await this.take(16);
		expect(r.readUInt32BE(0)).toBe(0x67446698);
		return { error: r.readUInt32BE(4), cookie: r.readBigUInt64BE(8) };
	}
	async untilClosed(): Promise<void> {
		while (!this.closed) await new Promise<void>((r) => this.waiters.push(r));
	}
}

describe("NBD transmission-only mode (the far end of the kernel's socket)", () => {
	it("serves READ, FLUSH, refuses WRITE with EPERM, closes on DISC — over a koffi socketpair", async () => {
		const disk = prng("kernel", 1 << 20);
		const server = new NbdServer({
			source: {
				size: disk.length,
				read: async (o, n) => Buffer.from(disk.subarray(o, o + n)),
			},
		});
		const [kernelFd, ourFd] = unixSocketPair();
		const served = server.serveTransmission(socketOnFd(ourFd));
		const k = new KernelSide(socketOnFd(kernelFd));
		// no greeting: the first bytes are replies to requests
		k.request(0, 1n, 4096n, 8192); // READ
		k.request(0, 2n, 0n, 512);
		let r = await k.reply();
		const first = r.cookie;
		let data = await k.take(first === 1n ? 8192 : 512);
		expect(data).toEqual(
			first === 1n ? disk.subarray(4096, 12288) : disk.subarray(0, 512),
		);
		r = await k.reply();
		data = await k.take(r.cookie === 1n ? 8192 : 512);
		expect(r.cookie).not.toBe(first);
		k.request(3, 3n, 0n, 0); // FLUSH
		expect(await k.reply()).toEqual({ error: 0, cookie: 3n });
		k.request(1, 4n, 0n, 1024, 1); // WRITE with FUA: the payload follows
		k.write(Buffer.alloc(1024, 9));
		expect(await k.reply()).toEqual({ error: 1, cookie: 4n }); // EPERM
		k.request(0, 5n, BigInt(disk.length - 512), 1024); // past the end
		expect(await k.reply()).toEqual({ error: 22, cookie: 5n }); // EINVAL
		k.request(2, 6n, 0n, 0); // DISC
		await k.untilClosed();
		await served.closed;
		expect(server.stats.connections).toBe(0);
		await server.close();
	});

	it("a closing server drains the kernel's connection like any other", async () => {
		const server = new NbdServer({
			source: { size: 1 << 20, read: async (_o, n) => Buffer.alloc(n, 1) },
		});
		const [kernelFd, ourFd] = unixSocketPair();
		const served = server.serveTransmission(socketOnFd(ourFd));
		const k = new KernelSide(socketOnFd(kernelFd));
		k.request(0, 7n, 0n, 4096);
		expect((await k.reply()).error).toBe(0);
		await k.take(4096);
		await server.close();
		await served.closed;
		await k.untilClosed();
		expect(() =>
			server.serveTransmission(socketOnFd(unixSocketPair()[1])),
		).toThrow(/closed/);
	});
});
