/**
 * The native addons carried inside the single-file dadi-guest build. src/build/guest-bundle.ts
 * replaces this module's contents while bundling with the binaries of the build machine's
 * node_modules; in the ordinary build (tsc → dist) the list is empty and the addons are loaded
 * from node_modules (src/native/addons.ts).
 */

export type AddonName = "koffi" | "zstd-napi";

export interface EmbeddedBinary {
	/** The npm package the binary comes from. */
	readonly name: AddonName;
	/** That package's version (koffi's binary reports it and is checked against it). */
	readonly version: string;
	/** The `process.platform`-`process.arch` it was built for; glibc only. */
	readonly target: string;
	/** SHA-256 of the binary, hex: its cache file's name and the check of every cached copy. */
	readonly sha256: string;
	/** The binary itself, base64. */
	readonly base64: string;
}

export const EMBEDDED_BINARIES: readonly EmbeddedBinary[] = [];
