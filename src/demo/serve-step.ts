/**
 * The demo's last step: a small generated root file system (ext4 built with mke2fs -d) is sealed,
 * its key registered with a key broker started in this process (sample TEE, development mode);
 * the guest attests, receives the key (in memory only), serves the image and reads it back —
 * FUSE + loop mount when running as root with /dev/fuse, otherwise NBD and a userspace NBD
 * client reading the ext4 superblock. A request the policy does not cover is shown refused.
 */
import { access, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { sampleAttester } from "../attest/attester.js";
import type { ImageKey } from "../crypto/image-key.js";
import { DadiError } from "../errors.js";
import { NbdClient } from "../guest/nbd/client.js";
import { startServing } from "../guest/serve.js";
import { type OpenedImage, openSealedImage } from "../image/open-image.js";
import { fetchResource } from "../kbs/client.js";
import { brokerKeySource } from "../kbs/key-provider.js";
import { KBS_PROTOCOL_VERSION } from "../kbs/protocol.js";
import { buildFilesystem } from "../rootfs/mkfs.js";
import { sealDisk } from "../seal/seal-disk.js";
import { startDemoBroker } from "./broker-step.js";

// Covered by policies/sample-dev.json (resources default/*/*, sample TEE).
const RESOURCE = "default/image-key/demo-rootfs";

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
	const keyRef = `kbs:///${RESOURCE}`;
	await sealDisk({
		disk: img,
		dest: { transport: "oci", dir: oci, tag: "rootfs" },
		key,
		keyRef,
	});
	say(
		`8. built a 16 MiB ext4 root file system with ${Object.keys(FILES).length} files and sealed it in ${ms(t0)} (key ref ${keyRef})`,
	);
	const log = (l: string) => say(`   log: ${l}`);
	t0 = performance.now();
	const broker = await startDemoBroker(work, key, RESOURCE, (l) =>
		say(`   broker: ${l}`),
	);
	try {
		const url = broker.running.url;
		say(
			`9. started a key broker at ${url} (KBS protocol ${KBS_PROTOCOL_VERSION}, sample TEE: development only) in ${ms(t0)}; policies: ${broker.running.broker.policies.map((p) => p.name).join(", ")}; the image key is registered as ${keyRef}`,
		);
		try {
			await fetchResource(
				{ url, attester: sampleAttester },
				"kbs:///other-team/image-key/secret",
			);
			say("   a resource no policy covers was RELEASED");
			return false;
		} catch (e) {
			if (!(e instanceof DadiError) || e.code !== "POLICY_DENIED") throw e;
			say(
				`   a guest asking for kbs:///other-team/image-key/secret is refused: ${e.code}`,
			);
		}
		t0 = performance.now();
		const image = await openSealedImage(
			{ transport: "oci", dir: oci, tag: "rootfs" },
			brokerKeySource({ url, attester: sampleAttester, log }),
		);
		say(
			`10. the guest attested (auth → attest → resource), received the image key as a JWE to its ephemeral key, and opened the image in ${ms(t0)}`,
		);
		return await serveImage(work, image, log, say);
	} finally {
		await broker.close();
	}
}

async function serveImage(
	work: string,
	image: OpenedImage,
	log: (l: string) => void,
	say: (s: string) => void,
): Promise<boolean> {
	let t0: number;
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
