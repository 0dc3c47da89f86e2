/**
 * The single-file dadi-guest: src/cli/dadi-guest.ts and everything it imports (commander, undici,
 * jose included) bundled by esbuild into one ES module that `node` runs with no node_modules, plus
 * the two native addons it needs — koffi's and zstd-napi's linux-x64 glibc binaries — embedded as
 * base64 in place of src/native/embedded-binaries.ts. At run time src/native/addons.ts extracts
 * each into a private content-addressed cache on first use and loads it (docs/operations.md).
 *
 * The FUSE reader's worker thread needs no second file: its code is already a string evaluated
 * in the worker (src/guest/fuse/reader.ts), and it loads koffi from the extracted binary's path.
 */
import { createHash } from "node:crypto";
import {
	chmodSync,
	existsSync,
	mkdirSync,
	readFileSync,
	renameSync,
	writeFileSync,
} from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative } from "node:path";
import { build, type Plugin } from "esbuild";

/** The only platform whose binaries are embedded (koffi's and zstd-napi's, glibc). */
export const GUEST_TARGET = "linux-x64";

export interface NativeBinary {
	name: "koffi" | "zstd-napi";
	version: string;
	file: string;
}

export interface GuestBundle {
	outfile: string;
	bytes: number;
	natives: (NativeBinary & { sha256: string; size: number })[];
	/** Packages bundled from node_modules, with their versions and licenses. */
	packages: string[];
}

function packageJson(dir: string): { version: string; license?: string } {
	return JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
}

/** The build machine's addon binaries (installed by `npm ci`: koffi's prebuilt, zstd-napi's node-gyp build). */
export function nativeBinaries(root: string): NativeBinary[] {
	const here = `${process.platform}-${process.arch}`;
	if (here !== GUEST_TARGET)
		throw new Error(
			`the single-file dadi-guest embeds ${GUEST_TARGET} binaries and must be built on ${GUEST_TARGET} (glibc); this is ${here}`,
		);
	const req = createRequire(join(root, "package.json"));
	const koffiEntry = req.resolve("koffi");
	const koffiPlatform = dirname(
		createRequire(koffiEntry).resolve(
			`@koromix/koffi-${GUEST_TARGET}/package.json`,
		),
	);
	const zstdDir = dirname(req.resolve("zstd-napi/binding"));
	const natives: NativeBinary[] = [
		{
			name: "koffi",
			version: packageJson(dirname(koffiEntry)).version,
			file: join(koffiPlatform, "linux_x64", "koffi.node"),
		},
		{
			name: "zstd-napi",
			version: packageJson(zstdDir).version,
			file: join(zstdDir, "build", "Release", "binding.node"),
		},
	];
	for (const n of natives)
		if (!existsSync(n.file))
			throw new Error(
				`${n.file} is missing: run \`npm ci\` (it installs koffi's prebuilt binary and builds zstd-napi's)`,
			);
	return natives;
}

/** Replaces the empty src/native/embedded-binaries.ts with one listing `natives`. */
function embedPlugin(natives: GuestBundle["natives"], bytes: Buffer[]): Plugin {
	return {
		name: "dadi-embed-natives",
		setup(b) {
			b.onLoad(
				{ filter: /[\\/]src[\\/]native[\\/]embedded-binaries\.ts$/ },
				() => {
					const list = natives.map((n, i) => ({
						name: n.name,
						version: n.version,
						target: GUEST_TARGET,
						sha256: n.sha256,
						base64: (bytes[i] as Buffer).toString("base64"),
					}));
					return {
						contents: `export const EMBEDDED_BINARIES = ${JSON.stringify(list)};\n`,
						loader: "js",
					};
				},
			);
		},
	};
}

/** The bundled packages (`name@version license`), from esbuild's list of inputs. */
function bundledPackages(root: string, inputs: string[]): string[] {
	const dirs = new Set<string>();
	for (const i of inputs) {
		const m = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(i);
		if (m?.[1]) dirs.add(m[1]);
	}
	return [...dirs].sort().map((d) => {
		const p = packageJson(join(root, d));
		return `${relative("node_modules", d)}@${p.version} ${p.license ?? "(no license field)"}`;
	});
}

/** Bundles dadi-guest with its native binaries into `outfile` (written atomically, mode 0755). */
export async function buildGuestBundle(
	root: string,
	outfile: string,
): Promise<GuestBundle> {
	const sources = nativeBinaries(root);
	const bytes = sources.map((n) => readFileSync(n.file));
	const natives = sources.map((n, i) => ({
		...n,
		sha256: createHash("sha256")
			.update(bytes[i] as Buffer)
			.digest("hex"),
		size: (bytes[i] as Buffer).length,
	}));
	const result = await build({
		absWorkingDir: root,
		entryPoints: [join(root, "src/cli/dadi-guest.ts")],
		bundle: true,
		platform: "node",
		format: "esm",
		target: "node20",
		write: false,
		metafile: true,
		logLevel: "silent",
		// Bundled CommonJS packages (commander, undici) call require() for Node's built-in modules.
		banner: {
			js: 'import { createRequire as __dadiCreateRequire } from "node:module";\nconst require = __dadiCreateRequire(import.meta.url);',
		},
		plugins: [embedPlugin(natives, bytes)],
	});
	if (result.warnings.length > 0)
		throw new Error(
			`esbuild warnings: ${result.warnings.map((w) => w.text).join("; ")}`,
		);
	const out = result.outputFiles[0];
	if (!out) throw new Error("esbuild produced no output");
	const packages = bundledPackages(root, Object.keys(result.metafile.inputs));
	const notice = [
		"// dadi-guest, single-file build (src/build/guest-bundle.ts; docs/operations.md).",
		`// Native modules embedded for ${GUEST_TARGET} (glibc): ${natives.map((n) => `${n.name}@${n.version} sha256:${n.sha256}`).join(", ")}.`,
		`// Bundled packages: ${packages.join(", ")}.`,
	].join("\n");
	// esbuild keeps the entry's #! line first; the notice goes right after it.
	const text = out.text.replace(/^(#![^\n]*\n)?/, (m) => `${m}${notice}\n`);
	mkdirSync(dirname(outfile), { recursive: true });
	const tmp = `${outfile}.${process.pid}.tmp`;
	writeFileSync(tmp, text);
	chmodSync(tmp, 0o755);
	renameSync(tmp, outfile);
	return {
		outfile,
		bytes: Buffer.byteLength(text),
		natives,
		packages,
	};
}
