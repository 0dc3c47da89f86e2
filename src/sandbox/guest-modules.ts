/**
 * The kernel modules the sandbox guest loads, and reading their dependencies out of the kernel
 * package (which ships no modules.dep; src/sandbox/kmod.ts computes the order instead).
 */
import { readdir, readFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { DadiError } from "../errors.js";
import { loadOrder, type ModInfo, moduleName, parseModinfo } from "./kmod.js";

export interface GuestModule {
	name: string;
	/** insmod parameters, e.g. "nbds_max=4". */
	params?: string;
}

/**
 * fw_cfg (the job), virtio transports (PCI for the pc/q35 machines, MMIO for microvm), virtio-net, and what dadi-guest mounts: NBD, FUSE, loop, ext4, erofs,
 * overlayfs. (AF_PACKET, virtio core pieces the list pulls in, and the 8250 serial console are
 * either built in or dependencies.)
 */
export const GUEST_MODULES: readonly GuestModule[] = [
	{ name: "qemu_fw_cfg" },
	{ name: "virtio_pci" },
	{ name: "virtio_mmio" },
	{ name: "virtio_net" },
	{ name: "nbd", params: "nbds_max=4" },
	{ name: "fuse" },
	{ name: "loop" },
	{ name: "ext4" },
	{ name: "erofs" },
	{ name: "overlay" },
];

/** Which module provides a soft dependency named by an alias (ext4's "crypto-crc32c", libcrc32c's "crc32c"). */
export const MODULE_ALIASES: Readonly<Record<string, string>> = {
	"crypto-crc32c": "crc32c_generic",
	crc32c: "crc32c_generic",
};

export interface ResolvedModule {
	name: string;
	params: string;
	/** Path under lib/modules/<kver>/. */
	rel: string;
	file: string;
}

async function koFiles(dir: string, out: Map<string, string>): Promise<void> {
	for (const e of await readdir(dir, { withFileTypes: true })) {
		const p = join(dir, e.name);
		if (e.isDirectory()) await koFiles(p, out);
		else if (e.name.endsWith(".ko"))
			out.set(moduleName(e.name.slice(0, -3)), p);
	}
}

/** The modules to insmod, in order, with their files in the extracted kernel package. */
export async function resolveGuestModules(
	modulesDir: string,
	wanted: readonly GuestModule[] = GUEST_MODULES,
	aliasTable: Readonly<Record<string, string>> = MODULE_ALIASES,
): Promise<{ modules: ResolvedModule[]; missingSoftdeps: string[] }> {
	const files = new Map<string, string>();
	await koFiles(join(modulesDir, "kernel"), files);
	const aliases = new Map(
		Object.entries(aliasTable).map(([k, v]) => [moduleName(k), moduleName(v)]),
	);
	const index = new Map<string, ModInfo>();
	const queue = wanted.map((m) => moduleName(m.name));
	while (queue.length > 0) {
		const n = queue.shift() as string;
		if (index.has(n)) continue;
		const file = files.get(n);
		if (!file) continue; // loadOrder reports a missing hard dependency
		let info: ModInfo;
		try {
			info = parseModinfo(await readFile(file));
		} catch (e) {
			if (e instanceof DadiError)
				throw new DadiError(e.code, `${file}: ${e.message}`, { cause: e });
			throw e;
		}
		index.set(n, info);
		for (const d of [...info.depends, ...info.softPre, ...info.softPost])
			queue.push(files.has(d) ? d : (aliases.get(d) ?? d));
	}
	const plan = loadOrder(
		wanted.map((m) => m.name),
		index,
		aliases,
	);
	const params = new Map(wanted.map((m) => [moduleName(m.name), m.params]));
	return {
		modules: plan.order.map((name) => {
			const file = files.get(name) as string;
			return {
				name,
				params: params.get(name) ?? "",
				rel: relative(modulesDir, file),
				file,
			};
		}),
		missingSoftdeps: plan.missingSoftdeps,
	};
}
