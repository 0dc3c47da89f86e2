/**
 * Small container images for the pull tests, written as OCI image layouts by hand (so layer
 * descriptors can carry annotations, and an index can list several platforms), then pushed to the
 * real registry with skopeo. Layers are gzip'd tars of regular files, directories and symlinks.
 */
import { createHash } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import type { Descriptor } from "../../src/oci/digest.js";
import { run, tarEntry, tarOf } from "../image-fixtures.js";

export const MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
export const MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
export const MT_INDEX = "application/vnd.oci.image.index.v1+json";
export const MT_CONFIG = "application/vnd.oci.image.config.v1+json";

/** Path → file content (a string or bytes), a symlink target (`{ link }`), or a directory (`null`). */
export type Files = Record<string, string | Buffer | { link: string } | null>;

export interface LayerSpec {
	files: Files;
	annotations?: Record<string, string>;
}

export interface BuiltImage {
	layers: (Descriptor & { diffId: string })[];
	config: Descriptor;
	manifest: Descriptor;
}

const sha = (b: Buffer) =>
	`sha256:${createHash("sha256").update(b).digest("hex")}`;

function tarOfFiles(files: Files): Buffer {
	const entries: Buffer[] = [];
	for (const [path, v] of Object.entries(files)) {
		if (v === null)
			entries.push(tarEntry({ name: `${path}/`, type: "5", mode: 0o755 }));
		else if (typeof v === "object" && !Buffer.isBuffer(v))
			entries.push(tarEntry({ name: path, type: "2", linkname: v.link }));
		else
			entries.push(
				tarEntry({
					name: path,
					body: Buffer.isBuffer(v) ? v : Buffer.from(v),
					mode: path.startsWith("bin/") ? 0o755 : 0o644,
				}),
			);
	}
	return tarOf(entries);
}

/** An OCI layout being written: blobs, then `tag()` in index.json. */
export class Layout {
	#tags: Descriptor[] = [];
	private constructor(readonly dir: string) {}

	static async create(dir: string): Promise<Layout> {
		await mkdir(join(dir, "blobs/sha256"), { recursive: true });
		await writeFile(
			join(dir, "oci-layout"),
			JSON.stringify({ imageLayoutVersion: "1.0.0" }),
		);
		return new Layout(dir);
	}

	async blob(mediaType: string, bytes: Buffer): Promise<Descriptor> {
		const digest = sha(bytes);
		await writeFile(join(this.dir, "blobs/sha256", digest.slice(7)), bytes);
		return { mediaType, digest, size: bytes.length };
	}

	async json(mediaType: string, doc: unknown): Promise<Descriptor> {
		return this.blob(mediaType, Buffer.from(JSON.stringify(doc)));
	}

	/** An image: layers bottom first, a config for `architecture`, the manifest. */
	async image(
		layers: LayerSpec[],
		architecture = "amd64",
	): Promise<BuiltImage> {
		const built: BuiltImage["layers"] = [];
		for (const l of layers) {
			const tar = tarOfFiles(l.files);
			const d = await this.blob(MT_LAYER, gzipSync(tar));
			built.push({
				...d,
				...(l.annotations ? { annotations: l.annotations } : {}),
				diffId: sha(tar),
			});
		}
		const config = await this.json(MT_CONFIG, {
			architecture,
			os: "linux",
			config: { Cmd: ["/bin/sh"], Env: ["PATH=/bin"] },
			rootfs: { type: "layers", diff_ids: built.map((l) => l.diffId) },
		});
		const manifest = await this.json(MT_MANIFEST, {
			schemaVersion: 2,
			mediaType: MT_MANIFEST,
			config,
			layers: built.map(({ diffId: _d, ...d }) => d),
		});
		return { layers: built, config, manifest };
	}

	async index(
		entries: { manifest: Descriptor; architecture: string }[],
	): Promise<Descriptor> {
		return this.json(MT_INDEX, {
			schemaVersion: 2,
			mediaType: MT_INDEX,
			manifests: entries.map((e) => ({
				...e.manifest,
				platform: { os: "linux", architecture: e.architecture },
			})),
		});
	}

	async tag(name: string, d: Descriptor): Promise<void> {
		this.#tags.push({
			...d,
			annotations: { "org.opencontainers.image.ref.name": name },
		});
		await writeFile(
			join(this.dir, "index.json"),
			JSON.stringify({
				schemaVersion: 2,
				mediaType: MT_INDEX,
				manifests: this.#tags,
			}),
		);
	}

	/**
	 * skopeo copy (every image of an index) to a plain-HTTP registry; `docker` converts to docker's
	 * schema 2 media types (as Docker Hub serves images; layer annotations do not survive).
	 */
	async push(tag: string, dest: string, docker = false): Promise<void> {
		await run("skopeo", [
			"copy",
			"--all",
			...(docker ? ["--format", "v2s2"] : []),
			"--dest-tls-verify=false",
			`oci:${this.dir}:${tag}`,
			`docker://${dest}`,
		]);
	}
}

/** busybox, /bin/sh and /etc/hello: the files a container needs to run a shell and print something. */
export async function shellFiles(hello: string): Promise<Files> {
	return {
		bin: null,
		"bin/busybox": await readFile("/usr/bin/busybox"),
		"bin/sh": { link: "busybox" },
		"bin/cat": { link: "busybox" },
		etc: null,
		"etc/hello": hello,
	};
}
