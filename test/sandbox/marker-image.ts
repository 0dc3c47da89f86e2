/**
 * The sandbox proof's image, built with umoci on the image owner's side: busybox (a real static
 * binary to run), a greeting, and unique plaintext markers — a small file, a 3 MiB file carrying
 * a marker in many of its chunks, and an env value in the image config. The container's command
 * prints SHA-256s of the secret files and of the env value, never the markers, so its output can
 * cross the host (the VM's console) while proving the guest read the right plaintext.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdir, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { run } from "../image-fixtures.js";

export interface MarkerImage {
	/** oci:DIR:TAG of the unsealed image. */
	layout: string;
	tag: string;
	markers: Buffer[];
	/** The lines the container prints when it reads the right plaintext. */
	expectedOutput: string[];
}

const sha = (b: Buffer | string) =>
	createHash("sha256").update(b).digest("hex");

export const GREETING = "hello from inside the sandbox";

/** The container's command (sh -c): no marker in it, only in the files and env it reads. */
const SCRIPT = [
	"cat /etc/greeting",
	"echo cwd=$(pwd)",
	"sha256sum secret/marker.txt secret/big.bin",
	'printf %s "$APP_SECRET" | sha256sum',
	"echo overlay > /tmp/written && cat /tmp/written",
].join("; ");

export async function buildMarkerImage(dir: string): Promise<MarkerImage> {
	const markers = [0, 1, 2].map(() =>
		Buffer.from(`DADI-MARKER-${randomBytes(16).toString("hex")}`),
	);
	const [m0, m1, m2] = markers as [Buffer, Buffer, Buffer];
	const img = join(dir, "src-oci");
	const tag = "v1";
	await run("umoci", ["init", "--layout", img]);
	await run("umoci", ["new", "--image", `${img}:${tag}`]);
	const bundle = join(dir, "bundle");
	await run("umoci", ["unpack", "--image", `${img}:${tag}`, bundle]);
	const r = join(bundle, "rootfs");
	for (const d of ["bin", "etc", "srv/secret", "tmp", "proc", "sys", "dev"])
		await mkdir(join(r, d), { recursive: true });
	await run("cp", ["/usr/bin/busybox", join(r, "bin/busybox")]);
	for (const applet of ["sh", "cat", "echo", "sha256sum", "printf", "pwd"])
		await symlink("busybox", join(r, "bin", applet));
	await writeFile(join(r, "etc/greeting"), `${GREETING}\n`);
	await writeFile(join(r, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
	await writeFile(join(r, "etc/group"), "root:x:0:\n");
	const small = Buffer.from(`${m0}\n`);
	await writeFile(join(r, "srv/secret/marker.txt"), small);
	// Text with the marker every 200 KiB: it lands in many chunks, compressible like real files.
	const parts: Buffer[] = [];
	for (let i = 0; i < 15; i++)
		parts.push(
			Buffer.from(`block ${i} `.padEnd(200 * 1024 - m1.length - 1, ".")),
			m1,
			Buffer.from("\n"),
		);
	const big = Buffer.concat(parts);
	await writeFile(join(r, "srv/secret/big.bin"), big);
	await run("umoci", ["repack", "--image", `${img}:${tag}`, bundle]);
	await run("umoci", [
		"config",
		"--image",
		`${img}:${tag}`,
		"--config.entrypoint",
		"/bin/sh",
		"--config.entrypoint",
		"-c",
		"--config.cmd",
		SCRIPT,
		"--config.workingdir",
		"/srv",
		"--config.env",
		"PATH=/bin",
		"--config.env",
		`APP_SECRET=${m2}`,
		"--tag",
		tag,
	]);
	return {
		layout: `oci:${img}:${tag}`,
		tag,
		markers,
		expectedOutput: [
			GREETING,
			"cwd=/srv",
			`${sha(small)}  secret/marker.txt`,
			`${sha(big)}  secret/big.bin`,
			`${sha(m2)}  -`,
			"overlay",
		],
	};
}
