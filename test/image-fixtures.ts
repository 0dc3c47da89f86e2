/**
 * Real OCI images for the sealing tests, built with umoci (and a hand-written tar layer added with
 * `umoci raw add-layer`, so whiteouts and opaque directories are exactly what the OCI spec says).
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import {
	chmod,
	chown,
	link,
	mkdir,
	readFile,
	rm,
	symlink,
	utimes,
	writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

export const sh = promisify(execFile);

export async function run(
	cmd: string,
	args: string[],
	cwd?: string,
): Promise<string> {
	const { stdout } = await sh(cmd, args, { cwd, maxBuffer: 64 << 20 });
	return stdout;
}

/** A ustar header + body for hand-made (including malicious) tar layers. */
export function tarEntry(o: {
	name: string;
	type?: string;
	body?: Buffer;
	linkname?: string;
	mode?: number;
	size?: number;
}): Buffer {
	const h = Buffer.alloc(512);
	const body = o.body ?? Buffer.alloc(0);
	h.write(o.name, 0, 100, "utf8");
	h.write(`${(o.mode ?? 0o644).toString(8).padStart(7, "0")}\0`, 100);
	h.write("0000000\0", 108);
	h.write("0000000\0", 116);
	h.write(`${(o.size ?? body.length).toString(8).padStart(11, "0")}\0`, 124);
	h.write("14000000000\0", 136);
	h.write("        ", 148);
	h.write(o.type ?? "0", 156);
	if (o.linkname) h.write(o.linkname, 157, 100, "utf8");
	h.write("ustar\0", 257);
	h.write("00", 263);
	let sum = 0;
	for (const b of h) sum += b;
	h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
	const pad = Buffer.alloc((512 - (body.length % 512)) % 512);
	return Buffer.concat([h, body, pad]);
}

export function tarOf(entries: Buffer[]): Buffer {
	return Buffer.concat([...entries, Buffer.alloc(1024)]);
}

const T = new Date("2024-05-01T12:00:00Z");

/**
 * Layer 1 (umoci repack of a prepared rootfs): busybox and its links, owners, modes, a hard link,
 * a device node, a fifo, an xattr. Layer 2 (hand-made tar): changes, additions, a whiteout and an
 * opaque directory. Returns the layout directory; tags `v1` and `v2`.
 */
export async function buildTestImage(dir: string): Promise<string> {
	const img = join(dir, "src-oci");
	await run("umoci", ["init", "--layout", img]);
	await run("umoci", ["new", "--image", `${img}:v1`]);
	const bundle = join(dir, "bundle");
	await run("umoci", ["unpack", "--image", `${img}:v1`, bundle]);
	const r = join(bundle, "rootfs");
	for (const d of ["bin", "etc", "data", "opq", "dev", "home/user", "tmp"])
		await mkdir(join(r, d), { recursive: true });
	await run("cp", ["/usr/bin/busybox", join(r, "bin/busybox")]);
	await symlink("busybox", join(r, "bin/sh"));
	await symlink("/bin/busybox", join(r, "bin/echo"));
	await writeFile(join(r, "etc/hello"), "hello from layer 1\n");
	await writeFile(join(r, "data/a"), "a\n");
	await writeFile(join(r, "data/b"), Buffer.alloc(100_000, 7));
	await link(join(r, "data/b"), join(r, "data/b-hardlink"));
	await writeFile(join(r, "opq/x"), "x\n");
	await writeFile(join(r, "opq/y"), "y\n");
	await writeFile(join(r, "home/user/owned"), "mine\n");
	await chown(join(r, "home/user/owned"), 1000, 1001);
	await chown(join(r, "home/user"), 1000, 1001);
	await writeFile(join(r, "bin/suid"), "#!/bin/sh\n");
	await chmod(join(r, "bin/suid"), 0o4755);
	await chmod(join(r, "tmp"), 0o1777);
	await run("mknod", [join(r, "dev/null"), "c", "1", "3"]);
	await run("mkfifo", [join(r, "dev/fifo")]);
	await run("setfattr", [
		"-n",
		"user.dadi",
		"-v",
		"tested",
		join(r, "etc/hello"),
	]);
	await utimes(join(r, "etc/hello"), T, T);
	await run("umoci", ["repack", "--image", `${img}:v1`, bundle]);
	await run("umoci", [
		"config",
		"--image",
		`${img}:v1`,
		"--config.cmd",
		"/bin/sh",
		"--config.env",
		"SECRET_TOKEN=s3cr3t",
		"--tag",
		"v1",
	]);
	const layer2 = tarOf([
		tarEntry({ name: "etc/", type: "5", mode: 0o755 }),
		tarEntry({ name: "etc/hello", body: Buffer.from("hello from layer 2\n") }),
		tarEntry({ name: "etc/new", body: Buffer.from("new in layer 2\n") }),
		tarEntry({ name: "data/", type: "5", mode: 0o755 }),
		tarEntry({ name: "data/.wh.a" }),
		tarEntry({ name: "opq/", type: "5", mode: 0o755 }),
		tarEntry({ name: "opq/.wh..wh..opq" }),
		tarEntry({ name: "opq/z", body: Buffer.from("z\n") }),
	]);
	await writeFile(join(dir, "layer2.tar"), layer2);
	await run("umoci", [
		"raw",
		"add-layer",
		"--image",
		`${img}:v1`,
		"--tag",
		"v2",
		join(dir, "layer2.tar"),
	]);
	// Layer 3 (umoci repack of v2 changed in place): a bit of everything an upper layer can do, so
	// the in-place ext4 update meets it all: new nested directories, a file with an xattr, a
	// symlink, a fifo and a device, a directory replaced by a file, a file replaced by a directory,
	// a removed tree, a rewritten file and changed metadata.
	const b3 = join(dir, "bundle3");
	await run("umoci", ["unpack", "--image", `${img}:v2`, b3]);
	const r3 = join(b3, "rootfs");
	await mkdir(join(r3, "srv/app/static"), { recursive: true });
	await writeFile(join(r3, "srv/app/static/index.html"), "<h1>v3</h1>\n");
	await writeFile(join(r3, "srv/app/config"), "port=8080\n");
	await run("setfattr", [
		"-n",
		"user.dadi.layer",
		"-v",
		"three",
		join(r3, "srv/app/config"),
	]);
	await symlink("../srv/app/config", join(r3, "etc/app.conf"));
	await run("mkfifo", [join(r3, "srv/app/pipe")]);
	await run("mknod", [join(r3, "dev/zero"), "c", "1", "5"]);
	await rm(join(r3, "opq"), { recursive: true });
	await writeFile(join(r3, "opq"), "opq is a file now\n");
	await rm(join(r3, "etc/new"));
	await mkdir(join(r3, "etc/new"));
	await writeFile(join(r3, "etc/new/inside"), "a directory now\n");
	await rm(join(r3, "home"), { recursive: true });
	await writeFile(join(r3, "bin/suid"), "#!/bin/sh\necho v3\n");
	// hard links: a new name for a lower file, and a new file with two names
	await link(join(r3, "etc/hello"), join(r3, "etc/hello-again"));
	await writeFile(join(r3, "srv/app/one"), "one inode, two names\n");
	await link(join(r3, "srv/app/one"), join(r3, "srv/app/two"));
	await chmod(join(r3, "etc/hello"), 0o600);
	await chown(join(r3, "etc/hello"), 7, 8);
	await run("umoci", ["repack", "--image", `${img}:v3`, b3]);
	return img;
}

/** A copy of an OCI layout to edit by hand: find tagged manifests, store blobs, add tags. */
export async function editableCopy(src: string, dst: string) {
	await run("cp", ["-a", src, dst]);
	const indexPath = join(dst, "index.json");
	const index = JSON.parse(await readFile(indexPath, "utf8")) as {
		manifests: Record<string, unknown>[];
	};
	const blob = (digest: string) => join(dst, "blobs/sha256", digest.slice(7));
	return {
		dir: dst,
		blob,
		tagged(tag: string): { mediaType: string; digest: string; size: number } {
			const d = index.manifests.find(
				(m) =>
					(m.annotations as Record<string, string> | undefined)?.[
						"org.opencontainers.image.ref.name"
					] === tag,
			);
			if (!d) throw new Error(`no tag ${tag}`);
			const { annotations: _drop, ...rest } = d;
			return rest as { mediaType: string; digest: string; size: number };
		},
		async readJson(digest: string): Promise<any> {
			return JSON.parse(await readFile(blob(digest), "utf8"));
		},
		async store(bytes: Buffer): Promise<{ digest: string; size: number }> {
			const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
			await writeFile(blob(digest), bytes);
			return { digest, size: bytes.length };
		},
		async tag(mediaType: string, bytes: Buffer, tag: string): Promise<void> {
			const d = await this.store(bytes);
			index.manifests.push({
				mediaType,
				...d,
				annotations: { "org.opencontainers.image.ref.name": tag },
			});
			await writeFile(indexPath, JSON.stringify(index));
		},
	};
}
