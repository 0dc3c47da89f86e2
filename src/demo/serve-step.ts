/**
 * The demo's last step: a small generated root file system (ext4 built with mke2fs -d) is sealed,
 * served, and read back through the guest's exposures — FUSE + loop mount when running as root
 * with /dev/fuse, otherwise NBD and a userspace NBD client reading the ext4 superblock.
 */
import { access, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { ImageKey } from "../crypto/image-key.js";
import { NbdClient } from "../guest/nbd/client.js";
import { startServing } from "../guest/serve.js";
import { openSealedImage } from "../image/open-image.js";
import { buildFilesystem } from "../rootfs/mkfs.js";
import { sealDisk } from "../seal/seal-disk.js";

const FILES: Record<string, string> = {
	"etc/hostname": "dadi-demo\n",
	"etc/motd": "Welcome to a sealed, lazily served root file system.\n",
	"usr/share/doc/dadi/README":
		"Every block you read here was fetched, authenticated and decrypted on demand.\n",
};

export async function serveStep(
	work: string,
	key: ImageKey,
	say: (s: string) => void,
): Promise<boolean> {
	const tree = join(work, "rootfs");
	for (const [path, text] of Object.entries(FILES)) {
		await mkdir(join(tree, path, ".."), { recursive: true });
		await writeFile(join(tree, path), text);
	}
	const img = join(work, "rootfs.ext4");
	let t0 = performance.now();
	try {
		await buildFilesystem({
			fsType: "ext4",
			staging: tree,
			out: img,
			sizeBytes: 16 << 20,
			uuid: "d0d0d0d0-0000-4000-8000-00000000da01",
			timestamp: 1_700_000_000,
		});
	} catch (e) {
		say(
			`8. skipped serving: could not build an ext4 image (${(e as Error).message}); install e2fsprogs`,
		);
		return true;
	}
	const oci = join(work, "oci");
	await sealDisk({
		disk: img,
		dest: { transport: "oci", dir: oci, tag: "rootfs" },
		key,
	});
	say(
		`8. built a 16 MiB ext4 root file system with ${Object.keys(FILES).length} files and sealed it in ${ms(t0)}`,
	);
	const image = await openSealedImage(
		{ transport: "oci", dir: oci, tag: "rootfs" },
		key,
	);
	const log = (l: string) => say(`   log: ${l}`);
	try {
		const fuseOk =
			process.getuid?.() === 0 &&
			(await access("/dev/fuse").then(
				() => true,
				() => false,
			));
		if (fuseOk) {
			const mnt = join(work, "mnt");
			await mkdir(mnt);
			await mkdir(join(work, "fuse"));
			t0 = performance.now();
			const s = await startServing({
				source: image.disk,
				name: "demo",
				fuse: join(work, "fuse"),
				mountAt: mnt,
				log,
			}).catch((e) => {
				say(
					`   FUSE + loop mount failed (${(e as Error).message}); falling back to NBD`,
				);
				return undefined;
			});
			if (s) {
				try {
					say(
						`   served through FUSE (${s.fuse}) and mounted read-only at ${mnt} (${s.loopDevice}) in ${ms(t0)}`,
					);
					for (const path of Object.keys(FILES)) {
						t0 = performance.now();
						const text = await readFile(join(mnt, path), "utf8");
						if (text !== FILES[path]) return false;
						say(
							`   read /${path} in ${ms(t0)}: ${JSON.stringify(text.trim())}`,
						);
					}
				} finally {
					await s.close();
				}
				say(
					`   unmounted, loop device detached, FUSE closed; ${s.metricsState.reads} reads served`,
				);
				return true;
			}
		}
		await mkdir(join(work, "nbd"), { recursive: true });
		const sock = join(work, "nbd", "sock");
		t0 = performance.now();
		const s = await startServing({
			source: image.disk,
			name: "demo",
			nbd: { unix: sock },
			log,
		});
		try {
			const c = await NbdClient.open({ unix: sock }, "dadi");
			try {
				say(
					`   served over NBD at ${s.nbd} in ${ms(t0)}; ${c.size} bytes, read-only ${(c.flags & 2) !== 0}`,
				);
				t0 = performance.now();
				const sb = await c.read(1024, 1024); // the ext4 superblock
				const magic = sb.readUInt16LE(0x38);
				const blocks = sb.readUInt32LE(4);
				const used = blocks - sb.readUInt32LE(12);
				say(
					`   read the ext4 superblock over NBD in ${ms(t0)}: magic 0x${magic.toString(16)}, ${blocks} blocks of 4 KiB, ${used} in use${process.getuid?.() === 0 ? "" : " (run as root to mount it through FUSE + loop)"}`,
				);
				if (magic !== 0xef53) return false;
			} finally {
				await c.close();
			}
		} finally {
			await s.close();
		}
		return true;
	} finally {
		await image.close();
	}
}

function ms(t0: number): string {
	return `${(performance.now() - t0).toFixed(0)} ms`;
}
