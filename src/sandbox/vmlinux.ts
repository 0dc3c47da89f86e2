/**
 * The uncompressed kernel (vmlinux) inside Debian's bzImage, for PVH boot.
 *
 * Under TCG a bzImage spends ~3 s decompressing itself (Debian compresses with xz) before the
 * kernel's clock even starts. QEMU boots an ELF vmlinux with a PVH entry note directly, with no
 * real-mode setup and no decompression: the guest reaches userspace ~2.5 s sooner
 * (docs/sandbox.md). The payload's place comes from the bzImage's setup header; it is
 * decompressed with xz/zstd/gzip at the edge (`extractVmlinux`).
 */
import { spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import { DadiError } from "../errors.js";

export type PayloadCodec = "xz" | "zstd" | "gzip";

function bad(why: string): DadiError {
	return new DadiError("FORMAT_INVALID", `kernel image: ${why}`);
}

/** Where the compressed kernel is in a bzImage, and how it is compressed. Pure, bounds-checked. */
export function bzImagePayload(image: Uint8Array): {
	offset: number;
	length: number;
	codec: PayloadCodec;
} {
	const b = Buffer.from(image.buffer, image.byteOffset, image.length);
	if (b.length < 0x250 || b.toString("latin1", 0x202, 0x206) !== "HdrS")
		throw bad("not a bzImage (no HdrS setup header)");
	if (b.readUInt16LE(0x206) < 0x208)
		throw bad("boot protocol older than 2.08 (no payload fields)");
	const setupSects = b[0x1f1] || 4;
	const offset = (setupSects + 1) * 512 + b.readUInt32LE(0x248);
	const length = b.readUInt32LE(0x24c);
	if (offset + length > b.length || length < 6)
		throw bad("payload outside the file");
	const m = b.subarray(offset, offset + 6);
	const codec: PayloadCodec | undefined = m.equals(
		Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]),
	)
		? "xz"
		: m.readUInt32LE(0) === 0xfd2fb528
			? "zstd"
			: m[0] === 0x1f && m[1] === 0x8b
				? "gzip"
				: undefined;
	if (!codec)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			"kernel image: payload compressed with something other than xz, zstd or gzip",
		);
	return { offset, length, codec };
}

/** Whether the kernel's config (boot/config-*) has the PVH entry point. Pure. */
export function configHasPvh(config: string): boolean {
	return /^CONFIG_PVH=y$/m.test(config);
}

/** Decompresses the bzImage's kernel into `out` (an ELF file), with the codec's own tool. */
export function extractVmlinux(image: Buffer, out: string): Promise<void> {
	const p = bzImagePayload(image);
	// zstd's frame may be followed by the kernel's appended size; --single-stream and -q keep xz/zstd to the first frame
	const [cmd, args] =
		p.codec === "xz"
			? ["xz", ["-dc", "--single-stream"]]
			: p.codec === "zstd"
				? ["zstd", ["-dcq"]]
				: ["gzip", ["-dc"]];
	return new Promise((resolve, reject) => {
		const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
		const file = createWriteStream(out);
		let err = "";
		child.stderr.on("data", (d) => {
			err += d;
		});
		child.stdout.pipe(file);
		child.stdin.on("error", () => {}); // the tool may stop reading at the end of the stream
		child.stdin.end(image.subarray(p.offset, p.offset + p.length));
		child.once("error", (e) =>
			reject(
				new DadiError("INPUT_NOT_FOUND", `${cmd}: ${e.message}`, { cause: e }),
			),
		);
		let code: number | null = null;
		let pending = 2;
		const done = () => {
			if (--pending > 0) return;
			if (code !== 0 && !(p.codec === "gzip" && code === 2))
				reject(
					new DadiError(
						"IO",
						`${cmd} ${args.join(" ")}: ${err.trim()} (exit ${code})`,
					),
				);
			else resolve();
		};
		child.once("close", (c) => {
			code = c;
			done();
		});
		file.once("close", done);
		file.once("error", (e) =>
			reject(new DadiError("IO", `${out}: ${e.message}`, { cause: e })),
		);
	});
}
